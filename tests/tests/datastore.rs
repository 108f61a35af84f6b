//! The cluster datastore on etcd (Debian's etcd-server, started by each test inside a
//! namespace of its own on the underlay): nodes with no peers or blocks in their files claim
//! distinct blocks, learn each other, follow a node that joins and one that is removed, and
//! keep forwarding while etcd is away.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use dataplane_user::datastore::{DatastoreCfg, Store, memory::GRACE, model::Pool, sync::LEASE_TTL};
use ipipd_tests::{
    NetNs,
    cluster::{Cluster, NodeSpec},
    cni::Plugin,
    counters::ping,
    etcd::{Etcd, Pki},
    metrics_get, require_root,
    traffic::ping_while,
};
use serde_json::Value;

const ETCD_HOST: Ipv4Addr = Ipv4Addr::new(172, 31, 242, 10);
const PREFIX: &str = "/ipipd-test";

/// `n` nodes (no blocks, no pods) and the etcd host, all on one underlay.
fn nodes(tag: &str, n: usize) -> Cluster {
    let mut specs = vec![NodeSpec::host("etcd", ETCD_HOST, 20)];
    for i in 0..n {
        specs.push(NodeSpec::host(
            &format!("n{i}"),
            Ipv4Addr::new(172, 31, 242, 151 + i as u8),
            20,
        ));
    }
    Cluster::new(tag, &specs).unwrap()
}

/// A node's file: [node], [datastore] and the pool; no peers, no blocks.
fn config(c: &Cluster, node: &str, etcd: &Etcd) -> String {
    config_with(c, node, &etcd.url, "10.244.0.0/22", 26, "")
}

fn config_with(c: &Cluster, node: &str, url: &str, pool: &str, bs: u8, extra: &str) -> String {
    let n = c.node(node);
    format!(
        "[node]\nname = \"{node}\"\nuplink = \"eth0\"\naddress = \"{a}\"\npin_dir = \"{pins}\"\n\n\
         [datastore]\netcd = [\"{url}\"]\nprefix = \"{PREFIX}\"\n\n\
         [[pool]]\ncidr = \"{pool}\"\nblock_size = {bs}\n{extra}",
        a = n.spec.address,
        pins = c.bpffs.join(node).display(),
    )
}

fn start(c: &mut Cluster, node: &str, etcd: &Etcd) {
    let cfg = config(c, node, etcd);
    c.start_daemon(node, Some(cfg))
        .unwrap_or_else(|e| panic!("{node}: {e:#}\n{}\n{}", c.logs(), etcd.log_text()));
}

