//! ipipd following Calico's own datastore (`[datastore] kind = "calico-etcd"`): Debian's etcd
//! filled with the seed's cluster as Calico keeps it (nodes, the pool, block affinities and
//! allocation blocks, workload endpoints; `ipipd_tests::calico`), ipipd on the node
//! namespaces. It forwards on what Calico says and writes nothing; a Calico node's kernel path
//! (tunl0, BIRD's and Felix's routes) is taken over without a lost ping, and given back by
//! `ipipd teardown`.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ipipd_tests::{
    NetNs,
    calico::{CalicoStore, MASTER, WORKER},
    cluster::{Cluster, NodeSpec, PodSpec},
    counters::ping,
    etcd::Etcd,
    metrics_get, require_root,
    traffic::{Capture, ipv4_frames, ping_while},
};
use serde_json::Value;

const ETCD_HOST: Ipv4Addr = Ipv4Addr::new(172, 31, 242, 10);
const ETCD_PORT: u16 = 23800;

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The seed's pods: three on the worker (its route table's), one on the master.
const WORKER_PODS: [(&str, &str, &str, &str); 3] = [
    (
        "kube-system",
        "kube-dns-545bc4bfd4-c9vsc",
        "cali513e7f6c556",
        "192.168.83.129",
    ),
    (
        "sock-shop",
        "carts-db-787f4b7896-v8qbn",
        "cali85f45a254f4",
        "192.168.83.130",
    ),
    (
        "sock-shop",
        "carts-794f6cc876-8lfj8",
        "cali65bda6d8589",
        "192.168.83.131",
    ),
];
const MASTER_POD: (&str, &str, &str, &str) = (
    "sock-shop",
    "front-end-6f447d9d8-x2k5p",
    "calia43b8d0c2f1",
    "192.168.179.1",
);

/// The seed's two nodes (harness names `node` and `master`) with their pods, the etcd host,
/// and `extra` more.
fn cluster(tag: &str, extra: Vec<NodeSpec>) -> Cluster {
    let spec = |name: &str, addr: &str, block: &str, pods: &[(&str, &str, &str, &str)]| NodeSpec {
        name: name.into(),
        address: a(addr),
        prefix_len: 20,
        block: block.into(),
        pods: pods
            .iter()
            .map(|p| PodSpec {
                address: a(p.3),
                interface: p.2.into(),
            })
            .collect(),
        mtu: 1500,
        bridge: 0,
        setup: Vec::new(),
        peer: true,
    };
    let mut specs = vec![
        NodeSpec::host("etcd", ETCD_HOST, 20),
        spec(
            "master",
            "172.31.242.157",
            "192.168.179.0/26",
            &[MASTER_POD],
        ),
        spec("node", "172.31.242.156", "192.168.83.128/26", &WORKER_PODS),
    ];
    specs.extend(extra);
    Cluster::new(tag, &specs).unwrap()
}

fn etcd(c: &Cluster) -> Etcd {
    Etcd::start(
        &c.node("etcd").ns,
        ETCD_HOST,
        ETCD_PORT,
        &c.dir.join("etcd"),
    )
    .unwrap()
}

/// The seed's store: both nodes, the pool, the blocks, every pod's workload endpoint.
fn fill_seed(store: &CalicoStore) {
    let mut pods: Vec<(&str, &str, &str, &str, Ipv4Addr)> = WORKER_PODS
        .iter()
        .map(|p| (p.0, p.1, WORKER, p.2, a(p.3)))
        .collect();
    pods.push((
        MASTER_POD.0,
        MASTER_POD.1,
        MASTER,
        MASTER_POD.2,
        a(MASTER_POD.3),
    ));
    store.seed(&pods).unwrap();
}

