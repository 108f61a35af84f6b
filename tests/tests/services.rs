//! Kubernetes Services and natOutgoing beside the fast path: kube-proxy's rules (iptables,
//! nftables, IPVS) in the nodes' namespaces, servers in pods, and every case a cluster uses —
//! ClusterIP with the backend on another node, on the same node, the client its own backend,
//! a backend in a node's second block, UDP through a connected socket, NodePort with
//! `externalTrafficPolicy: Cluster` and `Local` from a pod and from a host outside the pod
//! network, the node itself to a ClusterIP — each answered 20 times by the right backend from
//! the VIP's address. Then a stream through a ClusterIP across restarts, natOutgoing, and a
//! FORWARD rule with the fast path off.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use ipipd_tests::{
    NetNs,
    cluster::{Cluster, NodeSpec, PodSpec},
    counters::ping,
    metrics_get, require_root,
    services::{Proto, ProxyMode, Server, Service, ask, ask_many, install, kernel_has_ipvs},
    traffic::{accept_within, tcp_stream_via},
};

const CLUSTER_CIDR: &str = "10.210.0.0/16";
const WORLD: Ipv4Addr = Ipv4Addr::new(172, 31, 242, 200);
const REQUESTS: usize = 20;

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn at(addr: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(a(addr), port)
}

/// Node n (1..=3) at 172.31.242.15n owning 10.210.n.0/26 (n1 also 10.210.1.64/26), with its
/// pods and a default route via "world", a host on the underlay with no route to the pods.
fn cluster(tag: &str, nodes: usize) -> Cluster {
    let pod = |addr: &str, ifc: &str| PodSpec {
        address: a(addr),
        interface: ifc.into(),
    };
    let node = |n: u8, pods: Vec<PodSpec>| NodeSpec {
        name: format!("n{n}"),
        address: Ipv4Addr::new(172, 31, 242, 150 + n),
        prefix_len: 20,
        block: format!("10.210.{n}.0/26"),
        pods,
        mtu: 1500,
        bridge: 0,
        setup: vec![format!("ip route add default via {WORLD}")],
        peer: true,
    };
    let mut specs = vec![
        node(
            1,
            vec![
                pod("10.210.1.2", "calis1a"),
                pod("10.210.1.3", "calis1b"),
                // In n1's second block.
                pod("10.210.1.66", "calis1c"),
            ],
        ),
        node(2, vec![pod("10.210.2.2", "calis2a")]),
        node(3, vec![pod("10.210.3.2", "calis3a")]),
    ];
    specs.truncate(nodes);
    specs.push(NodeSpec::host("world", WORLD, 20));
    Cluster::new(tag, &specs).unwrap()
}

/// A node's blocks: n1 has a second one.
fn blocks(n: &str) -> Vec<String> {
    let i = &n[1..];
    let mut b = vec![format!("10.210.{i}.0/26")];
    if n == "n1" {
        b.push("10.210.1.64/26".into());
    }
    b
}

/// A node's config: its blocks, the other nodes as peers with theirs, its pods; `extra` goes
/// into [node].
fn config(c: &Cluster, name: &str, extra: &str) -> String {
    let me = c.node(name);
    let mut s = format!(
        "[node]\nname = \"{name}\"\nuplink = \"eth0\"\naddress = \"{}\"\npin_dir = \"{}\"\n{extra}\n",
        me.spec.address,
        c.bpffs.join(name).display()
    );
    for b in blocks(name) {
        s += &format!("\n[[block]]\ncidr = \"{b}\"\n");
    }
    for other in c
        .nodes
        .iter()
        .filter(|n| n.spec.peer && n.spec.name != name)
    {
        let bl: Vec<String> = blocks(&other.spec.name)
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect();
        s += &format!(
            "\n[[peer]]\naddress = \"{}\"\nblocks = [{}]\n",
            other.spec.address,
            bl.join(", ")
        );
    }
    for p in &me.spec.pods {
        s += &format!(
            "\n[[endpoint]]\naddress = \"{}\"\ninterface = \"{}\"\n",
            p.address, p.interface
        );
    }
    s
}