/// `ipipd blocks -o json` through a node's config: (block, owner).
fn blocks(c: &Cluster, node: &str) -> Vec<(String, String)> {
    let out = c
        .node(node)
        .ipipd(&["blocks", "--config", &c.config_path(node), "-o", "json"])
        .unwrap();
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["cidr"].as_str().unwrap().to_string(),
                b["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The prefixes of a node's routes map.
fn route_prefixes(c: &Cluster, node: &str) -> BTreeSet<String> {
    c.ipipd_json(node, &["routes"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["prefix"].as_str().unwrap().to_string())
        .collect()
}

fn eventually(what: &str, f: impl FnMut() -> bool) {
    ipipd_tests::eventually_within(what, Duration::from_secs(30), f)
}

/// A pod on `node` through the CNI plugin (its address from the node's claimed block).
fn pod(c: &Cluster, node: &str, id: &str) -> (NetNs, Ipv4Addr) {
    let ns = NetNs::new(&format!("ds-pod-{id}")).unwrap();
    let p = Plugin::new(c, node).unwrap();
    let r = p.call("ADD", id, Some(&ns.name), "eth0", &p.conf("1.0.0"), &[]);
    assert!(r.ok(), "ADD on {node}: {r}\n{}", c.logs());
    let a = r.address().unwrap();
    (ns, a)
}

fn ping_ok(ns: &NetNs, to: Ipv4Addr) -> bool {
    ping(ns, &format!("-c 2 -i 0.2 -W 2 {to}")).contains(" 2 received")
}

#[test]
fn nodes_claim_distinct_blocks_learn_each_other_and_follow_a_join_and_a_removal() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-3", 4);
    let etcd = Etcd::start(&c.node("etcd").ns, ETCD_HOST, 23790, &c.dir.join("etcd")).unwrap();
    for n in ["n0", "n1", "n2"] {
        start(&mut c, n, &etcd);
    }
    let owned = blocks(&c, "n0");
    assert_eq!(owned.len(), 3, "{owned:?}");
    let cidrs: BTreeSet<&String> = owned.iter().map(|(b, _)| b).collect();
    assert_eq!(cidrs.len(), 3, "a block twice: {owned:?}");
    let owners: BTreeSet<&String> = owned.iter().map(|(_, n)| n).collect();
    assert_eq!(owners.len(), 3, "{owned:?}");
    // `ipipd nodes` shows them up.
    let out = c
        .node("n0")
        .ipipd(&["nodes", "--config", &c.config_path("n0"), "-o", "json"])
        .unwrap();
    let nodes: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    assert!(
        nodes.as_array().unwrap().iter().all(|n| n["alive"] == true),
        "{nodes}"
    );

    // Pods on every node reach each other across all of them.
    let pods: Vec<(NetNs, Ipv4Addr)> = ["n0", "n1", "n2"]
        .iter()
        .map(|n| pod(&c, n, &format!("p{n}")))
        .collect();
    for (i, (ns, _)) in pods.iter().enumerate() {
        for (j, (_, to)) in pods.iter().enumerate() {
            if i != j {
                assert!(ping_ok(ns, *to), "pod {i} → pod {j} ({to})\n{}", c.logs());
            }
        }
    }

    // A fourth node joins: every node learns it, no file changes.
    start(&mut c, "n3", &etcd);
    let (p3, a3) = pod(&c, "n3", "pn3");
    let b3 = blocks(&c, "n0")
        .into_iter()
        .find(|(_, n)| n == "n3")
        .map(|(b, _)| b)
        .expect("n3 claimed a block");
    for n in ["n0", "n1", "n2"] {
        eventually(&format!("{n} routes n3's block {b3}"), || {
            route_prefixes(&c, n).contains(&b3)
        });
    }
    for (ns, _) in &pods {
        assert!(ping_ok(ns, a3), "→ n3's pod {a3}\n{}", c.logs());
    }
    assert!(ping_ok(&p3, pods[0].1));

    // n3 removed from the datastore (its daemon stopped): every node drops it.
    c.stop_daemon("n3").unwrap();
    let out = c
        .node("n0")
        .ipipd(&["node", "remove", "n3", "--config", &c.config_path("n0")])
        .unwrap();
    assert!(out.contains(&b3), "{out}");
    for n in ["n0", "n1", "n2"] {
        eventually(&format!("{n} drops n3's block"), || {
            !route_prefixes(&c, n).contains(&b3)
        });
    }
    assert!(!blocks(&c, "n0").iter().any(|(_, n)| n == "n3"));
    assert!(ping_ok(&pods[1].0, pods[2].1), "the rest still talk");
}

#[test]
fn racing_claimants_never_share_a_block() {
    if !require_root() {
        return;
    }
    let c = nodes("ds-race", 0);
    let etcd = Etcd::start(&c.node("etcd").ns, ETCD_HOST, 23790, &c.dir.join("etcd")).unwrap();
    let cfg = DatastoreCfg {
        endpoints: vec![etcd.url.clone()],
        prefix: PREFIX.into(),
        ca: None,
        cert: None,
        key: None,
    };
    // 16 blocks, 20 claimants at once, each with its own connection (from inside the etcd
    // host's namespace: the test's traffic stays in namespaces it made).
    let results = c
        .node("etcd")
        .ns
        .enter(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let s = Store::connect(&cfg).await.unwrap();
                s.ensure_pool(&Pool {
                    cidr: "10.244.0.0/22".parse().unwrap(),
                    block_size: 26,
                    nat_outgoing: false,
                })
                .await
                .unwrap();
                let tasks: Vec<_> = (0..20)
                    .map(|i| {
                        let cfg = cfg.clone();
                        tokio::spawn(async move {
                            let s = Store::connect(&cfg).await?;
                            s.claim_any(&format!("c{i}"), Duration::ZERO).await
                        })
                    })
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.unwrap());
                }
                (out, s.list().await.unwrap().0)
            })
        })
        .unwrap();
    let (results, view) = results;
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let lost: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    assert_eq!(won.len(), 16, "{results:?}");
    assert_eq!(
        won.iter().collect::<BTreeSet<_>>().len(),
        16,
        "a block twice"
    );
    assert_eq!(lost.len(), 4);
    assert!(lost.iter().all(|e| e.contains("no free block")), "{lost:?}");
    // The datastore agrees: 16 blocks, each with the owner its claimant was told.
    assert_eq!(view.blocks.len(), 16);
    for (i, r) in results.iter().enumerate() {
        if let Ok(b) = r {
            assert_eq!(*view.blocks[b], format!("c{i}"));
        }
    }
}

