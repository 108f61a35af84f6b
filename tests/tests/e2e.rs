//! End to end: the seed's cluster in network namespaces, ipipd on the nodes, traffic between
//! pods and hosts, and the underlay inspected on the wire.

use std::{net::Ipv4Addr, process::Command};

use ipipd_bench::testrun::checksum;
use ipipd_tests::{
    NetNs,
    cluster::{Cluster, NodeSpec, PodSpec, seed_nodes},
    counters::{moved, ping, stats},
    require_root,
    traffic::{
        Capture, Ip4, ipv4_frames, ipv4_packet, set_pmtudisc, tcp_transfer, udp_receive, udp_socket,
    },
};

const MASTER: Ipv4Addr = Ipv4Addr::new(172, 31, 242, 157);
const NODE: Ipv4Addr = Ipv4Addr::new(172, 31, 242, 156);
const M1: Ipv4Addr = Ipv4Addr::new(192, 168, 179, 2);
const N1: Ipv4Addr = Ipv4Addr::new(192, 168, 83, 129);
const N2: Ipv4Addr = Ipv4Addr::new(192, 168, 83, 130);

fn seed_cluster(tag: &str, extra_node_keys: &str) -> Cluster {
    let mut c = Cluster::new(tag, &seed_nodes(2)).unwrap();
    for n in ["master", "node"] {
        let cfg = c.config_for(n, extra_node_keys);
        c.start_daemon(n, Some(cfg)).unwrap();
    }
    c
}

/// The seed's nodes (one pod each) and a plain host on the underlay that is not a peer.
fn cluster_with_attacker(tag: &str, extra_node_keys: &str) -> Cluster {
    let mut specs = seed_nodes(1);
    specs.push(NodeSpec::host(
        "attacker",
        Ipv4Addr::new(172, 31, 242, 200),
        20,
    ));
    let mut c = Cluster::new(tag, &specs).unwrap();
    for n in ["master", "node"] {
        let cfg = c.config_for(n, extra_node_keys);
        c.start_daemon(n, Some(cfg)).unwrap();
    }
    c
}

fn pod(c: &Cluster, node: &str, ip: Ipv4Addr) -> NetNs {
    c.node(node).pod(ip).ns.view()
}

#[test]
fn icmp_udp_tcp_between_pods_and_hosts() {
    if !require_root() {
        return;
    }
    let c = seed_cluster("e-basic", "");
    let cases = [
        ("node", N1, N2, "same node"),
        ("node", N1, M1, "across nodes"),
        ("master", M1, N1, "across nodes, back"),
    ];
    for (node, from, to, what) in cases {
        let src = pod(&c, node, from);
        let out = ping(&src, &format!("-c 3 -i 0.2 -W 2 {to}"));
        assert!(
            out.contains("3 received"),
            "ICMP {what} {from} -> {to}:\n{out}\n{}",
            c.logs()
        );

        let dst_node = if c.node("node").spec.pods.iter().any(|p| p.address == to) {
            "node"
        } else {
            "master"
        };
        let dst = pod(&c, dst_node, to);
        let rx = udp_socket(&dst, to, 5300).unwrap();
        let tx = udp_socket(&src, from, 0).unwrap();
        for i in 0..5u8 {
            tx.send_to(&[i; 100], (to, 5300)).unwrap();
        }
        let got = udp_receive(&rx, 5);
        assert_eq!(
            got,
            (0..5u8).map(|i| vec![i; 100]).collect::<Vec<_>>(),
            "UDP {what}"
        );

        let t = tcp_transfer(&dst, to, 5301, &src, 1 << 20).unwrap();
        assert_eq!(t.sent, t.received, "TCP {what}");
    }
    // Hosts and pods: the node itself to its local pod and to a remote pod, and back.
    let node_ns = c.node("node").ns.view();
    for (to, what) in [(N1, "host -> local pod"), (M1, "host -> remote pod")] {
        let out = ping(&node_ns, &format!("-c 3 -i 0.2 -W 2 {to}"));
        assert!(out.contains("3 received"), "{what}:\n{out}\n{}", c.logs());
    }
    let master_pod = pod(&c, "master", M1);
    let t = tcp_transfer(&node_ns, NODE, 5302, &master_pod, 1 << 20).unwrap();
    assert_eq!(t.sent, t.received, "remote pod -> host TCP");
    let n1 = pod(&c, "node", N1);
    let t = tcp_transfer(&n1, N1, 5303, &node_ns, 1 << 20).unwrap();
    assert_eq!(t.sent, t.received, "host -> local pod TCP");
}

