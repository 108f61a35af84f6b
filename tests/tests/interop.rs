//! Interop with the kernel's own IPIP, which a Calico node in classic IPIP mode runs: the seed's
//! master runs `tunl0` with the seed's routes, the seed's node runs ipipd. Needs a kernel with the
//! ipip module loaded (the kernel test VM loads Debian 6.1's `ipip.ko`); the host kernel of this
//! project is built without it, so the test is ignored there and `cargo xtask vm` runs it.

use std::net::Ipv4Addr;

use ipipd_tests::{
    NetNs,
    cluster::{Cluster, seed_nodes},
    counters::ping,
    require_root,
    traffic::{Capture, Ip4, ipv4_frames, tcp_transfer},
};

/// (packets, up?) of a node's tunl0, from `ip -s -o link show tunl0`.
fn tunl0(ns: &NetNs) -> (u64, u64, bool) {
    let out = ns.ip("-s -o link show dev tunl0").unwrap();
    let up = out
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"));
    // "... RX: bytes packets ... \    <bytes> <packets> ... TX: ..." in one line.
    let fields: Vec<&str> = out.split_whitespace().collect();
    let after = |label: &str| -> u64 {
        let at = fields.iter().position(|f| *f == label).unwrap();
        // The label's header words run up to the first number.
        fields[at..]
            .iter()
            .filter_map(|f| f.parse::<u64>().ok())
            .nth(1)
            .unwrap()
    };
    (after("RX:"), after("TX:"), up)
}