fn datastore_up(ns: &NetNs) -> Option<bool> {
    let (_, body) = metrics_get(ns, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with("ipipd_datastore_up "))
        .map(|l| l.ends_with(" 1"))
}

#[test]
fn forwarding_does_not_depend_on_etcd_and_a_node_added_meanwhile_is_learnt() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-out", 3);
    let mut etcd = Etcd::start(&c.node("etcd").ns, ETCD_HOST, 23790, &c.dir.join("etcd")).unwrap();
    start(&mut c, "n0", &etcd);
    start(&mut c, "n1", &etcd);
    let (p0, _) = pod(&c, "n0", "o0");
    let (_p1, a1) = pod(&c, "n1", "o1");
    assert!(ping_ok(&p0, a1));
    assert_eq!(datastore_up(&c.node("n0").ns), Some(true));

    // etcd away for 30 s under a 200/s ping: nothing lost, the metric says 0, /readyz why.
    let n0 = c.node("n0").ns.view();
    let go = AtomicBool::new(true);
    let keep_going = || go.load(Ordering::Relaxed);
    let (down_seen, readyz, pings) = std::thread::scope(|s| {
        let pinger = s.spawn(|| ping_while(&p0, a1, 200, "0.005", 100, &keep_going));
        std::thread::sleep(Duration::from_millis(300));
        etcd.stop();
        let mut down_seen = false;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            down_seen |= datastore_up(&n0) == Some(false);
            std::thread::sleep(Duration::from_millis(500));
        }
        let readyz = metrics_get(&n0, "/readyz").unwrap();
        etcd.resume().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        go.store(false, Ordering::Relaxed);
        (down_seen, readyz, pinger.join().unwrap().unwrap().0)
    });
    assert_eq!(readyz.0, 503, "{}", readyz.1);
    assert!(readyz.1.contains("the datastore"), "{}", readyz.1);
    assert!(
        down_seen,
        "ipipd_datastore_up never went to 0\n{}",
        c.logs()
    );
    assert_eq!(pings.lost(), 0, "{pings:?}\n{}", c.logs());
    eventually("datastore_up back to 1", || {
        datastore_up(&c.node("n0").ns) == Some(true)
    });

    // n0 cut off from etcd (a blackhole to it) while n2 joins; n0 learns n2 when it is back.
    c.node("n0")
        .ns
        .sh(&format!("ip route add blackhole {ETCD_HOST}/32"))
        .unwrap();
    eventually("n0 sees the datastore down", || {
        datastore_up(&c.node("n0").ns) == Some(false)
    });
    start(&mut c, "n2", &etcd);
    let (_p2, a2) = pod(&c, "n2", "o2");
    assert!(!ping_ok(&p0, a2), "n0 knew n2 while cut off?");
    c.node("n0")
        .ns
        .sh(&format!("ip route del blackhole {ETCD_HOST}/32"))
        .unwrap();
    eventually("n0 reaches n2's pod", || ping_ok(&p0, a2));
    assert!(ping_ok(&p0, a1), "n1's pod after the resync");
}

/// What a refused start must not leave: ipipd's tunnel device or pins.
fn nothing_attached(c: &Cluster, node: &str) {
    let links = c.node(node).ns.ip("-o link show").unwrap();
    assert!(!links.contains("ipipd0"), "{links}");
    let pins = c.bpffs.join(node);
    let n = std::fs::read_dir(&pins).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "pins left in {}", pins.display());
}

