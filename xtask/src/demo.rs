//! `cargo xtask run`: the seed's two-node cluster in network namespaces, with ipipd on each node.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, bail};
use ipipd_tests::{
    cluster::{Cluster, seed_nodes},
    dns,
    services::{self, Proto, ProxyMode, Service},
};

fn section(title: &str) {
    println!("\n== {title}");
}

pub fn run(ipipd: &Path) -> Result<()> {
    // SAFETY: ignoring SIGINT for this bounded demo, so that Ctrl-C cannot skip the cleanup (the
    // daemons, in the same process group, still get it and exit; dropping the cluster removes
    // the namespaces and unmounts the pins).
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("IPIPD_BIN", ipipd) };
    section(
        "building the cluster of the seed: master 172.31.242.157 (192.168.179.0/26), node 172.31.242.156 (192.168.83.128/26)",
    );
    let mut c = Cluster::new("demo", &seed_nodes(2)).context("creating the demo namespaces")?;
    for n in &c.nodes {
        println!(
            "  {:<7} netns {:<28} eth0 {}/{}",
            n.spec.name, n.ns.name, n.spec.address, n.spec.prefix_len
        );
        for p in &n.pods {
            println!(
                "          pod {:<15} on {:<14} netns {}",
                p.spec.address, p.spec.interface, p.ns.name
            );
        }
    }
    for name in ["master", "node"] {
        c.start_daemon(name, None)
            .with_context(|| format!("starting ipipd on {name}"))?;
        println!(
            "  ipipd running on {name} (log: {})",
            c.node(name).daemon.as_ref().unwrap().log.display()
        );
    }

    section("ipipd routes on node (what replaces the route table)");
    let pins = |n: &str| c.bpffs.join(n).to_string_lossy().into_owned();
    print!(
        "{}",
        c.node("node")
            .ipipd(&["routes", "--pin-dir", &pins("node")])?
    );
    section("the kernel's slow path on node (host traffic, TTL expiry, fragmentation-needed only)");
    print!("{}", c.node("node").ns.ip("route show proto 180")?);

    section("pods reaching each other");
    let pairs = [
        (
            "node",
            Ipv4Addr::new(192, 168, 83, 129),
            Ipv4Addr::new(192, 168, 179, 2),
            "across nodes",
        ),
        (
            "master",
            Ipv4Addr::new(192, 168, 179, 2),
            Ipv4Addr::new(192, 168, 83, 129),
            "across nodes, back",
        ),
        (
            "node",
            Ipv4Addr::new(192, 168, 83, 129),
            Ipv4Addr::new(192, 168, 83, 130),
            "on one node",
        ),
    ];
    let mut failed = 0;
    for (node, from, to, what) in pairs {
        let out = c
            .node(node)
            .pod(from)
            .ns
            .sh(&format!("ping -c 5 -i 0.2 -W 2 {to} || true"))?;
        let summary = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("no reply")
            .to_string();
        let ok = summary.contains(" 0% packet loss");
        failed += usize::from(!ok);
        println!("  {from:<15} -> {to:<15} {what:<20} {summary}");
    }

    section(
        "a Service: kube-dns behind ClusterIP 10.96.0.10 (the seed's), its pod 192.168.83.129 on node; kube-proxy's DNAT rules (iptables) on both nodes",
    );
    let kube_dns = Service {
        vip: Ipv4Addr::new(10, 96, 0, 10),
        port: 53,
        proto: Proto::Udp,
        backend: std::net::SocketAddrV4::new(Ipv4Addr::new(192, 168, 83, 129), 53),
        node_port: None,
    };
    for name in ["master", "node"] {
        services::install(
            &c.node(name).ns,
            ProxyMode::Iptables,
            std::slice::from_ref(&kube_dns),
            "192.168.0.0/16",
        )?;
    }
    let names = vec![
        (
            "kube-dns.kube-system.svc.cluster.local".to_string(),
            kube_dns.vip,
        ),
        (
            "kubernetes.default.svc.cluster.local".to_string(),
            Ipv4Addr::new(10, 96, 0, 1),
        ),
    ];
    let server = dns::Server::start(
        &c.node("node").pod(kube_dns.backend.ip().to_owned()).ns,
        kube_dns.backend,
        names.clone(),
    )?;
    let client = Ipv4Addr::new(192, 168, 179, 2);
    for (name, want) in &names {
        let got = dns::resolve(
            &c.node("master").pod(client).ns,
            std::net::SocketAddrV4::new(kube_dns.vip, 53),
            name,
        );
        let ok = got.as_ref().is_ok_and(|a| a == want);
        failed += usize::from(!ok);
        println!(
            "  {client} on master asks 10.96.0.10 for {name}: {}",
            match got {
                Ok(a) => format!("{a} (answered by 192.168.83.129 on node, from 10.96.0.10)"),
                Err(e) => format!("FAILED: {e:#}"),
            }
        );
    }
    drop(server);

    section("counters on node (ipipd stats)");
    print!(
        "{}",
        c.node("node")
            .ipipd(&["stats", "--pin-dir", &pins("node")])?
    );
    section("counters on master (ipipd stats)");
    print!(
        "{}",
        c.node("master")
            .ipipd(&["stats", "--pin-dir", &pins("master")])?
    );

    section("restarting ipipd on node under a 100/s ping from node's pod to master's");
    let from = c.node("node").pod(pairs[0].1).ns.view();
    let pinger = std::thread::spawn(move || {
        from.sh(&format!(
            "ping -n -q -c 300 -i 0.01 -W 1 {} || true",
            pairs[0].2
        ))
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    for i in 1..=3 {
        let t = std::time::Instant::now();
        c.stop_daemon("node")?;
        c.restart_daemon("node")?;
        let took = t.elapsed().as_millis();
        let log = c.node("node").daemon_log();
        let how = log
            .lines()
            .find(|l| l.contains("the data plane in"))
            .and_then(|l| l.split("] ").nth(1))
            .unwrap_or("no adoption logged")
            .to_string();
        println!("  restart {i}: SIGTERM to ready in {took} ms; {how}");
    }
    let out = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("the pinger panicked"))??;
    let summary = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("no reply")
        .to_string();
    failed += usize::from(!summary.contains(" 0% packet loss"));
    println!("  ping across the restarts: {summary}");

    section("both daemons stopped (SIGTERM): the data plane keeps forwarding");
    for name in ["master", "node"] {
        c.stop_daemon(name)?;
    }
    let out = c
        .node("node")
        .pod(pairs[0].1)
        .ns
        .sh(&format!("ping -c 5 -i 0.2 -W 2 {} || true", pairs[0].2))?;
    let summary = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("no reply")
        .to_string();
    failed += usize::from(!summary.contains(" 0% packet loss"));
    println!(
        "  {} -> {} with no daemon: {summary}",
        pairs[0].1, pairs[0].2
    );

    section("ipipd teardown on each node: nothing of ipipd's is left");
    for name in ["master", "node"] {
        c.teardown(name)?;
        let routes = c.node(name).ns.ip("route show proto 180")?;
        let tunnel = c.node(name).ns.ip("link show dev ipipd0").is_ok();
        println!(
            "  {name:<7} routes proto 180: {}, tunnel device: {}, pins: {}",
            if routes.trim().is_empty() {
                "none"
            } else {
                "LEFT"
            },
            if tunnel { "LEFT" } else { "gone" },
            if c.bpffs.join(name).exists() {
                "LEFT"
            } else {
                "gone"
            }
        );
    }
    drop(c);
    println!("  namespaces removed");
    if failed > 0 {
        bail!("{failed} of the demo's checks failed (5 ping runs, 2 DNS lookups)");
    }
    Ok(())
}