/// A node's file in calico-etcd mode: its Calico name; `[node] extra` (uplink, address …).
fn config(c: &Cluster, node: &str, calico_name: &str, etcd: &Etcd, extra: &str) -> String {
    format!(
        "[node]\nname = \"{calico_name}\"\npin_dir = \"{pins}\"\n{extra}\n\n\
         [datastore]\nkind = \"calico-etcd\"\netcd = [\"{url}\"]\n",
        pins = c.bpffs.join(node).display(),
        url = etcd.url,
    )
}

fn start(c: &mut Cluster, node: &str, calico_name: &str, etcd: &Etcd, extra: &str) {
    let cfg = config(c, node, calico_name, etcd, extra);
    c.start_daemon(node, Some(cfg))
        .unwrap_or_else(|e| panic!("{node}: {e:#}\n{}\n{}", c.logs(), etcd.log_text()));
}

/// A node's routes map: (prefix, kind, the interface or peer node it names).
fn routes(c: &Cluster, node: &str) -> BTreeSet<(String, String, String)> {
    let ns = &c.node(node).ns;
    c.ipipd_json(node, &["routes"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let via = match (r["ifindex"].as_u64(), r["node"].as_str()) {
                (Some(i), _) => ifname_of(ns, i as u32),
                (None, Some(n)) => n.to_string(),
                _ => String::new(),
            };
            (
                r["prefix"].as_str().unwrap().to_string(),
                r["kind"].as_str().unwrap().to_string(),
                via,
            )
        })
        .collect()
}