#[test]
fn a_taken_block_or_an_unreachable_etcd_refuse_a_first_start_and_a_full_node_claims_again() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-bad", 3);
    let mut etcd = Etcd::start(&c.node("etcd").ns, ETCD_HOST, 23790, &c.dir.join("etcd")).unwrap();
    // /30 blocks: two addresses each, so the third pod needs a second block.
    let cfg0 = config_with(&c, "n0", &etcd.url, "10.245.0.0/28", 30, "");
    c.start_daemon("n0", Some(cfg0.clone())).unwrap();
    let b0 = blocks(&c, "n0")[0].0.clone();

    // n1 asks for n0's block: refused, naming the owner; nothing attached.
    let taken = config_with(
        &c,
        "n1",
        &etcd.url,
        "10.245.0.0/28",
        30,
        &format!("\n[[block]]\ncidr = \"{b0}\"\n"),
    );
    let e = c.start_daemon("n1", Some(taken)).unwrap_err();
    assert!(
        format!("{e:#}").contains(&format!("block {b0} is owned by node n0")),
        "{e:#}"
    );
    nothing_attached(&c, "n1");
    // n2 with no etcd listening where its file says, on its first start: a clear error.
    let nowhere = config_with(
        &c,
        "n2",
        &format!("http://{ETCD_HOST}:23799"),
        "10.245.0.0/28",
        30,
        "",
    );
    let e = c.start_daemon("n2", Some(nowhere)).unwrap_err();
    assert!(
        format!("{e:#}").contains("etcd at http://172.31.242.10:23799"),
        "{e:#}"
    );
    nothing_attached(&c, "n2");

    // Three pods on n0: the third finds the /30 full and n0 claims another block.
    let pods: Vec<(NetNs, Ipv4Addr)> = (0..3).map(|i| pod(&c, "n0", &format!("f{i}"))).collect();
    let mine: Vec<String> = blocks(&c, "n0")
        .into_iter()
        .filter(|(_, n)| n == "n0")
        .map(|(b, _)| b)
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}\n{}", c.logs());
    let st = c.ipipd_json("n0", &["status"]).unwrap();
    assert_eq!(st["blocks"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(st["datastore"]["up"], true, "{st}");
    assert!(
        ping_ok(&pods[0].0, pods[2].1),
        "pod in the first block → pod in the second"
    );

    // A restart while etcd is away resumes from the last view: forwarding, its blocks.
    c.stop_daemon("n0").unwrap();
    etcd.stop();
    c.start_daemon("n0", Some(cfg0)).unwrap();
    let log = c.node("n0").daemon.as_ref().unwrap().log_text();
    assert!(log.contains("starting from the last known state"), "{log}");
    assert!(ping_ok(&pods[1].0, pods[2].1));
    let p = Plugin::new(&c, "n0").unwrap();
    let st = p.call("STATUS", "", None, "", &p.conf("1.1.0"), &[]);
    assert_eq!(st.error_code(), Some(50), "{st}");
    etcd.resume().unwrap();
    eventually("datastore_up back to 1", || {
        datastore_up(&c.node("n0").ns) == Some(true)
    });
}

#[test]
fn tls_with_client_certificates_admits_the_right_node_only() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-tls", 2);
    let pki = Pki::new(&c.dir.join("pki"), ETCD_HOST).unwrap();
    let etcd = Etcd::start_tls(
        &c.node("etcd").ns,
        ETCD_HOST,
        23790,
        &c.dir.join("etcd"),
        &pki,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let tls = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.ca.display(),
            cert.display(),
            key.display()
        )
    };
    // The [datastore] keys go before [[pool]]: put them in place of the prefix line's end.
    let with = |c: &Cluster, node: &str, t: String| {
        config(c, node, &etcd).replace(
            &format!("prefix = \"{PREFIX}\"\n"),
            &format!("prefix = \"{PREFIX}\"\n{t}"),
        )
    };
    let good = with(&c, "n0", tls(&pki.client_cert, &pki.client_key));
    c.start_daemon("n0", Some(good))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", etcd.log_text()));
    assert_eq!(blocks(&c, "n0").len(), 1);
    // A certificate from a CA etcd does not trust: refused at the handshake, nothing attached.
    let rogue = with(&c, "n1", tls(&pki.rogue_cert, &pki.rogue_key));
    let e = c.start_daemon("n1", Some(rogue)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("datastore") && msg.contains("etcd at https://"),
        "{msg}"
    );
    nothing_attached(&c, "n1");
    // No client certificate at all: refused too.
    let none = with(&c, "n1", format!("ca = \"{}\"\n", pki.ca.display()));
    let e = c.start_daemon("n1", Some(none)).unwrap_err();
    assert!(format!("{e:#}").contains("etcd at https://"), "{e:#}");
    nothing_attached(&c, "n1");
}