fn start_all(c: &mut Cluster, extra: &str) {
    let names: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.spec.peer)
        .map(|n| n.spec.name.clone())
        .collect();
    for n in names {
        let cfg = config(c, &n, extra);
        c.start_daemon(&n, Some(cfg))
            .unwrap_or_else(|e| panic!("{n}: {e:#}"));
    }
}

fn pod_ns(c: &Cluster, addr: &str) -> NetNs {
    c.nodes
        .iter()
        .flat_map(|n| n.pods.iter())
        .find(|p| p.spec.address == a(addr))
        .unwrap_or_else(|| panic!("no pod {addr}"))
        .ns
        .view()
}

/// The Services of the cases, as kube-proxy writes them on node `on` (a NodePort with
/// `externalTrafficPolicy: Local` only where its backend is).
fn services(on: &str) -> Vec<Service> {
    let svc = |vip: &str, port: u16, proto: Proto, backend: SocketAddrV4| Service {
        vip: a(vip),
        port,
        proto,
        backend,
        node_port: None,
    };
    let mut v = vec![
        // ClusterIPs: the backend on n2; on n1 (the clients' node); the client itself (n1's
        // 10.210.1.2); in n1's second block.
        svc("10.96.0.11", 80, Proto::Tcp, at("10.210.2.2", 8080)),
        svc("10.96.0.12", 80, Proto::Tcp, at("10.210.1.3", 8080)),
        svc("10.96.0.13", 80, Proto::Tcp, at("10.210.1.2", 8081)),
        svc("10.96.0.14", 80, Proto::Tcp, at("10.210.1.66", 8080)),
        // kube-dns on n3, and a UDP service on the clients' node.
        svc("10.96.0.10", 53, Proto::Udp, at("10.210.3.2", 53)),
        svc("10.96.0.16", 53, Proto::Udp, at("10.210.1.3", 5353)),
    ];
    let mut cluster_np = svc("10.96.0.17", 80, Proto::Tcp, at("10.210.3.2", 8080));
    cluster_np.node_port = Some((30080, false));
    v.push(cluster_np);
    if on == "n1" {
        let mut local_np = svc("10.96.0.18", 80, Proto::Tcp, at("10.210.1.3", 8082));
        local_np.node_port = Some((30081, true));
        v.push(local_np);
    }
    v
}

/// The servers behind the Services.
fn servers(c: &Cluster) -> Vec<Server> {
    let mut all = Vec::new();
    let mut seen = BTreeMap::new();
    for s in services("n1") {
        if seen.insert(s.backend, ()).is_some() {
            continue;
        }
        let ns = pod_ns(c, &s.backend.ip().to_string());
        all.push(Server::start(&ns, s.backend, s.proto).unwrap());
    }
    all
}