/// 100 MB across nodes at pod MTU 1500 (fragmentation-needed must work) and at uplink - 20
/// (the FIXED_GSO path), with TSO/GSO on and off on the pod veths and the uplinks.
#[test]
fn hundred_megabytes_across_nodes_arrive_intact() {
    if !require_root() {
        return;
    }
    let c = seed_cluster("e-bulk", "");
    let src = pod(&c, "node", N1);
    let dst = pod(&c, "master", M1);
    let mut port = 5400;
    for pod_mtu in [1500, 1480] {
        for offload in ["on", "off"] {
            for n in &c.nodes {
                for p in &n.pods {
                    p.ns.sh(&format!("ip link set eth0 mtu {pod_mtu}; ethtool -K eth0 tso {offload} gso {offload} >/dev/null 2>&1 || true")).unwrap();
                    n.ns.sh(&format!(
                        "ethtool -K {} tso {offload} gso {offload} >/dev/null 2>&1 || true",
                        p.spec.interface
                    ))
                    .unwrap();
                }
                n.ns.sh(&format!(
                    "ethtool -K eth0 tso {offload} gso {offload} >/dev/null 2>&1 || true"
                ))
                .unwrap();
            }
            port += 1;
            let t = tcp_transfer(&dst, M1, port, &src, 100 << 20).unwrap_or_else(|e| {
                panic!("pod mtu {pod_mtu}, offload {offload}: {e:#}\n{}", c.logs())
            });
            assert_eq!(t.sent, t.received, "pod mtu {pod_mtu}, offload {offload}");
            assert_eq!(t.received.0, 100 << 20);
        }
    }
}

fn is_pod(ip: Ipv4Addr) -> bool {
    ip.octets()[0] == 192 && ip.octets()[1] == 168
}