#[test]
#[ignore = "needs the kernel's ipip module; `cargo xtask vm` runs it on Debian 6.1"]
fn ipipd_and_the_kernels_tunl0_reach_each_other() {
    if !require_root() {
        return;
    }
    assert!(
        std::path::Path::new("/sys/module/ipip").exists(),
        "the ipip module is not loaded: this test needs a kernel with ipip (cargo xtask vm)"
    );
    let mut c = Cluster::new("interop", &seed_nodes(1)).unwrap();
    // Loading ipip.ko gives every namespace a fallback tunl0, DOWN; ipipd's node has one too.
    let (_, _, up) = tunl0(&c.node("node").ns);
    assert!(!up, "the fallback tunl0 starts down");
    // The master: the kernel's tunl0 with the seed's routes.
    c.node("master").kernel_tunl0(c.node("node")).unwrap();
    c.start_daemon("node", None).unwrap();

    let master_pod = c.node("master").pods[0].ns.view();
    let node_pod = c.node("node").pods[0].ns.view();
    let (m1, n1) = (
        c.node("master").pods[0].spec.address,
        c.node("node").pods[0].spec.address,
    );
    let (master_ip, node_ip) = (c.node("master").spec.address, c.node("node").spec.address);

    // One ping each way, captured on the underlay: the request of each is encapsulated by the
    // sending side, ipipd's (node → master) and the kernel's (master → node).
    let cap = Capture::start(&c.underlay, "br0", &c.dir, "ip proto 4").unwrap();
    let out = ping(&node_pod, &format!("-c 3 -i 0.2 -W 2 -M do -Q 0x2a {m1}"));
    assert!(out.contains("3 received"), "ipipd pod -> kernel pod: {out}");
    let out = ping(&master_pod, &format!("-c 3 -i 0.2 -W 2 -M do -Q 0x2a {n1}"));
    assert!(out.contains("3 received"), "kernel pod -> ipipd pod: {out}");
    let frames = cap.finish().unwrap();
    let ipip: Vec<Ip4> = ipv4_frames(&frames)
        .into_iter()
        .filter(|p| p.proto == 4)
        .collect();
    // The echo request a pod sent, as its node encapsulated it.
    let request_from = |node: Ipv4Addr, pod: Ipv4Addr| -> Ip4 {
        ipip.iter()
            .find(|p| {
                p.src == node
                    && p.inner
                        .as_ref()
                        .is_some_and(|i| i.icmp_type == Some(8) && i.src == pod && i.tos == 0x2a)
            })
            .unwrap_or_else(|| panic!("no encapsulated echo request from {pod}: {ipip:?}"))
            .clone()
    };
    let by_ipipd = request_from(node_ip, n1);
    let by_kernel = request_from(master_ip, m1);
    println!("outer header field   ipipd          kernel tunl0");
    let row = |f: &str, a: String, b: String| println!("{f:<20} {a:<14} {b}");
    for (name, p) in [("ipipd", &by_ipipd), ("kernel", &by_kernel)] {
        let inner = p.inner.as_ref().unwrap();
        // What both must agree on (RFC 2003).
        assert_eq!(p.ihl, 20, "{name}: outer IHL");
        assert_eq!(
            p.total_len,
            inner.total_len + 20,
            "{name}: outer length = inner + 20"
        );
        assert!(p.checksum_ok && inner.checksum_ok, "{name}: checksums");
        assert!(!p.frag, "{name}: not a fragment");
        assert_eq!(p.df, inner.df, "{name}: DF copied from the inner header");
        assert!(inner.df, "{name}: ping -M do sets DF: {p:?}");
    }
    row("version/IHL", "4/20".into(), "4/20".into());
    row("protocol", "4".into(), "4".into());
    row(
        "src -> dst",
        format!("{}->{}", by_ipipd.src, by_ipipd.dst),
        format!("{}->{}", by_kernel.src, by_kernel.dst),
    );
    assert_eq!((by_ipipd.src, by_ipipd.dst), (node_ip, master_ip));
    assert_eq!((by_kernel.src, by_kernel.dst), (master_ip, node_ip));
    row(
        "total length",
        by_ipipd.total_len.to_string(),
        by_kernel.total_len.to_string(),
    );
    row("DF", by_ipipd.df.to_string(), by_kernel.df.to_string());
    row(
        "TOS",
        format!("{:#04x}", by_ipipd.tos),
        format!("{:#04x}", by_kernel.tos),
    );
    row("TTL", by_ipipd.ttl.to_string(), by_kernel.ttl.to_string());
    row("ID", by_ipipd.id.to_string(), by_kernel.id.to_string());
    // The documented differences (README, "Interop with the kernel's IPIP"):
    // TOS: ipipd copies the inner TOS whole (DSCP and ECN, RFC 2003 3.1 with RFC 6040's normal
    // mode); the fallback tunl0 (tos 0) copies only ECN.
    assert_eq!(by_ipipd.tos, 0x2a);
    assert_eq!(by_kernel.tos, 0x2a & 0x3, "tunl0 copies only ECN");
    // TTL: ipipd sends 64 (the kernel's default TTL); tunl0 (ttl 0 = inherit) copies the inner
    // TTL, which the master's forwarding already decremented.
    assert_eq!(by_ipipd.ttl, 64);
    assert_eq!(by_kernel.ttl, by_kernel.inner.as_ref().unwrap().ttl);
    // ID: each side numbers its own packets (ipipd per CPU, the kernel by a hashed counter).

    // 20 MB of TCP each way, intact.
    let t = tcp_transfer(&master_pod, m1, 5601, &node_pod, 20 << 20).unwrap();
    assert_eq!(t.sent, t.received, "ipipd pod -> kernel pod, 20 MB");
    let t = tcp_transfer(&node_pod, n1, 5602, &master_pod, 20 << 20).unwrap();
    assert_eq!(t.sent, t.received, "kernel pod -> ipipd pod, 20 MB");

    // The kernel side used its tunl0; ipipd's node never touched its own.
    let (rx, tx, up) = tunl0(&c.node("master").ns);
    assert!(up && rx > 0 && tx > 0, "master's tunl0 carried the traffic");
    let (rx, tx, up) = tunl0(&c.node("node").ns);
    assert!(
        !up && rx == 0 && tx == 0,
        "ipipd's node left its fallback tunl0 alone (rx {rx}, tx {tx}, up {up})"
    );
    let log = c.logs();
    assert!(
        !log.contains("tunl0"),
        "ipipd took no notice of tunl0: {log}"
    );
}
