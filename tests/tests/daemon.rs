//! Two ipipd daemons in two node namespaces on one host (distinct pin directories).

use std::net::Ipv4Addr;

use ipipd_tests::{
    cluster::{Cluster, seed_nodes},
    require_root,
};

fn ping(c: &Cluster, from_node: &str, from: Ipv4Addr, to: Ipv4Addr) -> anyhow::Result<String> {
    c.node(from_node)
        .pod(from)
        .ns
        .sh(&format!("ping -c 3 -i 0.2 -W 2 {to}"))
}

#[test]
fn pods_reach_each_other_across_nodes() {
    require_root();
    let mut c = Cluster::new("d1", &seed_nodes(2)).unwrap();
    c.start_daemon("master", None).unwrap();
    c.start_daemon("node", None).unwrap();
    let m = Ipv4Addr::new(192, 168, 179, 2);
    let n = Ipv4Addr::new(192, 168, 83, 129);
    let n2 = Ipv4Addr::new(192, 168, 83, 130);
    let out = ping(&c, "node", n, m).unwrap_or_else(|e| {
        panic!(
            "{e:#}\nnode log:\n{}\nmaster log:\n{}",
            c.node("node").daemon.as_ref().unwrap().log_text(),
            c.node("master").daemon.as_ref().unwrap().log_text()
        )
    });
    assert!(out.contains("3 received"), "{out}");
    let out = ping(&c, "master", m, n).unwrap();
    assert!(out.contains("3 received"), "{out}");
    let out = ping(&c, "node", n, n2).unwrap();
    assert!(out.contains("3 received"), "{out}");
}