fn route_flags(c: &Cluster, node: &str, prefix: &str) -> Vec<String> {
    c.ipipd_json(node, &["routes"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == prefix)
        .map(|r| {
            r["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn ifname_of(ns: &NetNs, index: u32) -> String {
    let out = ns.ip("-o link show").unwrap();
    out.lines()
        .find(|l| l.starts_with(&format!("{index}: ")))
        .and_then(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .unwrap_or_else(|| format!("#{index}"))
}

fn eventually(what: &str, f: impl FnMut() -> bool) {
    ipipd_tests::eventually_within(what, Duration::from_secs(30), f)
}

fn ping_ok(ns: &NetNs, to: Ipv4Addr) -> bool {
    ping(ns, &format!("-c 2 -i 0.2 -W 2 {to}")).contains(" 2 received")
}

/// The seed's route table of the worker, as ipipd's routes map holds it.
fn seed_table() -> BTreeSet<(String, String, String)> {
    let r = |p: &str, k: &str, v: &str| (p.to_string(), k.to_string(), v.to_string());
    BTreeSet::from([
        // 192.168.179.0/26 via 172.31.242.157 dev tunl0 onlink, and the peer itself
        r("192.168.179.0/26", "remote_block", "172.31.242.157"),
        r("172.31.242.157/32", "peer_node", "172.31.242.157"),
        // blackhole 192.168.83.128/26
        r("192.168.83.128/26", "own_block", ""),
        // local 192.168.83.128 dev tunl0 (table local): the tunnel address
        r("192.168.83.128/32", "tunnel_address", ""),
        // 192.168.83.129/32 dev cali513e7f6c556 scope link, …
        r("192.168.83.129/32", "local_endpoint", "cali513e7f6c556"),
        r("192.168.83.130/32", "local_endpoint", "cali85f45a254f4"),
        r("192.168.83.131/32", "local_endpoint", "cali65bda6d8589"),
    ])
}

#[test]
fn the_seeds_calico_store_drives_both_nodes_and_nothing_is_written() {
    if !require_root() {
        return;
    }
    let mut c = cluster("cal-seed", Vec::new());
    let etcd = etcd(&c);
    let store = CalicoStore::new(&etcd);
    fill_seed(&store);
    let before = store.revision().unwrap();
    // No uplink or address in the files: autodetected, and held to Calico's node records.
    start(&mut c, "master", MASTER, &etcd, "");
    start(&mut c, "node", WORKER, &etcd, "");

    // Every worker pod and the master's pod reach each other.
    let master_pod = c.node("master").pods[0].ns.view();
    for p in &c.node("node").pods {
        assert!(
            ping_ok(&p.ns, a(MASTER_POD.3)),
            "{} → master's pod\n{}",
            p.spec.address,
            c.logs()
        );
        assert!(ping_ok(&master_pod, p.spec.address), "→ {}", p.spec.address);
    }
    // The routes map is the seed's route table.
    assert_eq!(routes(&c, "node"), seed_table(), "{}", c.logs());

    // The node's own traffic to remote pods leaves from its tunnel address, as from tunl0's,
    // and what comes back to that address reaches the node.
    let worker = &c.node("node").ns;
    let got = worker.ip("route get 192.168.179.1").unwrap();
    assert!(got.contains("src 192.168.83.128"), "{got}");
    assert!(
        ping_ok(worker, a(MASTER_POD.3)),
        "worker host → master's pod"
    );
    assert!(
        ping_ok(&master_pod, a("192.168.83.128")),
        "master's pod → worker's tunnel address"
    );
    let addrs = worker.ip("-4 -o addr show dev ipipd0").unwrap();
    assert!(addrs.contains("inet 192.168.83.128/32"), "{addrs}");

    // What it read, shown.
    let st = c.ipipd_json("node", &["status"]).unwrap();
    assert_eq!(st["tunnel_address"], "192.168.83.128", "{st}");
    assert_eq!(st["pools"][0]["cidr"], "192.168.0.0/16", "{st}");
    assert_eq!(st["pools"][0]["calico"]["ipip_mode"], "Always", "{st}");
    assert_eq!(
        st["pools"][0]["calico"]["name"], "default-ipv4-ippool",
        "{st}"
    );
    assert_eq!(st["pools"][0]["nat_outgoing"], true, "{st}");
    assert!(
        st["datastore"]["source"]
            .as_str()
            .unwrap()
            .starts_with("calico-etcd "),
        "{st}"
    );
    let (code, body) = metrics_get(worker, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("datastore calico-etcd {} (/calico): up", etcd.url)),
        "{body}"
    );
    let out = c
        .node("node")
        .ipipd(&["nodes", "--config", &c.config_path("node"), "-o", "json"])
        .unwrap();
    let nodes: Value = serde_json::from_str(&out).unwrap();
    let worker_row = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == WORKER)
        .unwrap_or_else(|| panic!("{nodes}"));
    assert_eq!(worker_row["address"], "172.31.242.156");
    assert_eq!(worker_row["tunnel_address"], "192.168.83.128");
    assert_eq!(worker_row["blocks"][0], "192.168.83.128/26");
    assert_eq!(worker_row["pods"], 3);
    let out = c
        .node("node")
        .ipipd(&["pool", "list", "--config", &c.config_path("node")])
        .unwrap();
    assert!(out.contains("Always (default-ipv4-ippool)"), "{out}");
    // ipipd's own writes are refused here: the store is Calico's.
    let err = c
        .node("node")
        .ipipd(&[
            "pool",
            "add",
            "--cidr",
            "10.0.0.0/16",
            "--config",
            &c.config_path("node"),
        ])
        .unwrap_err();
    assert!(format!("{err:#}").contains("calicoctl"), "{err:#}");

    // Not one key under /calico was written: the store's revision is the one it had.
    assert_eq!(
        store.revision().unwrap(),
        before,
        "{}",
        store.dump().unwrap()
    );
    let log = c.logs();
    assert!(!log.contains("left out"), "{log}");
}

#[test]
fn a_pod_is_followed_from_its_workload_endpoint_and_its_veth_and_goes_with_its_endpoint() {
    if !require_root() {
        return;
    }
    let mut c = cluster("cal-wep", Vec::new());
    let etcd = etcd(&c);
    let store = CalicoStore::new(&etcd);
    fill_seed(&store);
    start(&mut c, "master", MASTER, &etcd, "uplink = \"eth0\"");
    start(&mut c, "node", WORKER, &etcd, "uplink = \"eth0\"");
    let master_pod = c.node("master").pods[0].ns.view();

    // Until its address is in the worker's map, then reachable: how long after the later of
    // the endpoint's write and the veth's creation (a bound only for a failure, the time is
    // printed).
    let in_map = |c: &Cluster, addr: &str| {
        routes(c, "node")
            .iter()
            .any(|(p, k, _)| p == &format!("{addr}/32") && k == "local_endpoint")
    };
    let wait = |c: &Cluster, addr: &str, from: Instant| -> Duration {
        eventually(&format!("{addr} in the worker's map"), || in_map(c, addr));
        from.elapsed()
    };
    // The endpoint first, then the veth (calico-cni's order is the other one).
    let k1 = store
        .workload(
            "default",
            "late-veth",
            WORKER,
            "cali0a1b2c3d4e5",
            a("192.168.83.140"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!in_map(&c, "192.168.83.140"), "no veth yet");
    let t = Instant::now();
    c.node_mut("node")
        .add_pod(
            "cal-wep-p",
            PodSpec {
                address: a("192.168.83.140"),
                interface: "cali0a1b2c3d4e5".into(),
            },
        )
        .unwrap();
    let took1 = wait(&c, "192.168.83.140", t);
    // The veth first, then the endpoint.
    c.node_mut("node")
        .add_pod(
            "cal-wep-p",
            PodSpec {
                address: a("192.168.83.141"),
                interface: "cali5f6e7d8c9b0".into(),
            },
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!in_map(&c, "192.168.83.141"), "no endpoint yet");
    let t = Instant::now();
    let k2 = store
        .workload(
            "default",
            "late-wep",
            WORKER,
            "cali5f6e7d8c9b0",
            a("192.168.83.141"),
        )
        .unwrap();
    let took2 = wait(&c, "192.168.83.141", t);
    println!(
        "in the map after the later of endpoint and veth: {} ms (veth last), {} ms (endpoint last)",
        took1.as_millis(),
        took2.as_millis()
    );
    for addr in ["192.168.83.140", "192.168.83.141"] {
        assert!(
            ping_ok(&master_pod, a(addr)),
            "master's pod → {addr}\n{}",
            c.logs()
        );
        let pod = c.node("node").pod(a(addr)).ns.view();
        assert!(ping_ok(&pod, a(MASTER_POD.3)), "{addr} → master's pod");
    }
    let eps = c.ipipd_json("node", &["endpoints"]).unwrap();
    assert!(
        eps.as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == "192.168.83.141" && e["pod"] == "default/late-wep"),
        "{eps}"
    );

    // Its endpoint deleted: the pod is gone from the map, and from the other node's reach.
    store.delete(&k1).unwrap();
    eventually("192.168.83.140 leaves the map", || {
        !in_map(&c, "192.168.83.140")
    });
    assert!(!ping_ok(&master_pod, a("192.168.83.140")));
    assert!(ping_ok(&master_pod, a("192.168.83.141")), "the other stays");
    // A malformed endpoint is named in the log and changes nothing.
    store
        .put(
            &store.workload_key("default", WORKER, "broken"),
            r#"{"spec":{"node":"izj6c3cqwumhn5jov661z7z","interfaceName":"cali1","ipNetworks":["192.168.83.0/24"]}}"#,
        )
        .unwrap();
    eventually("the malformed endpoint is logged", || {
        c.logs().contains("is not a /32")
    });
    // And one this node cannot take (outside its blocks) is left out, saying why.
    store
        .workload(
            "default",
            "elsewhere",
            WORKER,
            "cali9e9e9e9e9e9",
            a("192.168.179.50"),
        )
        .unwrap();
    eventually("the endpoint outside the node's blocks is left out", || {
        c.logs().contains("is in no block of this node")
    });
    let st = c.ipipd_json("node", &["status"]).unwrap();
    assert!(st["skipped"].to_string().contains("elsewhere"), "{st}");
    assert!(
        ping_ok(&master_pod, a("192.168.83.141")),
        "still forwarding"
    );
    store.delete(&k2).unwrap();
    eventually("192.168.83.141 leaves the map", || {
        !in_map(&c, "192.168.83.141")
    });
}

#[test]
fn a_new_node_is_learnt_a_pending_affinity_is_not_and_a_pool_turned_cross_subnet_goes_plain() {
    if !require_root() {
        return;
    }
    let n3 = NodeSpec {
        name: "n3".into(),
        address: a("172.31.242.158"),
        prefix_len: 20,
        block: "192.168.7.0/26".into(),
        pods: vec![PodSpec {
            address: a("192.168.7.1"),
            interface: "cali7c7c7c7c7c7".into(),
        }],
        mtu: 1500,
        bridge: 0,
        setup: Vec::new(),
        peer: true,
    };
    let mut c = cluster("cal-3", vec![n3]);
    let etcd = etcd(&c);
    let store = CalicoStore::new(&etcd);
    fill_seed(&store);
    start(&mut c, "master", MASTER, &etcd, "uplink = \"eth0\"");
    start(&mut c, "node", WORKER, &etcd, "uplink = \"eth0\"");

    // A third node: calico-node's startup registers it, calico-ipam gives it a block,
    // calico-cni its pod; ipipd on it.
    store
        .node("node-3", "172.31.242.158/20", Some(a("192.168.7.0")))
        .unwrap();
    store
        .affinity("node-3", "192.168.7.0/26", "confirmed")
        .unwrap();
    store
        .allocation_block("node-3", "192.168.7.0/26", 2)
        .unwrap();
    store
        .workload(
            "default",
            "third",
            "node-3",
            "cali7c7c7c7c7c7",
            a("192.168.7.1"),
        )
        .unwrap();
    start(&mut c, "n3", "node-3", &etcd, "uplink = \"eth0\"");
    for n in ["node", "master"] {
        eventually(&format!("{n} routes node-3's block"), || {
            routes(&c, n).contains(&(
                "192.168.7.0/26".into(),
                "remote_block".into(),
                "172.31.242.158".into(),
            ))
        });
    }
    let worker_pod = c.node("node").pods[0].ns.view();
    let third_pod = c.node("n3").pods[0].ns.view();
    assert!(ping_ok(&worker_pod, a("192.168.7.1")), "{}", c.logs());
    assert!(ping_ok(&third_pod, a(MASTER_POD.3)), "{}", c.logs());

    // A pending affinity is not programmed; a confirmed one written after it is.
    store
        .affinity("node-3", "192.168.8.0/26", "pending")
        .unwrap();
    store
        .affinity("node-3", "192.168.9.0/26", "confirmed")
        .unwrap();
    let has = |c: &Cluster, p: &str| routes(c, "node").iter().any(|r| r.0 == p);
    eventually("the confirmed affinity is programmed", || {
        has(&c, "192.168.9.0/26")
    });
    assert!(
        !has(&c, "192.168.8.0/26"),
        "a pending affinity was programmed"
    );
    store
        .affinity("node-3", "192.168.8.0/26", "confirmed")
        .unwrap();
    eventually("the affinity, once confirmed, is programmed", || {
        has(&c, "192.168.8.0/26")
    });
    store
        .delete(&store.affinity_key("node-3", "192.168.9.0/26"))
        .unwrap();
    eventually("a released block goes", || !has(&c, "192.168.9.0/26"));

    // The pool turned CrossSubnet: every node shares the underlay's /20, so pod traffic
    // between them goes plain; back to Always, encapsulated again.
    let pod_to_pod = |c: &Cluster| -> (usize, usize) {
        let cap = Capture::start(&c.underlay, "br0", &c.dir, "icmp or ip proto 4").unwrap();
        assert!(ping_ok(&worker_pod, a(MASTER_POD.3)), "{}", c.logs());
        let frames = ipv4_frames(&cap.finish().unwrap());
        let plain = frames
            .iter()
            .filter(|f| f.proto == 1 && f.src == a("192.168.83.129"))
            .count();
        let ipip = frames
            .iter()
            .filter(|f| {
                f.proto == 4
                    && f.inner
                        .as_ref()
                        .is_some_and(|i| i.src == a("192.168.83.129"))
            })
            .count();
        (plain, ipip)
    };
    let (plain, ipip) = pod_to_pod(&c);
    assert!(
        plain == 0 && ipip >= 2,
        "Always: plain {plain}, ipip {ipip}"
    );
    store
        .pool("default-ipv4-ippool", "192.168.0.0/16", "CrossSubnet", true)
        .unwrap();
    for n in ["node", "master"] {
        eventually(&format!("{n} routes the peer's block plain"), || {
            let f = route_flags(&c, n, peer_block(n));
            f.contains(&"same-subnet".to_string()) && !f.contains(&"encap".to_string())
        });
    }
    let (plain, ipip) = pod_to_pod(&c);
    assert!(
        plain >= 2 && ipip == 0,
        "CrossSubnet: plain {plain}, ipip {ipip}"
    );
    store
        .pool("default-ipv4-ippool", "192.168.0.0/16", "Always", true)
        .unwrap();
    for n in ["node", "master"] {
        eventually(&format!("{n} encapsulates again"), || {
            let f = route_flags(&c, n, peer_block(n));
            f.contains(&"encap".to_string())
        });
    }
    let (plain, ipip) = pod_to_pod(&c);
    assert!(
        plain == 0 && ipip >= 2,
        "Always again: plain {plain}, ipip {ipip}"
    );
}

/// The other node's block, as `node` routes it.
fn peer_block(node: &str) -> &'static str {
    if node == "node" {
        "192.168.179.0/26"
    } else {
        "192.168.83.128/26"
    }
}

#[test]
#[ignore = "needs the kernel's ipip module (Calico's tunl0); `cargo xtask vm` runs it"]
fn a_calico_nodes_kernel_path_is_taken_over_without_a_lost_ping_and_given_back() {
    if !require_root() {
        return;
    }
    assert!(
        std::path::Path::new("/sys/module/ipip").exists(),
        "the ipip module is not loaded: this test needs a kernel with ipip (cargo xtask vm)"
    );
    let mut c = cluster("cal-mig", Vec::new());
    let etcd = etcd(&c);
    let store = CalicoStore::new(&etcd);
    fill_seed(&store);
    // Both nodes as calico-node left them: tunl0 with the tunnel address, BIRD's routes.
    c.node("node")
        .calico_kernel_path(c.node("master"), a("192.168.83.128"))
        .unwrap();
    c.node("master")
        .calico_kernel_path(c.node("node"), a("192.168.179.0"))
        .unwrap();
    let tables = |c: &Cluster| {
        let ns = &c.node("node").ns;
        (
            ns.ip("-d route show table main").unwrap(),
            ns.ip("-d route show table local").unwrap(),
        )
    };
    let calico_tables = tables(&c);
    assert!(
        calico_tables.0.contains("proto bird"),
        "{}",
        calico_tables.0
    );
    let worker_pod = c.node("node").pods[0].ns.view();
    let master_pod = c.node("master").pods[0].ns.view();
    assert!(ping_ok(&worker_pod, a(MASTER_POD.3)), "Calico's own path");

    // Pods ping each other both ways at 100/s while calico-node's data plane is swapped for
    // ipipd's, one node after the other.
    let go = AtomicBool::new(true);
    let (w2m, m2w) = std::thread::scope(|s| {
        let w = s.spawn(|| {
            ping_while(&worker_pod, a(MASTER_POD.3), 50, "0.01", 200, &|| {
                go.load(Ordering::Relaxed)
            })
        });
        let m = s.spawn(|| {
            ping_while(&master_pod, a("192.168.83.129"), 50, "0.01", 200, &|| {
                go.load(Ordering::Relaxed)
            })
        });
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        start(&mut c, "node", WORKER, &etcd, "uplink = \"eth0\"");
        let worker_up = t0.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let master_from = t0.elapsed();
        start(&mut c, "master", MASTER, &etcd, "uplink = \"eth0\"");
        let master_up = t0.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        go.store(false, Ordering::Relaxed);
        println!(
            "ipipd on the worker from 1 s to {worker_up:?}, on the master from {master_from:?} to {master_up:?}"
        );
        (w.join().unwrap().unwrap(), m.join().unwrap().unwrap())
    });
    println!(
        "worker pod → master pod: {:?}; master pod → worker pod: {:?}",
        w2m.0, m2w.0
    );
    if w2m.0.sent != w2m.0.received || m2w.0.sent != m2w.0.received {
        for n in ["node", "master"] {
            println!(
                "--- {n}\n{}",
                c.node(n)
                    .ipipd(&["stats", "--pin-dir", &c.bpffs.join(n).to_string_lossy()])
                    .unwrap_or_default()
            );
        }
        println!("{}", c.logs());
    }
    assert!(w2m.0.sent >= 300 && m2w.0.sent >= 300, "{w2m:?} {m2w:?}");
    // On a kernel without TCX (6.1) the first program on a device needs a clsact qdisc, and
    // grafting one makes the kernel deactivate the device's transmit queues for an RCU grace
    // period (qdisc_graft → dev_deactivate): a packet the uplink sends in that window is
    // dropped by the kernel, once per device, before ipipd has seen it (README: "Replace
    // calico-node's data plane"). There, each node's takeover may cost one ping per
    // direction; with TCX nothing is grafted and nothing may be lost.
    let grafted = c.logs().contains("attached from_uplink to eth0 (netlink");
    let allowed = if grafted { 2 } else { 0 };
    if grafted {
        println!(
            "no TCX: clsact qdiscs grafted on live uplinks, up to {allowed} lost per direction allowed"
        );
    }
    assert!(
        w2m.0.sent - w2m.0.received <= allowed,
        "lost worker → master: {:?}",
        w2m.1
    );
    assert!(
        m2w.0.sent - m2w.0.received <= allowed,
        "lost master → worker: {:?}",
        m2w.1
    );
    assert_eq!(routes(&c, "node"), seed_table(), "{}", c.logs());
    // ipipd carries it all now: tunl0 stays up, and carries nothing more.
    let tunl0_tx = |c: &Cluster| -> u64 {
        let out = c.node("node").ns.ip("-s -o link show dev tunl0").unwrap();
        let f: Vec<&str> = out.split_whitespace().collect();
        let at = f.iter().position(|x| *x == "TX:").unwrap();
        f[at..]
            .iter()
            .filter_map(|x| x.parse().ok())
            .nth(1)
            .unwrap()
    };
    let tx = tunl0_tx(&c);
    assert!(ping_ok(&worker_pod, a(MASTER_POD.3)));
    assert_eq!(tunl0_tx(&c), tx, "tunl0 carried pod traffic under ipipd");

    // ipipd stopped and torn down on the worker: Calico's routes come back as they were.
    c.stop_daemon("node").unwrap();
    let out = c.teardown("node").unwrap();
    println!("{out}");
    let back = tables(&c);
    assert_eq!(back.0, calico_tables.0, "the main table after teardown");
    assert_eq!(back.1, calico_tables.1, "the local table after teardown");
    assert!(ping_ok(&worker_pod, a(MASTER_POD.3)), "tunl0 again");
    assert!(ping_ok(&master_pod, a("192.168.83.129")), "tunl0 again");
}