#[test]
fn the_etcd_leader_killed_under_traffic_changes_nothing_and_the_node_follows_the_survivors() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-3m", 3);
    let mut members =
        Etcd::cluster3(&c.node("etcd").ns, ETCD_HOST, 23791, &c.dir.join("etcd")).unwrap();
    let urls: Vec<String> = members.iter().map(|m| format!("\"{}\"", m.url)).collect();
    let first = members[0].url.clone();
    let cfg = |c: &Cluster, node: &str| {
        config_with(c, node, &first, "10.244.0.0/22", 26, "").replace(
            &format!("etcd = [\"{first}\"]"),
            &format!("etcd = [{}]", urls.join(", ")),
        )
    };
    for n in ["n0", "n1"] {
        let text = cfg(&c, n);
        c.start_daemon(n, Some(text)).unwrap();
    }
    let (p0, _) = pod(&c, "n0", "l0");
    let (_p1, a1) = pod(&c, "n1", "l1");
    let leader = members
        .iter()
        .position(Etcd::is_leader)
        .expect("a leader among the three");
    let go = AtomicBool::new(true);
    let keep_going = || go.load(Ordering::Relaxed);
    let pings = std::thread::scope(|s| {
        let pinger = s.spawn(|| ping_while(&p0, a1, 200, "0.005", 100, &keep_going));
        std::thread::sleep(Duration::from_millis(300));
        members[leader].kill();
        std::thread::sleep(Duration::from_secs(5));
        go.store(false, Ordering::Relaxed);
        pinger.join().unwrap().unwrap().0
    });
    assert_eq!(pings.lost(), 0, "{pings:?}");
    // The survivors elect a leader; a node joining through them is learnt by n0.
    let text = cfg(&c, "n2");
    c.start_daemon("n2", Some(text))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let (_p2, a2) = pod(&c, "n2", "l2");
    eventually("n0 reaches n2's pod through the survivors' view", || {
        ping_ok(&p0, a2)
    });
    eventually("n0's datastore up", || {
        datastore_up(&c.node("n0").ns) == Some(true)
    });
}

#[test]
fn a_node_that_changes_its_address_re_registers_and_its_peers_follow() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-addr", 2);
    let etcd = Etcd::start(&c.node("etcd").ns, ETCD_HOST, 23790, &c.dir.join("etcd")).unwrap();
    start(&mut c, "n0", &etcd);
    start(&mut c, "n1", &etcd);
    let (p0, _) = pod(&c, "n0", "a0");
    let (p1, a1) = pod(&c, "n1", "a1");
    assert!(ping_ok(&p0, a1));

    // n1 moves to another underlay address: its daemon restarted on the new one.
    let new = Ipv4Addr::new(172, 31, 242, 199);
    c.stop_daemon("n1").unwrap();
    let old = c.node("n1").spec.address;
    c.node("n1")
        .ns
        .sh(&format!(
            "ip addr del {old}/20 dev eth0; ip addr add {new}/20 dev eth0"
        ))
        .unwrap();
    c.node_mut("n1").spec.address = new;
    start(&mut c, "n1", &etcd);
    let out = c
        .node("n0")
        .ipipd(&["nodes", "--config", &c.config_path("n0"), "-o", "json"])
        .unwrap();
    assert!(out.contains(&new.to_string()), "{out}");
    // n0 follows: its peer is the new address, and the pods talk again.
    eventually("n0 routes n1 at its new address", || {
        route_prefixes(&c, "n0").contains(&format!("{new}/32"))
            && !route_prefixes(&c, "n0").contains(&format!("{old}/32"))
    });
    eventually("n0's pod reaches n1's pod again", || ping_ok(&p0, a1));
    assert!(ping_ok(&p1, pod_addr(&c, "n0")));
}

/// The address of the first endpoint on a node.
fn pod_addr(c: &Cluster, node: &str) -> Ipv4Addr {
    let v = c.ipipd_json(node, &["endpoints"]).unwrap();
    v[0]["address"].as_str().unwrap().parse().unwrap()
}