/// The wire: IPIP with the node IPs outside, the pod IPs inside, the outer header per the rules,
/// and the counters equal to what was captured.
#[test]
fn the_underlay_carries_ipip_and_the_counters_match_it() {
    if !require_root() {
        return;
    }
    let c = seed_cluster("e-wire", "");
    let cap = Capture::start(&c.underlay, "up1", &c.dir, "").unwrap();
    let before = (stats(&c, "node"), stats(&c, "master"));
    let n1 = pod(&c, "node", N1);
    let m1 = pod(&c, "master", M1);
    // ICMP with DF (ping sets it), ECT(0) and DSCP 10: TOS 0x2a.
    let out = ping(&n1, &format!("-c 10 -i 0.05 -W 2 -Q 0x2a {M1}"));
    assert!(out.contains("10 received"), "{out}");
    // UDP without DF, TOS 0.
    let rx = udp_socket(&m1, M1, 5500).unwrap();
    let tx = udp_socket(&n1, N1, 0).unwrap();
    set_pmtudisc(&tx, false).unwrap();
    for _ in 0..7 {
        tx.send_to(&[7; 200], (M1, 5500)).unwrap();
    }
    assert_eq!(udp_receive(&rx, 7).len(), 7);
    // A pod to the peer node's own address is encapsulated too.
    let out = ping(&n1, &format!("-c 4 -i 0.05 -W 2 {MASTER}"));
    assert!(out.contains("4 received"), "{out}");
    let frames = cap.finish().unwrap();
    let after = (stats(&c, "node"), stats(&c, "master"));

    let ip = ipv4_frames(&frames);
    let ipip: Vec<&Ip4> = ip.iter().filter(|p| p.proto == 4).collect();
    // No pod address bare on the underlay (always mode).
    for p in &ip {
        assert!(
            p.proto == 4 || (!is_pod(p.src) && !is_pod(p.dst)),
            "bare pod packet on the underlay: {p:?}"
        );
    }
    for p in &ipip {
        assert!(
            (p.src == NODE && p.dst == MASTER) || (p.src == MASTER && p.dst == NODE),
            "outer {p:?}"
        );
        let inner = p.inner.as_ref().expect("inner header");
        assert_eq!(p.ttl, 64, "outer TTL: {p:?}");
        assert_eq!(p.tos, inner.tos, "TOS/ECN copied: {p:?}");
        assert_eq!(p.df, inner.df, "DF copied: {p:?}");
        assert!(p.checksum_ok && inner.checksum_ok, "checksums: {p:?}");
        assert!(!p.frag, "outer fragment: {p:?}");
    }
    let from_node = ipip.iter().filter(|p| p.src == NODE).count() as u64;
    let to_node = ipip.iter().filter(|p| p.dst == NODE).count() as u64;
    // 10 ICMP requests + 7 UDP + 4 pings to the master's IP leave the node; 10 + 4 replies come back.
    assert_eq!(
        from_node,
        21,
        "IPIP packets from the node; {} frames, {} IPv4: {:?}",
        frames.len(),
        ip.len(),
        ip.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(to_node, 14, "IPIP packets to the node");
    assert!(
        ipip.iter().any(|p| p.tos == 0x2a && p.df),
        "ICMP with TOS 0x2a and DF"
    );
    assert!(
        ipip.iter()
            .any(|p| p.tos == 0 && !p.df && p.inner.as_ref().unwrap().proto == 17),
        "UDP without DF"
    );
    assert!(
        ipip.iter().any(|p| p.inner.as_ref().unwrap().dst == MASTER),
        "pod -> peer node IP is encapsulated"
    );
    // eBPF accounts for every one of them.
    assert_eq!(
        moved(&before.0, &after.0, "encap").0,
        from_node,
        "node encap counter"
    );
    assert_eq!(
        moved(&before.0, &after.0, "decap_deliver").0,
        to_node,
        "node decap counter"
    );
    assert_eq!(
        moved(&before.1, &after.1, "encap").0,
        to_node,
        "master encap counter"
    );
    assert_eq!(
        moved(&before.1, &after.1, "decap_deliver").0
            + moved(&before.1, &after.1, "decap_to_kernel").0,
        from_node,
        "master decap counters"
    );
    // TCP, after the capture: the counters account for every byte (GSO super-packets count once, with all their bytes).
    let tcp_before = stats(&c, "node");
    let t = tcp_transfer(&m1, M1, 5501, &n1, 2 << 20).unwrap();
    assert_eq!(t.sent, t.received);
    let tcp_after = stats(&c, "node");
    let (_, encap_bytes) = moved(&tcp_before, &tcp_after, "encap");
    assert!(
        encap_bytes >= 2 << 20,
        "encap bytes {encap_bytes} < the 2 MiB sent"
    );
    // No tunnel device in use anywhere.
    for n in &c.nodes {
        assert_eq!(n.ns.ipip_devices_in_use().unwrap(), Vec::<String>::new());
    }
}

#[test]
fn path_mtu_ttl_blackhole_spoofing() {
    if !require_root() {
        return;
    }
    let c = seed_cluster("e-edge", "");
    let n1 = pod(&c, "node", N1);
    let m1 = pod(&c, "master", M1);

    // DF set, larger than the tunnel MTU: the sender learns MTU = 1500 - 20.
    let out = ping(&n1, &format!("-c 2 -i 0.3 -W 1 -M do -s 1472 {M1}"));
    assert!(
        out.contains("mtu = 1480") || out.contains("mtu=1480"),
        "frag-needed with mtu 1480:\n{out}"
    );
    // DF clear, 3000 bytes of UDP: arrives intact, and no outer fragment on the wire.
    let cap = Capture::start(&c.underlay, "up1", &c.dir, "").unwrap();
    let rx = udp_socket(&m1, M1, 5600).unwrap();
    let tx = udp_socket(&n1, N1, 0).unwrap();
    set_pmtudisc(&tx, false).unwrap();
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
    tx.send_to(&payload, (M1, 5600)).unwrap();
    assert_eq!(udp_receive(&rx, 1), vec![payload], "3000-byte datagram");
    let frames = cap.finish().unwrap();
    let ip = ipv4_frames(&frames);
    assert!(
        ip.iter().any(|p| p.proto == 4),
        "the datagram crossed the underlay as IPIP"
    );
    assert!(
        ip.iter().filter(|p| p.proto == 4).all(|p| !p.frag),
        "an outer fragment on the underlay"
    );

    // TTL 1: time exceeded; traceroute shows both nodes.
    let out = ping(&n1, &format!("-c 1 -W 2 -t 1 {M1}"));
    assert!(out.contains("Time to live exceeded"), "{out}");
    let tr = Command::new("ip")
        .args([
            "netns",
            "exec",
            &n1.name,
            "traceroute",
            "-n",
            "-q",
            "1",
            "-w",
            "2",
            "-m",
            "5",
        ])
        .arg(M1.to_string())
        .output()
        .unwrap();
    let tr = String::from_utf8_lossy(&tr.stdout);
    let hops: Vec<&str> = tr
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        hops,
        vec![NODE.to_string(), MASTER.to_string(), M1.to_string()],
        "traceroute:\n{tr}"
    );

    // Blackhole: an unused address of the node's own block, from a local pod and from a remote one.
    let unused = Ipv4Addr::new(192, 168, 83, 160);
    let (b0, m0) = (stats(&c, "node"), stats(&c, "master"));
    let out = ping(&n1, &format!("-c 3 -i 0.2 -W 1 {unused}"));
    assert!(out.contains(" 0 received"), "{out}");
    let out = ping(&m1, &format!("-c 2 -i 0.2 -W 1 {unused}"));
    assert!(out.contains(" 0 received"), "{out}");
    let b1 = stats(&c, "node");
    assert_eq!(
        moved(&b0, &b1, "drop_blackhole").0,
        5,
        "blackhole drops on the node"
    );
    let _ = m0;

    // Spoofing: a pod sending from another pod's address gets nothing through.
    n1.sh(&format!("ip addr add {N2}/32 dev eth0")).unwrap();
    let before_master = stats(&c, "master");
    let out = ping(&n1, &format!("-c 3 -i 0.2 -W 1 -I {N2} {M1}"));
    assert!(out.contains(" 0 received"), "{out}");
    let b2 = stats(&c, "node");
    assert_eq!(
        moved(&b1, &b2, "drop_spoofed_source").0,
        3,
        "spoofed packets dropped and counted"
    );
    assert_eq!(
        moved(&before_master, &stats(&c, "master"), "decap_deliver").0,
        0,
        "nothing reached the master"
    );
}