/// Every case of a cluster with kube-proxy in `mode`: (what, the first failure) for each
/// that fails.
fn every_case(mode: ProxyMode) -> Vec<(String, String)> {
    let mut c = cluster(&format!("svc-{mode:?}").to_lowercase(), 3);
    start_all(&mut c, "");
    for n in ["n1", "n2", "n3"] {
        install(&c.node(n).ns, mode, &services(n), CLUSTER_CIDR).unwrap();
    }
    let _servers = servers(&c);
    let n1 = c.node("n1").spec.address;
    let (client, remote_client) = (pod_ns(&c, "10.210.1.2"), pod_ns(&c, "10.210.2.2"));
    let world = c.node("world").ns.view();
    let node1 = c.node("n1").ns.view();
    let cases: Vec<(&str, &NetNs, SocketAddrV4, Proto, SocketAddrV4)> = vec![
        (
            "ClusterIP, backend on another node",
            &client,
            at("10.96.0.11", 80),
            Proto::Tcp,
            at("10.210.2.2", 8080),
        ),
        (
            "ClusterIP, backend on the same node",
            &client,
            at("10.96.0.12", 80),
            Proto::Tcp,
            at("10.210.1.3", 8080),
        ),
        (
            "ClusterIP, the client its own backend",
            &client,
            at("10.96.0.13", 80),
            Proto::Tcp,
            at("10.210.1.2", 8081),
        ),
        (
            "ClusterIP, backend in the node's second block",
            &client,
            at("10.96.0.14", 80),
            Proto::Tcp,
            at("10.210.1.66", 8080),
        ),
        (
            "ClusterIP from another node, backend in n1's second block",
            &remote_client,
            at("10.96.0.14", 80),
            Proto::Tcp,
            at("10.210.1.66", 8080),
        ),
        (
            "UDP (connected socket), kube-dns on another node",
            &client,
            at("10.96.0.10", 53),
            Proto::Udp,
            at("10.210.3.2", 53),
        ),
        (
            "UDP (connected socket), backend on the same node",
            &client,
            at("10.96.0.16", 53),
            Proto::Udp,
            at("10.210.1.3", 5353),
        ),
        (
            "NodePort, externalTrafficPolicy Cluster, from a pod",
            &remote_client,
            SocketAddrV4::new(n1, 30080),
            Proto::Tcp,
            at("10.210.3.2", 8080),
        ),
        (
            "NodePort, externalTrafficPolicy Cluster, from outside",
            &world,
            SocketAddrV4::new(n1, 30080),
            Proto::Tcp,
            at("10.210.3.2", 8080),
        ),
        (
            "NodePort, externalTrafficPolicy Local, from a pod",
            &remote_client,
            SocketAddrV4::new(n1, 30081),
            Proto::Tcp,
            at("10.210.1.3", 8082),
        ),
        (
            "NodePort, externalTrafficPolicy Local, from outside",
            &world,
            SocketAddrV4::new(n1, 30081),
            Proto::Tcp,
            at("10.210.1.3", 8082),
        ),
        (
            "the node itself to a ClusterIP, backend on another node",
            &node1,
            at("10.96.0.11", 80),
            Proto::Tcp,
            at("10.210.2.2", 8080),
        ),
    ];
    let mut failed = Vec::new();
    for (what, ns, to, proto, backend) in cases {
        if let Err(e) = ask_many(ns, to, proto, backend, REQUESTS) {
            failed.push((what.to_string(), format!("{e:#}")));
        }
    }
    // The replies that had to reach the kernel did, counted as such; nothing was evicted.
    let stats = c.ipipd_json("n1", &["stats"]).unwrap().to_string();
    if failed.is_empty() {
        for reason in [
            "pass_kernel_flow",
            "decap_kernel_flow",
            "kernel_flow_recorded",
        ] {
            if !stats.contains(reason) {
                failed.push((format!("n1's counters: no {reason}"), stats.clone()));
            }
        }
        let m = |name: &str| metric(&c.node("n1").ns, name);
        let (recorded, replies, evicted) = (
            m("ipipd_kernel_flows_recorded_total"),
            m("ipipd_kernel_flows_replies_total"),
            m("ipipd_kernel_flows_evicted_total"),
        );
        if !(recorded > Some(0.0) && replies > Some(0.0) && evicted == Some(0.0)) {
            failed.push((
                "n1's kernel-flow metrics".into(),
                format!("recorded {recorded:?}, replies {replies:?}, evicted {evicted:?}"),
            ));
        }
    }
    if !failed.is_empty() {
        for n in ["n1", "n2", "n3"] {
            let ns = &c.node(n).ns;
            let ct = ns.sh("conntrack -L 2>&1").unwrap_or_default();
            let stats = c.ipipd_json(n, &["stats"]).map(|v| v.to_string());
            failed.push((format!("{n}'s conntrack"), ct));
            failed.push((format!("{n}'s counters"), format!("{stats:?}")));
        }
        failed.push(("logs".into(), c.logs()));
    }
    failed
}