/// A metric of a node's /metrics, by its name and labels as printed.
fn metric(ns: &NetNs, name: &str) -> Option<f64> {
    let (_, body) = metrics_get(ns, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The store's blocks and their owners, as etcd has them.
fn store_blocks(c: &Cluster, node: &str) -> BTreeSet<(String, String)> {
    blocks(c, node).into_iter().collect()
}

/// Pings at 200/s from each (pod, address) pair while `during` runs and for `after` more; the
/// pings lost on each.
fn pinging<T>(
    pairs: &[(&NetNs, Ipv4Addr)],
    after: Duration,
    during: impl FnOnce() -> T,
) -> (T, Vec<ipipd_tests::traffic::Pings>) {
    let go = AtomicBool::new(true);
    let keep_going = || go.load(Ordering::Relaxed);
    std::thread::scope(|s| {
        let pingers: Vec<_> = pairs
            .iter()
            .map(|(ns, to)| s.spawn(|| ping_while(ns, *to, 200, "0.005", 100, &keep_going)))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let r = during();
        std::thread::sleep(after);
        go.store(false, Ordering::Relaxed);
        let pings = pingers
            .into_iter()
            .map(|p| p.join().unwrap().unwrap().0)
            .collect();
        (r, pings)
    })
}

/// After a reset, every node forwards on its last view merged with the store's for the grace;
/// the pings go on past its end.
fn past_the_grace() -> Duration {
    GRACE + Duration::from_secs(3)
}

/// Within one lease TTL of the store's return, the store holds `want` again.
fn blocks_back_within_the_lease(c: &Cluster, want: &BTreeSet<(String, String)>) {
    ipipd_tests::eventually_within(
        "every live node's blocks back in the store",
        Duration::from_secs(LEASE_TTL as u64),
        || {
            let now = store_blocks(c, "n0");
            want.is_subset(&now)
        },
    );
}

fn resets(c: &Cluster, node: &str) -> f64 {
    metric(&c.node(node).ns, "ipipd_datastore_reset_total").unwrap_or(-1.0)
}

#[test]
fn a_store_emptied_under_traffic_loses_no_packet_and_every_node_puts_its_blocks_back() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-wipe", 4);
    let mut etcd = Etcd::start(&c.node("etcd").ns, ETCD_HOST, 23790, &c.dir.join("etcd")).unwrap();
    for n in ["n0", "n1", "n2"] {
        start(&mut c, n, &etcd);
    }
    let (p0, a0) = pod(&c, "n0", "w0");
    let (_p1, a1) = pod(&c, "n1", "w1");
    let (p2, a2) = pod(&c, "n2", "w2");
    let before = store_blocks(&c, "n0");
    assert_eq!(before.len(), 3, "{before:?}");

    // etcd loses its disk under traffic both ways across the nodes.
    let (_, pings) = pinging(&[(&p0, a1), (&p2, a0), (&p0, a2)], past_the_grace(), || {
        etcd.wipe().unwrap();
        blocks_back_within_the_lease(&c, &before);
    });
    for p in &pings {
        assert_eq!(p.lost(), 0, "{pings:?}\n{}", c.logs());
    }
    // Every node said so: the log, the metric, /readyz.
    for n in ["n0", "n1", "n2"] {
        assert!(resets(&c, n) >= 1.0, "{n}: {}\n{}", resets(&c, n), c.logs());
        let (_, readyz) = metrics_get(&c.node(n).ns, "/readyz").unwrap();
        assert!(readyz.contains("datastore reset"), "{n}: {readyz}");
        let log = c.node(n).daemon.as_ref().unwrap().log_text();
        assert!(log.contains("the store forgot"), "{n}: {log}");
    }
    assert_eq!(store_blocks(&c, "n0"), before, "after the grace");

    // A newcomer gets a free block, none of those the live nodes hold.
    start(&mut c, "n3", &etcd);
    let (p3, a3) = pod(&c, "n3", "w3");
    let b3: Vec<String> = blocks(&c, "n0")
        .into_iter()
        .filter(|(_, n)| n == "n3")
        .map(|(b, _)| b)
        .collect();
    assert_eq!(b3.len(), 1, "{b3:?}");
    assert!(
        before.iter().all(|(b, _)| *b != b3[0]),
        "{b3:?} in {before:?}"
    );
    assert!(ping_ok(&p3, a0), "n3's pod → n0's pod\n{}", c.logs());
    assert!(ping_ok(&p0, a3));
}

#[test]
fn a_store_restored_from_an_older_snapshot_loses_no_packet_and_the_late_node_puts_its_block_back() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-snap", 3);
    let mut etcd = Etcd::start(&c.node("etcd").ns, ETCD_HOST, 23790, &c.dir.join("etcd")).unwrap();
    start(&mut c, "n0", &etcd);
    start(&mut c, "n1", &etcd);
    let (p0, a0) = pod(&c, "n0", "s0");
    let (_p1, a1) = pod(&c, "n1", "s1");
    let snapshot = c.dir.join("etcd-snapshot.db");
    etcd.snapshot_save(&snapshot).unwrap();

    // n2 joins after the snapshot: the restore forgets it.
    start(&mut c, "n2", &etcd);
    let (p2, a2) = pod(&c, "n2", "s2");
    let before = store_blocks(&c, "n0");
    assert_eq!(before.len(), 3, "{before:?}");
    let (_, pings) = pinging(&[(&p0, a2), (&p2, a1), (&p2, a0)], past_the_grace(), || {
        etcd.restore(&snapshot).unwrap();
        blocks_back_within_the_lease(&c, &before);
    });
    for p in &pings {
        assert_eq!(p.lost(), 0, "{pings:?}\n{}", c.logs());
    }
    // The late node found the store had forgotten, and the others too.
    let log = c.node("n2").daemon.as_ref().unwrap().log_text();
    assert!(log.contains("the store forgot"), "{log}");
    for n in ["n0", "n1", "n2"] {
        assert!(resets(&c, n) >= 1.0, "{n}\n{}", c.logs());
    }
    let out = c
        .node("n0")
        .ipipd(&["nodes", "--config", &c.config_path("n0"), "-o", "json"])
        .unwrap();
    assert!(out.contains("\"n2\""), "{out}");
    assert_eq!(store_blocks(&c, "n0"), before);
}