/// Raw IP-in-IP, as an attacker or a broken peer would send it.
fn send_ipip(ns: &NetNs, to: Ipv4Addr, inner: Vec<u8>, count: usize) {
    ns.enter(move || {
        // SAFETY: plain socket calls with valid buffers.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, 4);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(to.octets()),
                },
                sin_zero: [0; 8],
            };
            for _ in 0..count {
                let n = libc::sendto(
                    fd,
                    inner.as_ptr().cast(),
                    inner.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    16,
                );
                assert_eq!(
                    n,
                    inner.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
    .unwrap();
}

/// An ICMP echo request in an IPv4 header, checksums computed here (IHL may be set wrong).
fn icmp_packet(src: Ipv4Addr, dst: Ipv4Addr, ihl: u8) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0, 0, 1, 0, 1];
    icmp.extend_from_slice(b"attacker-payload");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x40 | ihl, 0, 0, 0, 0, 9, 0x40, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let len = (20 + icmp.len()) as u16;
    ip[2..4].copy_from_slice(&len.to_be_bytes());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

#[test]
fn ipip_from_a_non_peer_or_with_a_bad_inner_header_is_dropped() {
    if !require_root() {
        return;
    }
    let c = cluster_with_attacker("e-att", "");
    let attacker = c.node("attacker").ns.view();
    let victim = pod(&c, "node", N1);
    let cap = Capture::start(&victim, "eth0", &c.dir, "icmp").unwrap();
    let before = stats(&c, "node");
    send_ipip(
        &attacker,
        NODE,
        icmp_packet(Ipv4Addr::new(10, 66, 0, 1), N1, 5),
        4,
    );
    let master = c.node("master").ns.view();
    send_ipip(&master, NODE, icmp_packet(M1, N1, 3), 3);
    // A well-formed one from the real peer arrives: the path itself works.
    send_ipip(&master, NODE, icmp_packet(M1, N1, 5), 2);
    let frames = cap.finish().unwrap();
    let after = stats(&c, "node");
    assert_eq!(
        moved(&before, &after, "drop_ipip_unknown_peer").0,
        4,
        "attacker frames dropped"
    );
    assert_eq!(
        moved(&before, &after, "drop_bad_inner_header").0,
        3,
        "bad inner headers dropped"
    );
    assert_eq!(
        moved(&before, &after, "decap_deliver").0,
        2,
        "the good ones delivered"
    );
    let at_pod: Vec<Ip4> = ipv4_frames(&frames)
        .into_iter()
        .filter(|p| p.dst == N1 && p.proto == 1)
        .collect();
    assert!(
        at_pod.iter().all(|p| p.src == M1),
        "an attacker packet reached the pod: {at_pod:?}"
    );
    assert_eq!(at_pod.len(), 2);
}

/// Sends `frame` (Ethernet, as is) `count` times out of `dev` in `ns` through an AF_PACKET
/// socket: frames no socket of the stack would build (a VLAN tag with no VLAN device).
fn send_frames(ns: &NetNs, dev: &str, frame: Vec<u8>, count: usize) {
    let ifindex = ns.ifindex(dev).unwrap();
    ns.enter(move || {
        // SAFETY: plain socket calls with valid buffers.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_ifindex = ifindex as i32;
            sa.sll_halen = 6;
            sa.sll_addr[..6].copy_from_slice(&frame[..6]);
            for _ in 0..count {
                let n = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sa as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    n,
                    frame.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
    .unwrap();
}

/// The MAC of `dev` in `ns`.
fn mac_of(ns: &NetNs, dev: &str) -> [u8; 6] {
    let text = ns.sh(&format!("cat /sys/class/net/{dev}/address")).unwrap();
    let b: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

/// An Ethernet frame carrying IPv4 `payload`, with an 802.1Q tag (VLAN 7) in the data.
fn tagged_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(dst);
    f.extend(src);
    f.extend([0x81, 0x00, 0x00, 0x07, 0x08, 0x00]);
    f.extend(payload);
    f
}

/// A frame's 802.1Q / 802.1ad tag, as captured (libpcap puts an offloaded tag back in the data).
fn tagged(frame: &[u8]) -> bool {
    matches!(frame.get(12..14), Some([0x81, 0x00] | [0x88, 0xa8]))
}

/// VLAN-tagged frames (the kernel moves the tag into the skb's metadata before tc sees them):
/// a pod's are never tunnelled; a peer's tagged tunnel frames are the kernel's (for a VLAN
/// device), never decapsulated to a pod. Each is counted under its own reason.
#[test]
fn vlan_tagged_frames_are_neither_tunnelled_nor_delivered() {
    if !require_root() {
        return;
    }
    let c = seed_cluster("e-vlan", "");
    let n1 = pod(&c, "node", N1);
    let m1 = pod(&c, "master", M1);
    let node = c.node("node").ns.view();
    let master = c.node("master").ns.view();

    // Pod N1 sends tagged pings to M1, addressed to its gateway (the host veth).
    let host_if = c.node("node").pod(N1).spec.interface.clone();
    let ping = tagged_frame(
        mac_of(&node, &host_if),
        mac_of(&n1, "eth0"),
        &icmp_packet(N1, M1, 5),
    );
    let wire = Capture::start(&c.underlay, "up1", &c.dir, "").unwrap();
    let at_m1 = Capture::start(&m1, "eth0", &c.dir, "icmp").unwrap();
    let before = stats(&c, "node");
    send_frames(&n1, "eth0", ping, 3);
    let on_wire = wire.finish().unwrap();
    let after = stats(&c, "node");
    assert_eq!(
        moved(&before, &after, "drop_vlan_tagged").0,
        3,
        "the tagged frames dropped at the pod"
    );
    assert_eq!(moved(&before, &after, "encap").0, 0, "nothing tunnelled");
    assert!(
        !on_wire.iter().any(|f| tagged(f)),
        "a tagged frame on the underlay"
    );
    assert!(at_m1.finish().unwrap().is_empty(), "M1 got a tagged ping");

    // The master sends tagged IPIP to the node.
    let tunnelled = ipv4_packet(MASTER, NODE, 4, 0, &icmp_packet(M1, N1, 5));
    let frame = tagged_frame(mac_of(&node, "eth0"), mac_of(&master, "eth0"), &tunnelled);
    let at_n1 = Capture::start(&n1, "eth0", &c.dir, "icmp").unwrap();
    let before = stats(&c, "node");
    send_frames(&master, "eth0", frame.clone(), 3);
    let frames = at_n1.finish().unwrap();
    let after = stats(&c, "node");
    assert_eq!(
        moved(&before, &after, "pass_vlan_tagged").0,
        3,
        "tagged tunnel frames left to the kernel"
    );
    assert_eq!(
        moved(&before, &after, "decap_deliver").0,
        0,
        "none decapsulated"
    );
    assert!(
        ipv4_frames(&frames).iter().all(|p| p.src != M1),
        "a tagged tunnel frame reached the pod"
    );
    // The same frame untagged is delivered: the path itself works.
    let mut untagged = frame[..12].to_vec();
    untagged.extend(&frame[16..]);
    let before = stats(&c, "node");
    send_frames(&master, "eth0", untagged, 2);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = stats(&c, "node");
    assert_eq!(
        moved(&before, &after, "decap_deliver").0,
        2,
        "untagged ones delivered"
    );
}

/// No route to a pod /32 or a remote block is consulted by pod-to-pod traffic: with the slow
/// path flushed, pods still reach each other.
#[test]
fn pod_traffic_needs_no_route_table() {
    if !require_root() {
        return;
    }
    let c = seed_cluster("e-noroute", "");
    for n in &c.nodes {
        n.ns.sh("ip route flush proto 180").unwrap();
        assert!(n.ns.ip("route show proto 180").unwrap().trim().is_empty());
    }
    let n1 = pod(&c, "node", N1);
    let m1 = pod(&c, "master", M1);
    for (src, dst, what) in [
        (&n1, M1, "across"),
        (&m1, N1, "back"),
        (&n1, N2, "same node"),
    ] {
        let out = ping(src, &format!("-c 3 -i 0.2 -W 2 {dst}"));
        assert!(out.contains("3 received"), "{what}: {out}\n{}", c.logs());
    }
    // At pod MTU 1480 (what Calico sets for IPIP) every packet fits the tunnel. At 1500, a
    // full-sized non-GSO segment is the one case that needs the kernel's slow-path route (its
    // `mtu 1480` answers fragmentation-needed), and that route was just flushed.
    for p in [&n1, &m1] {
        p.sh("ip link set eth0 mtu 1480").unwrap();
    }
    let t = tcp_transfer(&m1, M1, 5700, &n1, 4 << 20).unwrap();
    assert_eq!(t.sent, t.received);
}

/// Cross-subnet: a router joins two underlay bridges; one peer sits behind it (encapsulated,
/// outer next hop = the router's MAC), one on the same subnet (not encapsulated).
#[test]
fn cross_subnet_encapsulates_only_across_the_router() {
    if !require_root() {
        return;
    }
    let far = Ipv4Addr::new(10, 0, 5, 7);
    let f1 = Ipv4Addr::new(192, 168, 200, 2);
    let mut specs = seed_nodes(1);
    for s in &mut specs {
        s.setup
            .push("ip route add 10.0.5.0/24 via 172.31.240.1 dev eth0".into());
    }
    specs.push(NodeSpec {
        name: "far".into(),
        address: far,
        prefix_len: 24,
        block: "192.168.200.0/26".into(),
        pods: vec![PodSpec {
            address: f1,
            interface: "califar0000000".into(),
        }],
        mtu: 1500,
        bridge: 1,
        setup: vec!["ip route add 172.31.240.0/20 via 10.0.5.1 dev eth0".into()],
        peer: true,
    });
    let mut c = Cluster::new("e-xs", &specs).unwrap();
    c.underlay
        .sh("ip addr add 172.31.240.1/20 dev br0; ip addr add 10.0.5.1/24 dev br1; sysctl -qw net.ipv4.ip_forward=1")
        .unwrap();
    let router_mac = c
        .underlay
        .sh("cat /sys/class/net/br0/address")
        .unwrap()
        .trim()
        .to_string();
    for n in ["master", "node", "far"] {
        let cfg = c.config_for(n, "mode = \"cross-subnet\"");
        c.start_daemon(n, Some(cfg)).unwrap();
    }
    let cap = Capture::start(&c.underlay, "up1", &c.dir, "").unwrap();
    let n1 = pod(&c, "node", N1);
    let node_ns = c.node("node").ns.view();
    for (src, dst, what) in [
        (&n1, M1, "pod -> same-subnet pod"),
        (&n1, f1, "pod -> far pod"),
        (&node_ns, M1, "host -> same-subnet pod"),
        (&node_ns, f1, "host -> far pod"),
    ] {
        let out = ping(src, &format!("-c 3 -i 0.2 -W 2 {dst}"));
        assert!(out.contains("3 received"), "{what}: {out}\n{}", c.logs());
    }
    let far_pod = pod(&c, "far", f1);
    let out = ping(&far_pod, &format!("-c 3 -i 0.2 -W 2 {N1}"));
    assert!(out.contains("3 received"), "far pod -> pod: {out}");
    let frames = cap.finish().unwrap();
    let ip = ipv4_frames(&frames);
    let to_master: Vec<&Ip4> = ip.iter().filter(|p| p.dst == M1).collect();
    assert!(
        !to_master.is_empty() && to_master.iter().all(|p| p.proto != 4),
        "same-subnet traffic is not encapsulated"
    );
    let to_far: Vec<&Ip4> = ip.iter().filter(|p| p.proto == 4 && p.dst == far).collect();
    assert!(!to_far.is_empty(), "far traffic is encapsulated");
    let mac: Vec<String> = to_far[0]
        .dst_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(mac.join(":"), router_mac, "outer next hop is the router");
    assert!(
        ip.iter()
            .all(|p| !(is_pod(p.dst) && p.dst == f1 && p.proto != 4)),
        "far pod address bare on the wire"
    );
}

/// `xdp = "native"` on the uplinks: traffic flows (TCP intact), and IPIP from a non-peer is
/// dropped by xdp_uplink before an skb exists.
#[test]
fn native_xdp_drops_non_peers_early_and_passes_the_rest() {
    if !require_root() {
        return;
    }
    let c = cluster_with_attacker("e-xdp", "xdp = \"native\"");
    let link = c.node("node").ns.ip("-d link show dev eth0").unwrap();
    assert!(link.contains("xdp"), "native XDP attached: {link}");
    let n1 = pod(&c, "node", N1);
    let m1 = pod(&c, "master", M1);
    let out = ping(&n1, &format!("-c 3 -i 0.2 -W 2 {M1}"));
    assert!(out.contains("3 received"), "{out}\n{}", c.logs());
    let t = tcp_transfer(&m1, M1, 5800, &n1, 16 << 20).unwrap();
    assert_eq!(t.sent, t.received);
    let before = stats(&c, "node");
    send_ipip(
        &c.node("attacker").ns.view(),
        NODE,
        icmp_packet(Ipv4Addr::new(10, 66, 0, 1), N1, 5),
        5,
    );
    let after = stats(&c, "node");
    let xdp_drops: u64 = after
        .iter()
        .filter(|((_, h, r), _)| h == "xdp_uplink" && r == "drop_ipip_unknown_peer")
        .map(|(k, (p, _))| p - before.get(k).map_or(0, |v| v.0))
        .sum();
    assert_eq!(xdp_drops, 5, "dropped in XDP");
    assert_eq!(
        moved(&before, &after, "drop_ipip_unknown_peer").0,
        5,
        "and only there (from_uplink never saw them)"
    );
}

/// The routes to a peer carry its next hop's MAC from the kernel's neighbour table (flag `l2`),
/// so that the programs need no FIB lookup per packet; when the kernel learns a new MAC for the
/// peer the routes follow, and without a neighbour entry the kernel resolves it again.
#[test]
fn the_next_hop_mac_follows_the_neighbour_table() {
    if !require_root() {
        return;
    }
    let c = seed_cluster("e-l2", "");
    let n1 = pod(&c, "node", N1);
    let node = c.node("node");
    let master_ns = c.node("master").ns.view();
    let pin = c.bpffs.join("node").to_string_lossy().into_owned();
    let mac_of = |ns: &NetNs| {
        ns.sh("cat /sys/class/net/eth0/address")
            .unwrap()
            .trim()
            .to_string()
    };
    // The cached MAC of the master's block, once the routes carry one.
    let cached = || -> Option<String> {
        let rows: serde_json::Value = serde_json::from_str(
            &node
                .ipipd(&["routes", "-o", "json", "--pin-dir", &pin])
                .ok()?,
        )
        .ok()?;
        rows.as_array()?
            .iter()
            .find(|r| r["prefix"] == "192.168.179.0/26")
            .filter(|r| {
                r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "l2"))
            })
            .and_then(|r| r["next_hop_mac"].as_str().map(str::to_string))
    };
    // Waits (at most 20 s, in steps of 100 ms) for the cached MAC to become `want`.
    let wait_for = |want: &str| {
        for _ in 0..200 {
            if cached().as_deref() == Some(want) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "the route's next-hop MAC is {:?}, not {want}\n{}",
            cached(),
            c.logs()
        );
    };

    let out = ping(&n1, &format!("-c 3 -i 0.2 -W 2 {M1}"));
    assert!(out.contains("3 received"), "{out}\n{}", c.logs());
    wait_for(&mac_of(&master_ns));

    // The master's uplink gets a new MAC and the node's kernel learns it (as from a gratuitous
    // ARP): the route follows, and the tunnel's frames carry the new MAC.
    let new_mac = "02:00:5e:00:53:2a";
    master_ns
        .sh(&format!("ip link set eth0 address {new_mac}"))
        .unwrap();
    node.ns
        .sh(&format!(
            "ip neigh replace {MASTER} lladdr {new_mac} dev eth0 nud reachable"
        ))
        .unwrap();
    wait_for(new_mac);
    let cap = Capture::start(&master_ns, "eth0", &c.dir, "ip proto 4").unwrap();
    let out = ping(&n1, &format!("-c 3 -i 0.2 -W 2 {M1}"));
    let frames = cap.finish().unwrap();
    assert!(out.contains("3 received"), "{out}\n{}", c.logs());
    let to_master: Vec<String> = frames
        .iter()
        .filter(|f| f.len() >= 34 && f[26..30] == NODE.octets())
        .map(|f| {
            f[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        })
        .collect();
    assert_eq!(
        to_master,
        vec![new_mac.to_string(); 3],
        "the tunnel's destination MACs"
    );

    // Without a neighbour entry the routes drop the cached L2; the kernel resolves the peer
    // again for the first packet, and the routes carry the MAC once more.
    node.ns
        .sh(&format!("ip neigh del {MASTER} dev eth0"))
        .unwrap();
    let out = ping(&n1, &format!("-c 3 -i 0.2 -W 2 {M1}"));
    assert!(out.contains("3 received"), "{out}\n{}", c.logs());
    wait_for(new_mac);
}

/// The node's own packets into the tunnel device while the peer's MAC is unknown are dropped
/// and counted, not queued under the tunnel device's route (the kernel would send that queue out
/// the uplink addressed for the tunnel device once the MAC arrives); the first packets after
/// the peer answers go through.
#[test]
fn host_traffic_toward_an_unresolved_peer_is_a_counted_drop_not_a_stray_frame() {
    if !require_root() {
        return;
    }
    let c = seed_cluster("e-unres", "");
    let master = c.node("master").ns.view();
    let mac_of = |ns: &NetNs| {
        ns.sh("cat /sys/class/net/eth0/address")
            .unwrap()
            .trim()
            .to_string()
    };
    let (master_mac, node_mac) = (mac_of(&master), mac_of(&c.node("node").ns));
    let out = ping(&master, &format!("-c 2 -i 0.2 -W 2 {N1}"));
    assert!(out.contains("2 received"), "{out}\n{}", c.logs());

    // The node leaves the underlay and the master forgets its MAC: the daemon asks the kernel to
    // resolve it again, which stays incomplete (20 probes a second apart) while the node is away.
    let port = |up: bool| {
        c.underlay
            .sh(&format!(
                "ip link set up1 {}",
                if up { "up" } else { "down" }
            ))
            .unwrap()
    };
    master
        .sh("sysctl -qw net.ipv4.neigh.eth0.mcast_solicit=20 net.ipv4.neigh.eth0.retrans_time_ms=1000")
        .unwrap();
    port(false);
    master.sh(&format!("ip neigh del {NODE} dev eth0")).unwrap();
    let pin = c.bpffs.join("master").to_string_lossy().into_owned();
    let l2_cached = || {
        let rows: serde_json::Value = serde_json::from_str(
            &c.node("master")
                .ipipd(&["routes", "-o", "json", "--pin-dir", &pin])
                .unwrap(),
        )
        .unwrap();
        rows.as_array().unwrap().iter().any(|r| {
            r["prefix"] == "192.168.83.128/26"
                && r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "l2"))
        })
    };
    // At most 10 s, in steps of 100 ms, for the route to drop its cached MAC.
    for _ in 0..100 {
        if !l2_cached() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!l2_cached(), "the route kept its MAC\n{}", c.logs());

    // Three datagrams from the node's own address, one packet each (the kernel reports the
    // drop to the sender, which may retry; a datagram socket does not).
    // (IGMP: the underlay's ports report their groups when the link comes back.)
    let cap = Capture::start(&c.underlay, "up0", &c.dir, "not arp and not igmp").unwrap();
    let tx = udp_socket(&master, MASTER, 0).unwrap();
    let before = stats(&c, "master");
    for i in 0..3u8 {
        let _ = tx.send_to(&[i; 32], (N1, 5600));
    }
    let after = stats(&c, "master");
    assert_eq!(
        moved(&before, &after, "drop_next_hop_unresolved"),
        (3, 3 * (14 + 20 + 8 + 32)),
        "{after:?}"
    );

    // The node returns: the next probe is answered and the master's packets go through again
    // (at most 20 tries of one second).
    port(true);
    let mut back = false;
    for _ in 0..20 {
        if ping(&master, &format!("-c 1 -W 1 {N1}")).contains("1 received") {
            back = true;
            break;
        }
    }
    let frames = cap.finish().unwrap();
    assert!(back, "no way back to {N1}\n{}", c.logs());
    let mac = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    // Every frame on the master's port of the underlay is to the node (the way out) or to the
    // master (the replies): none addressed for the tunnel device, none without an Ethernet header.
    let dsts: Vec<String> = frames.iter().map(|f| mac(&f[..6])).collect();
    assert!(
        dsts.contains(&node_mac),
        "nothing from the master on the wire"
    );
    assert!(
        dsts.iter().all(|m| *m == node_mac || *m == master_mac),
        "frames to {dsts:?}; the node is {node_mac}, the master {master_mac}"
    );
}

/// A node with two uplinks: the first-found one (eth0, on the seed's underlay) and eth1, the
/// only way to its peer. `[node] autodetect = "can-reach=<peer>"` picks eth1 and its address
/// (the kernel's route to the peer), where first-found would have picked eth0; the pods talk.
#[test]
fn can_reach_picks_the_uplink_toward_the_peer_on_a_node_with_two() {
    if !require_root() {
        return;
    }
    let mut specs = seed_nodes(1);
    // master lives on the other network only.
    specs[0].address = Ipv4Addr::new(10, 99, 0, 2);
    specs[0].prefix_len = 24;
    specs[0].bridge = 1;
    let mut c = Cluster::new("e-reach", &specs).unwrap();
    let node_ns = c.node("node").ns.name.clone();
    c.underlay
        .sh(&format!(
            "ip link add up9 type veth peer name eth1 netns {node_ns}; ip link set up9 master br1 up"
        ))
        .unwrap();
    c.node("node")
        .ns
        .sh("ip link set eth1 up; ip addr add 10.99.0.1/24 dev eth1")
        .unwrap();
    let cfg_master = c
        .config_for("master", "")
        .replace(&format!("address = \"{NODE}\""), "address = \"10.99.0.1\"");
    c.start_daemon("master", Some(cfg_master)).unwrap();
    // node's config: no uplink, no address, can-reach toward the master.
    let cfg_node = c
        .config_for("node", "autodetect = \"can-reach=10.99.0.2\"")
        .replace("uplink = \"eth0\"\n", "")
        .replace(&format!("address = \"{NODE}\"\n"), "")
        .replace(
            &format!("address = \"{MASTER}\""),
            "address = \"10.99.0.2\"",
        );
    c.start_daemon("node", Some(cfg_node.clone())).unwrap();
    let st = c.ipipd_json("node", &["status"]).unwrap();
    assert_eq!(st["uplink"], "eth1", "{st}");
    assert_eq!(st["node_ip"], "10.99.0.1", "{st}");
    assert!(
        st["found"]
            .as_str()
            .is_some_and(|f| f.contains("autodetect can-reach=10.99.0.2")),
        "{st}"
    );
    // first-found, on the same node, would have taken eth0: `ipipd check` says so.
    let ff = c.dir.join("first-found.toml");
    std::fs::write(
        &ff,
        cfg_node.replace("autodetect = \"can-reach=10.99.0.2\"", ""),
    )
    .unwrap();
    let out = c
        .node("node")
        .ipipd(&["check", "--config", &ff.to_string_lossy()])
        .unwrap();
    assert!(out.contains(&format!("({NODE}) on uplink eth0")), "{out}");
    assert!(
        ping(&pod(&c, "node", N1), &format!("-c 2 -i 0.2 -W 2 {M1}")).contains(" 2 received"),
        "{}",
        c.logs()
    );
}