fn assert_every_case(mode: ProxyMode) {
    let failed = every_case(mode);
    assert!(
        failed.is_empty(),
        "{mode:?}: {} failed:\n{}",
        failed.len(),
        failed
            .iter()
            .map(|(w, e)| format!("- {w}: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn services_work_with_kube_proxy_in_iptables_mode() {
    if !require_root() {
        return;
    }
    assert_every_case(ProxyMode::Iptables);
}

#[test]
fn services_work_with_kube_proxy_in_nftables_mode() {
    if !require_root() {
        return;
    }
    assert_every_case(ProxyMode::Nftables);
}

#[test]
fn services_work_with_kube_proxy_in_ipvs_mode() {
    if !require_root() {
        return;
    }
    let probe = NetNs::new("svc-ipvs-probe").unwrap();
    if !kernel_has_ipvs(&probe) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        eprintln!(
            "skipped: kernel {} has no ip_vs (no /proc/net/ip_vs, no module to load); the test VMs' kernels run it",
            release.trim()
        );
        return;
    }
    drop(probe);
    // IPVS answers a VIP on the node's kube-ipvs0 (ClusterIPs; NodePorts are iptables' in
    // this mode): the ClusterIP cases.
    let mut c = cluster("svc-ipvs", 3);
    start_all(&mut c, "");
    let ipvs: Vec<Service> = services("n1")
        .into_iter()
        .filter(|s| s.node_port.is_none())
        .collect();
    for n in ["n1", "n2", "n3"] {
        install(&c.node(n).ns, ProxyMode::Ipvs, &ipvs, CLUSTER_CIDR).unwrap();
    }
    let _servers = servers(&c);
    let client = pod_ns(&c, "10.210.1.2");
    for (vip, port, proto, backend) in [
        ("10.96.0.11", 80, Proto::Tcp, at("10.210.2.2", 8080)),
        ("10.96.0.12", 80, Proto::Tcp, at("10.210.1.3", 8080)),
        ("10.96.0.10", 53, Proto::Udp, at("10.210.3.2", 53)),
    ] {
        ask_many(&client, at(vip, port), proto, backend, REQUESTS)
            .unwrap_or_else(|e| panic!("IPVS {vip}:{port}: {e:#}\n{}", c.logs()));
    }
}

/// A TCP stream through a ClusterIP to a pod on another node while the client's node and the
/// backend's node restart their daemons three times: every byte arrives, in order.
#[test]
fn a_stream_through_a_cluster_ip_survives_restarts() {
    if !require_root() {
        return;
    }
    let mut c = cluster("svc-restart", 2);
    start_all(&mut c, "");
    let svc = Service {
        vip: a("10.96.0.20"),
        port: 80,
        proto: Proto::Tcp,
        backend: at("10.210.2.2", 9000),
        node_port: None,
    };
    for n in ["n1", "n2"] {
        install(
            &c.node(n).ns,
            ProxyMode::Iptables,
            std::slice::from_ref(&svc),
            CLUSTER_CIDR,
        )
        .unwrap();
    }
    let (client, server) = (pod_ns(&c, "10.210.1.2"), pod_ns(&c, "10.210.2.2"));
    let go = AtomicBool::new(true);
    let keep_going = || go.load(Ordering::Relaxed);
    let transfer = std::thread::scope(|s| {
        let t = s.spawn(|| {
            tcp_stream_via(
                &server,
                svc.backend,
                &client,
                SocketAddrV4::new(svc.vip, svc.port),
                1 << 30,
                Duration::from_millis(2),
                &keep_going,
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        for i in 0..3 {
            for n in ["n1", "n2"] {
                c.stop_daemon(n).unwrap();
                c.restart_daemon(n)
                    .unwrap_or_else(|e| panic!("restart {i} of {n}: {e:#}"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        go.store(false, Ordering::Relaxed);
        t.join().unwrap()
    });
    let t = transfer.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert!(t.sent.0 > 0, "{t:?}");
    assert_eq!(t.sent, t.received, "the stream's bytes\n{}", c.logs());
}

/// A server on "world" (outside the pod network, no route to the pods) that records the
/// source of every TCP connection and UDP datagram.
fn sources_seen(world: &NetNs, port: u16, during: impl FnOnce()) -> Vec<Ipv4Addr> {
    // What holds the port, should a bind fail.
    let holders = || world.sh("ss -tuanoe").unwrap_or_else(|e| format!("{e:#}"));
    let tcp = world
        .enter(move || TcpListener::bind(SocketAddrV4::new(WORLD, port)))
        .unwrap()
        .unwrap_or_else(|e| panic!("TCP {WORLD}:{port}: {e}\n{}", holders()));
    let udp = world
        .enter(move || UdpSocket::bind(SocketAddrV4::new(WORLD, port)))
        .unwrap()
        .unwrap_or_else(|e| panic!("UDP {WORLD}:{port}: {e}\n{}", holders()));
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((mut conn, std::net::SocketAddr::V4(from))) =
                    accept_within(&tcp, Duration::from_millis(50))
                {
                    seen.push(*from.ip());
                    let _ = std::io::Write::write_all(&mut conn, b"backend=world\n");
                }
                if let Ok((_, std::net::SocketAddr::V4(from))) = udp.recv_from(&mut buf) {
                    seen.push(*from.ip());
                    let _ = udp.send_to(b"backend=world\n", from);
                }
            }
            seen
        });
        during();
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap()
    })
}

fn ipipd_table(ns: &NetNs) -> Option<String> {
    ns.sh("nft list table ip ipipd").ok()
}

#[test]
fn nat_outgoing_masquerades_pods_to_the_outside_and_nothing_else() {
    if !require_root() {
        return;
    }
    let mut c = cluster("svc-natout", 2);
    let cfg1 = config(&c, "n1", "nat_outgoing = true");
    c.start_daemon("n1", Some(cfg1)).unwrap();
    let cfg2 = config(&c, "n2", "");
    c.start_daemon("n2", Some(cfg2)).unwrap();
    let (p1, p2) = (pod_ns(&c, "10.210.1.2"), pod_ns(&c, "10.210.2.2"));
    let world = c.node("world").ns.view();
    let n1 = c.node("n1").spec.address;
    // Each look at the world has a port of its own: nothing it sees is left from the one before.
    let to_world = |port| SocketAddrV4::new(WORLD, port);

    // n1's pod reaches the world over TCP and UDP, seen there from n1's address.
    let seen = sources_seen(&world, 7000, || {
        for proto in [Proto::Tcp, Proto::Udp] {
            let got =
                ask(&p1, to_world(7000), proto).unwrap_or_else(|e| panic!("{proto:?}: {e:#}"));
            assert_eq!(got, "backend=world");
        }
    });
    assert_eq!(seen, [n1, n1], "the world saw {seen:?}");
    // n2 has no natOutgoing: its pod's packets reach the world with the pod's address, and
    // no answer comes back (the world has no route to the pods).
    let seen = sources_seen(&world, 7001, || {
        assert!(ask(&p2, to_world(7001), Proto::Udp).is_err());
    });
    assert_eq!(seen, [a("10.210.2.2")], "n2's pod was masqueraded");
    // Pod to pod, across nodes: the pod's own address.
    let seen_by_pod = {
        let l = p2
            .enter(|| TcpListener::bind(at("10.210.2.2", 7101)))
            .unwrap()
            .unwrap();
        std::thread::scope(|s| {
            let t = s.spawn(|| accept_within(&l, Duration::from_secs(5)).map(|(_, f)| f));
            let _ = ask(&p1, at("10.210.2.2", 7101), Proto::Tcp);
            t.join().unwrap().unwrap()
        })
    };
    assert_eq!(seen_by_pod.ip(), std::net::IpAddr::V4(a("10.210.1.2")));
    // The table is ipipd's own, shown by `ipipd status`; n2 has none.
    let table = ipipd_table(&c.node("n1").ns).expect("n1 has the table ip ipipd");
    assert!(table.contains("masquerade"), "{table}");
    assert!(ipipd_table(&c.node("n2").ns).is_none());
    let st = c.ipipd_json("n1", &["status"]).unwrap();
    assert_eq!(
        st["nat_outgoing"]["sources"],
        serde_json::json!(["10.210.1.0/26", "10.210.1.64/26"]),
        "{st}"
    );
    // A restart adopts the table; teardown removes it.
    c.stop_daemon("n1").unwrap();
    assert!(
        ipipd_table(&c.node("n1").ns).is_some(),
        "SIGTERM removed the table"
    );
    c.restart_daemon("n1").unwrap();
    let seen = sources_seen(&world, 7002, || {
        ask(&p1, to_world(7002), Proto::Tcp).unwrap();
    });
    assert_eq!(seen, [n1]);
    c.stop_daemon("n1").unwrap();
    c.teardown("n1").unwrap();
    assert!(
        ipipd_table(&c.node("n1").ns).is_none(),
        "teardown left the table"
    );
}

/// A metric of a node's /metrics.
fn metric(ns: &NetNs, name: &str) -> Option<f64> {
    let (_, body) = metrics_get(ns, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A kernel-flows map of 1,024 entries takes 1,500 flows: the LRU evicts the oldest, and the
/// node counts what it evicted.
#[test]
fn a_full_kernel_flows_map_counts_what_it_evicts() {
    if !require_root() {
        return;
    }
    let mut c = cluster("svc-full", 1);
    start_all(&mut c, "kernel_flows = 1024");
    let p = pod_ns(&c, "10.210.1.2");
    p.enter(|| {
        for port in 0..1500u16 {
            let s = UdpSocket::bind(SocketAddrV4::new(a("10.210.1.2"), 20000 + port)).unwrap();
            let _ = s.send_to(b"x", SocketAddrV4::new(WORLD, 9));
        }
    })
    .unwrap();
    let ns = c.node("n1").ns.view();
    assert_eq!(metric(&ns, "ipipd_kernel_flows_capacity"), Some(1024.0));
    let recorded = metric(&ns, "ipipd_kernel_flows_recorded_total").unwrap_or_default();
    let evicted = metric(&ns, "ipipd_kernel_flows_evicted_total").unwrap_or_default();
    let entries = metric(&ns, "ipipd_kernel_flows").unwrap_or_default();
    assert!(recorded >= 1500.0, "recorded {recorded}");
    assert!(entries <= 1024.0, "entries {entries}");
    assert_eq!(evicted, recorded - entries, "evicted {evicted}");
    assert!(evicted >= 476.0, "evicted {evicted}");
}

fn pings(from: &NetNs, to: &str) -> bool {
    ping(from, &format!("-c 2 -i 0.2 -W 1 {to}")).contains(" 2 received")
}

/// The fast path bypasses the FORWARD chain, as the README says; `fast_path = false` puts
/// every pod packet through it, and a FORWARD rule for one pod pair is honoured.
#[test]
fn a_forward_rule_is_honoured_without_the_fast_path_only() {
    if !require_root() {
        return;
    }
    let mut c = cluster("svc-slow", 2);
    start_all(&mut c, "");
    let (p1a, p1b) = (pod_ns(&c, "10.210.1.2"), pod_ns(&c, "10.210.1.3"));
    let n1 = c.node("n1").ns.view();
    n1.sh("iptables -w -A FORWARD -s 10.210.1.2 -d 10.210.2.2 -j DROP")
        .unwrap();
    assert!(pings(&p1a, "10.210.2.2"), "the fast path skips FORWARD");
    for n in ["n1", "n2"] {
        c.stop_daemon(n).unwrap();
        let cfg = config(&c, n, "fast_path = false");
        c.start_daemon(n, Some(cfg)).unwrap();
    }
    assert!(!pings(&p1a, "10.210.2.2"), "FORWARD's DROP is not honoured");
    assert!(
        pings(&p1b, "10.210.2.2"),
        "another pod of n1 → n2's pod\n{}",
        c.logs()
    );
    assert!(pings(&p1a, "10.210.1.3"), "pods of one node\n{}", c.logs());
    assert!(
        pings(&pod_ns(&c, "10.210.2.2"), "10.210.1.3"),
        "n2 → n1\n{}",
        c.logs()
    );
    let stats = c.ipipd_json("n1", &["stats"]).unwrap().to_string();
    assert!(stats.contains("pass_slow_path"), "{stats}");
    let drops = n1.sh("iptables -w -L FORWARD -v -x -n").unwrap();
    assert!(
        drops
            .lines()
            .any(|l| l.contains("DROP") && !l.trim_start().starts_with('0')),
        "{drops}"
    );
}