/// `ipipd status -o json` of a node's daemon: its datastore part.
fn ds_status(c: &Cluster, node: &str) -> Value {
    c.ipipd_json(node, &["status"]).unwrap()["datastore"].clone()
}

#[test]
fn a_block_two_nodes_hold_is_reported_on_both_and_nothing_flaps() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-conflict", 2);
    let etcd = Etcd::start(&c.node("etcd").ns, ETCD_HOST, 23790, &c.dir.join("etcd")).unwrap();
    start(&mut c, "n0", &etcd);
    start(&mut c, "n1", &etcd);
    let (x0, ax0) = pod(&c, "n0", "x0");
    let (_y0, ay0) = pod(&c, "n0", "y0");
    let (_x1, ax1) = pod(&c, "n1", "x1");
    let b0 = blocks(&c, "n0")
        .into_iter()
        .find(|(_, n)| n == "n0")
        .unwrap()
        .0;
    let b0net: dataplane_user::net::Ipv4Net = b0.parse().unwrap();
    assert!(b0net.contains(ax0) && b0net.contains(ay0));

    // The store gives n0's block, which n0's pods use, to n1 (as a stale snapshot can).
    let key = format!("{PREFIX}/blocks/{}", b0.replace(['.', '/'], "-"));
    etcd.ctl(&["put", &key, &format!(r#"{{"cidr":"{b0}","node":"n1"}}"#)])
        .unwrap();
    let conflicts = |n: &str| metric(&c.node(n).ns, "ipipd_datastore_conflicts");
    for n in ["n0", "n1"] {
        eventually(&format!("{n} reports the conflict"), || {
            conflicts(n) == Some(1.0)
        });
        let (_, readyz) = metrics_get(&c.node(n).ns, "/readyz").unwrap();
        let line =
            format!("datastore conflict: block {b0} is node n1's in the store, also held by n0");
        assert!(readyz.contains(&line), "{n}: {readyz}");
        let st = ds_status(&c, n);
        assert_eq!(st["conflicts"][0]["block"], b0.as_str(), "{n}: {st}");
    }
    let marked: Value = serde_json::from_str(
        &c.node("n1")
            .ipipd(&["blocks", "--config", &c.config_path("n1"), "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let row = marked
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cidr"] == b0.as_str())
        .unwrap();
    assert_eq!(row["node"], "n1", "{marked}");
    assert_eq!(row["disputed_by"], serde_json::json!(["n0"]), "{marked}");

    // The loser keeps forwarding its pods; a new pod gets an address from another block.
    assert!(
        ping_ok(&x0, ay0),
        "n0's pods in the disputed block\n{}",
        c.logs()
    );
    let (z0, az0) = pod(&c, "n0", "z0");
    assert!(!b0net.contains(az0), "{az0} from the disputed {b0}");
    assert!(ping_ok(&z0, ax1), "n0's new pod → n1's pod\n{}", c.logs());

    // A minute: the same report, the same routes, the same store, no repeated log line.
    let routes0 = route_prefixes(&c, "n0");
    let routes1 = route_prefixes(&c, "n1");
    let store = store_blocks(&c, "n0");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        for n in ["n0", "n1"] {
            assert_eq!(conflicts(n), Some(1.0), "{n} at {:?}", t.elapsed());
        }
        assert_eq!(route_prefixes(&c, "n0"), routes0, "n0 at {:?}", t.elapsed());
        assert_eq!(route_prefixes(&c, "n1"), routes1, "n1 at {:?}", t.elapsed());
        assert_eq!(store_blocks(&c, "n0"), store, "at {:?}", t.elapsed());
        std::thread::sleep(Duration::from_secs(2));
    }
    let log = c.node("n0").daemon.as_ref().unwrap().log_text();
    assert_eq!(
        log.matches(&format!("conflict: block {b0}")).count(),
        1,
        "{log}"
    );

    // Its pods gone from the block, n0 gives it up: the conflict is over on both.
    let p = Plugin::new(&c, "n0").unwrap();
    for id in ["x0", "y0"] {
        let r = p.call("DEL", id, None, "eth0", &p.conf("1.0.0"), &[]);
        assert!(r.ok(), "DEL {id}: {r}");
    }
    for n in ["n0", "n1"] {
        eventually(&format!("{n}: the conflict is over"), || {
            conflicts(n) == Some(0.0)
        });
    }
    assert!(
        !store_blocks(&c, "n0").is_empty() && marked_by(&c, &b0).is_empty(),
        "{:?}",
        marked_by(&c, &b0)
    );
}

/// The nodes `ipipd blocks` says dispute `block`.
fn marked_by(c: &Cluster, block: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(
        &c.node("n0")
            .ipipd(&["blocks", "--config", &c.config_path("n0"), "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["cidr"] == block)
        .flat_map(|r| r["disputed_by"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// One config for every node, as a DaemonSet's ConfigMap: no name (each daemon has its
/// `NODE_NAME`), no uplink, no address (autodetected, first-found), no pin directory; the
/// datastore and the pool. Three nodes start from the identical file and their pods talk.
#[test]
fn three_nodes_run_from_one_identical_config_and_their_pods_talk() {
    if !require_root() {
        return;
    }
    let mut c = nodes("ds-one", 3);
    let etcd = Etcd::start(&c.node("etcd").ns, ETCD_HOST, 23790, &c.dir.join("etcd")).unwrap();
    let shared = format!(
        "[node]\n\n[datastore]\netcd = [\"{}\"]\nprefix = \"{PREFIX}\"\n\n[[pool]]\ncidr = \"10.244.0.0/22\"\nblock_size = 26\n",
        etcd.url
    );
    for n in ["n0", "n1", "n2"] {
        c.start_daemon_shared(n, &shared)
            .unwrap_or_else(|e| panic!("{n}: {e:#}\n{}", etcd.log_text()));
        let st = c.ipipd_json(n, &["status"]).unwrap();
        let found = st["found"].as_str().unwrap_or_default();
        assert!(
            found.contains("$NODE_NAME") && found.contains("autodetect first-found"),
            "{st}"
        );
        assert_eq!(st["uplink"], "eth0", "{st}");
        assert_eq!(st["node_ip"], c.node(n).spec.address.to_string(), "{st}");
    }
    let owners: BTreeSet<String> = blocks(&c, "n0").into_iter().map(|(_, n)| n).collect();
    assert_eq!(owners, ["n0", "n1", "n2"].map(String::from).into());
    let pods: Vec<(NetNs, Ipv4Addr)> = ["n0", "n1", "n2"]
        .iter()
        .map(|n| pod(&c, n, &format!("one{n}")))
        .collect();
    for (i, (ns, _)) in pods.iter().enumerate() {
        for (j, (_, to)) in pods.iter().enumerate() {
            if i != j {
                assert!(ping_ok(ns, *to), "pod {i} → pod {j} ({to})\n{}", c.logs());
            }
        }
    }
}
