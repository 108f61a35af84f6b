//! ipipd as an operator runs it: two daemons in two node namespaces on one host (distinct pin
//! directories), changed at runtime, signalled, killed and restarted.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use dataplane_common::program_names;
use ipipd_tests::{
    NetNs, check,
    cluster::{Cluster, PodSpec, seed_nodes},
    counters::{ping, stats},
    kernel_has_tcx, metrics_get, require_root,
    services::{Proto, ProxyMode, Service, install},
    traffic::{Pings, ping_while, tcp_ext, tcp_stream, tcp_stream_via},
};

const M1: Ipv4Addr = Ipv4Addr::new(192, 168, 179, 2);
const N1: Ipv4Addr = Ipv4Addr::new(192, 168, 83, 129);
const N2: Ipv4Addr = Ipv4Addr::new(192, 168, 83, 130);

/// The seed's cluster with `pods_per_node` pods a node and ipipd running on both nodes.
fn running(tag: &str, pods_per_node: usize) -> Cluster {
    let mut c = Cluster::new(tag, &seed_nodes(pods_per_node)).unwrap();
    c.start_daemon("master", None).unwrap();
    c.start_daemon("node", None).unwrap();
    c
}

/// `ping -c count` from a namespace; true when every reply came back.
fn ping_all(ns: &NetNs, to: Ipv4Addr, count: u32) -> bool {
    ping(ns, &format!("-c {count} -i 0.2 -W 2 {to}")).contains(&format!(" {count} received"))
}

/// `ping -c count` from a pod; true when every reply came back.
fn ping_ok(c: &Cluster, node: &str, from: Ipv4Addr, to: Ipv4Addr, count: u32) -> bool {
    ping_all(&c.node(node).pod(from).ns, to, count)
}

fn json(c: &Cluster, node: &str, what: &str) -> serde_json::Value {
    c.ipipd_json(node, &[what]).unwrap()
}

fn endpoint_addrs(c: &Cluster, node: &str) -> Vec<String> {
    json(c, node, "endpoints")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

fn route_prefixes(c: &Cluster, node: &str) -> Vec<String> {
    json(c, node, "routes")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["prefix"].as_str().unwrap().to_string())
        .collect()
}

fn eventually(what: &str, f: impl FnMut() -> bool) {
    ipipd_tests::eventually_within(what, Duration::from_secs(20), f)
}

/// The tc programs attached to a device's hook: TCX programs (6.6+), or netlink cls_bpf
/// filters before TCX.
fn attached(ns: &NetNs, dev: &str, at: TcAttachType) -> Vec<String> {
    if !kernel_has_tcx() {
        let dir = if at == TcAttachType::Ingress {
            "ingress"
        } else {
            "egress"
        };
        return ns
            .sh(&format!(
                "tc filter show dev {dev} {dir} 2>/dev/null || true"
            ))
            .unwrap()
            .lines()
            .filter(|l| l.contains(" bpf ") && l.contains(" handle "))
            .map(|l| format!("tc filter on {dev} {dir}: {l}"))
            .collect();
    }
    let dev = dev.to_string();
    ns.enter(move || match SchedClassifier::query_tcx(&dev, at) {
        Ok((_, progs)) => progs
            .iter()
            .map(|p| format!("tcx program {} on {dev}", p.id()))
            .collect(),
        Err(_) => Vec::new(),
    })
    .unwrap()
}

/// What ipipd leaves in a node namespace: tc programs, XDP, its routes.
fn leftovers(ns: &NetNs, devices: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for d in devices {
        for at in [TcAttachType::Ingress, TcAttachType::Egress] {
            out.extend(attached(ns, d, at));
        }
    }
    for d in devices {
        let link = ns.ip(&format!("-d link show dev {d}")).unwrap_or_default();
        if link.contains("xdp") {
            out.push(format!("xdp on {d}"));
        }
    }
    let routes = ns.ip("route show proto 180").unwrap();
    if !routes.trim().is_empty() {
        out.push(format!("routes: {routes}"));
    }
    out
}

/// What a CNI (Calico's) set up for the node's pods before ipipd came: a /32 per pod to its veth
/// and a blackhole for the block, each with its own protocol; forwarding off.
fn cni_routes(c: &Cluster, node: &str) -> Vec<String> {
    let n = c.node(node);
    let mut cmds = vec![format!("ip route add blackhole {} proto 12", n.spec.block)];
    for p in &n.spec.pods {
        cmds.push(format!(
            "ip route add {}/32 dev {} proto static scope link",
            p.address, p.interface
        ));
    }
    cmds.push("sysctl -qw net.ipv4.ip_forward=0".into());
    n.ns.sh(&cmds.join("\n")).unwrap();
    route_lines(c, node)
}

/// The node's routes to its pods and its block, as `ip -d route` prints them.
fn route_lines(c: &Cluster, node: &str) -> Vec<String> {
    let n = c.node(node);
    let mut prefixes = vec![n.spec.block.clone()];
    prefixes.extend(n.spec.pods.iter().map(|p| format!("{}/32", p.address)));
    prefixes
        .iter()
        .map(|p| {
            n.ns.ip(&format!("-d route show {p} table main"))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn sigterm_leaves_pods_talking_and_teardown_puts_the_node_back() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new("d-basic", &seed_nodes(2)).unwrap();
    let found = cni_routes(&c, "node");
    assert!(found.iter().all(|r| !r.is_empty()), "{found:?}");
    c.start_daemon("master", None).unwrap();
    c.start_daemon("node", None).unwrap();
    assert!(
        ping_ok(&c, "node", N1, M1, 3),
        "node → master pod\n{}",
        c.logs()
    );
    assert!(
        ping_ok(&c, "master", M1, N1, 3),
        "master → node pod\n{}",
        c.logs()
    );
    assert!(ping_ok(&c, "node", N1, N2, 3), "same node\n{}", c.logs());

    // The slow path is in place while running: the remote block and the peer into ipipd's
    // tunnel device (a veth at the tunnel MTU, no ARP), from the node's address; no IPIP device.
    // The CNI's routes to the same prefixes are ipipd's now.
    let routes = c.node("node").ns.ip("route show proto 180").unwrap();
    for r in [
        "192.168.179.0/26 dev ipipd0 scope link src 172.31.242.156",
        "172.31.242.157 dev ipipd0 scope link src 172.31.242.156",
        "blackhole 192.168.83.128/26",
        "192.168.83.129 dev calin0000000",
    ] {
        assert!(routes.contains(r), "{r:?} not in {routes}");
    }
    let dev = c.node("node").ns.ip("-d link show dev ipipd0").unwrap();
    for word in ["mtu 1480", "NOARP", "veth"] {
        assert!(dev.contains(word), "{word:?} not in {dev}");
    }
    let tunnels = c.node("node").ns.ipip_devices_in_use().unwrap();
    assert!(tunnels.is_empty(), "a tunnel device in use: {tunnels:?}");
    let devs = |c: &Cluster, name: &str| -> Vec<String> {
        let mut d: Vec<String> = c
            .node(name)
            .spec
            .pods
            .iter()
            .map(|p| p.interface.clone())
            .collect();
        d.push("eth0".into());
        d.push("ipipd0".into());
        d
    };

    // SIGTERM leaves the data plane: with no daemon on either node, pods still talk across
    // nodes and on the node, through the same programs.
    let before = leftovers(&c.node("node").ns, &["eth0", "ipipd0", "calin0000000"]);
    for name in ["master", "node"] {
        let status = c.stop_daemon(name).unwrap();
        assert!(status.success(), "{name} exited {status}");
    }
    assert_eq!(
        leftovers(&c.node("node").ns, &["eth0", "ipipd0", "calin0000000"]),
        before,
        "SIGTERM changed the data plane"
    );
    assert!(
        ping_ok(&c, "node", N1, M1, 3),
        "no daemon: node → master pod"
    );
    assert!(
        ping_ok(&c, "master", M1, N1, 3),
        "no daemon: master → node pod"
    );
    assert!(ping_ok(&c, "node", N1, N2, 3), "no daemon: same node");

    // A restart in between: the record of what was found survives it.
    c.restart_daemon("node").unwrap();
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
    c.stop_daemon("node").unwrap();

    // `ipipd teardown`: nothing of ipipd's is left, and the node is as it was found.
    for name in ["master", "node"] {
        let pin = c.bpffs.join(name);
        c.teardown(name).unwrap();
        let node = c.node(name);
        let d = devs(&c, name);
        let d: Vec<&str> = d.iter().map(String::as_str).collect();
        assert_eq!(
            leftovers(&node.ns, &d),
            Vec::<String>::new(),
            "{name} after teardown"
        );
        let links = node.ns.ip("link show").unwrap();
        assert!(
            !links.contains("ipipd0"),
            "the tunnel device is left: {links}"
        );
        assert!(!pin.exists(), "{} still exists", pin.display());
    }
    assert_eq!(
        route_lines(&c, "node"),
        found,
        "the CNI's routes are not back"
    );
    let fwd = c
        .node("node")
        .ns
        .sh("sysctl -n net.ipv4.ip_forward")
        .unwrap();
    assert_eq!(fwd.trim(), "0", "ip_forward");
    // A teardown with nothing left to remove is not an error.
    c.teardown("node").unwrap();
}

/// A route an operator puts in place of ipipd's while it is stopped is what ipipd takes over
/// at its next start, and what teardown puts back: not the one found at the very first start.
#[test]
fn teardown_puts_back_the_route_found_at_the_latest_start() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new("d-stale", &seed_nodes(1)).unwrap();
    let pod = format!("{N1}/32");
    let dev = &c.node("node").spec.pods[0].interface.clone();
    let ns = c.node("node").ns.view();
    ns.sh(&format!(
        "ip route add {pod} dev {dev} scope link proto boot"
    ))
    .unwrap();
    c.start_daemon("master", None).unwrap();
    c.start_daemon("node", None).unwrap();
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
    c.stop_daemon("node").unwrap();

    // The operator replaces ipipd's route while no daemon runs.
    ns.sh(&format!(
        "ip route replace {pod} dev {dev} scope link proto static"
    ))
    .unwrap();
    let newest = ns.ip(&format!("-d route show {pod} table main")).unwrap();
    assert!(newest.contains("proto static"), "{newest}");
    c.restart_daemon("node").unwrap();
    let taken = ns.ip(&format!("route show {pod} table main")).unwrap();
    assert!(taken.contains("proto 180"), "ipipd's again: {taken}");
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
    c.stop_daemon("node").unwrap();
    c.teardown("node").unwrap();
    assert_eq!(
        ns.ip(&format!("-d route show {pod} table main")).unwrap(),
        newest,
        "teardown put back another route"
    );
}

#[test]
fn pods_added_and_removed_at_runtime_and_a_veth_recreated() {
    if !require_root() {
        return;
    }
    let mut c = running("d-rt", 1);
    let state = c.node("node").daemon.as_ref().unwrap().state_dir.clone();
    let sd = state.to_str().unwrap().to_string();

    // A new pod: its veth appears, then the CNI tells ipipd.
    let new = PodSpec {
        address: Ipv4Addr::new(192, 168, 83, 140),
        interface: "calinew0000001".into(),
    };
    c.node_mut("node").add_pod("d-rt-p", new.clone()).unwrap();
    assert!(
        !ping_ok(&c, "master", M1, new.address, 1),
        "reachable before it was added"
    );
    c.node("node")
        .ipipd(&[
            "endpoint",
            "add",
            "--address",
            "192.168.83.140",
            "--interface",
            &new.interface,
            "--state-dir",
            &sd,
        ])
        .unwrap();
    assert!(
        ping_ok(&c, "master", M1, new.address, 3),
        "runtime-added pod\n{}",
        c.logs()
    );
    let runtime = std::fs::read_to_string(state.join("runtime.json")).unwrap();
    assert!(runtime.contains("192.168.83.140"), "persisted: {runtime}");

    // An endpoint whose interface does not exist yet is attached when it appears.
    let late = PodSpec {
        address: Ipv4Addr::new(192, 168, 83, 141),
        interface: "calilate000001".into(),
    };
    c.node("node")
        .ipipd(&[
            "endpoint",
            "add",
            "--address",
            "192.168.83.141",
            "--interface",
            &late.interface,
            "--state-dir",
            &sd,
        ])
        .unwrap();
    assert!(!endpoint_addrs(&c, "node").contains(&"192.168.83.141".to_string()));
    c.node_mut("node").add_pod("d-rt-p", late.clone()).unwrap();
    eventually("the late pod's interface is attached", || {
        endpoint_addrs(&c, "node").contains(&"192.168.83.141".to_string())
    });
    assert!(
        ping_ok(&c, "master", M1, late.address, 3),
        "late pod\n{}",
        c.logs()
    );

    // Removed at runtime: unreachable at once.
    c.node("node")
        .ipipd(&[
            "endpoint",
            "del",
            "--address",
            "192.168.83.140",
            "--state-dir",
            &sd,
        ])
        .unwrap();
    assert!(!endpoint_addrs(&c, "node").contains(&"192.168.83.140".to_string()));
    assert!(!route_prefixes(&c, "node").contains(&"192.168.83.140/32".to_string()));
    assert!(
        !ping_ok(&c, "master", M1, new.address, 2),
        "deleted pod still reachable"
    );

    // A pod restart: the veth is deleted (entries go at once) and recreated with a new ifindex.
    let old_ifindex = c
        .node("node")
        .ns
        .ifindex(&c.node("node").spec.pods[0].interface)
        .unwrap();
    let pod = c.node("node").pods[0].spec.clone();
    c.node("node")
        .ns
        .ip(&format!("link del {}", pod.interface))
        .unwrap();
    eventually("the deleted veth's entries are gone", || {
        !endpoint_addrs(&c, "node").contains(&pod.address.to_string())
    });
    let pod_ns = &c.node("node").pods[0].ns;
    c.node("node")
        .ns
        .sh(&format!(
            "ip link add {} type veth peer name eth0 netns {}; ip link set {} up",
            pod.interface, pod_ns.name, pod.interface
        ))
        .unwrap();
    pod_ns
        .sh(&format!("ip link set eth0 up; ip addr add {}/32 dev eth0; ip route add 169.254.1.1 dev eth0 scope link; ip route add default via 169.254.1.1 dev eth0 onlink", pod.address))
        .unwrap();
    let new_ifindex = c.node("node").ns.ifindex(&pod.interface).unwrap();
    assert_ne!(old_ifindex, new_ifindex);
    eventually("the recreated veth is re-keyed", || {
        json(&c, "node", "endpoints")
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["ifindex"] == new_ifindex && e["address"] == pod.address.to_string())
    });
    assert!(
        ping_ok(&c, "master", M1, pod.address, 3),
        "recreated pod\n{}",
        c.logs()
    );

    // A pod of the file deleted at runtime: the second delete says there is no such endpoint.
    let second = c.node("node").spec.pods[0].address.to_string();
    let del = |c: &Cluster| {
        c.node("node")
            .ipipd(&["endpoint", "del", "--address", &second, "--state-dir", &sd])
    };
    del(&c).unwrap();
    let err = format!("{:#}", del(&c).unwrap_err());
    assert!(
        err.contains(&format!("no endpoint {second}")),
        "second delete: {err}"
    );
}

/// Changes the file would refuse are refused over the socket (a client that bypasses the CLI)
/// and by the CLI with the file's message, and nothing of them is recorded in runtime.json.
#[test]
fn runtime_changes_obey_the_files_rules() {
    use std::{
        io::{BufRead, BufReader, Write},
        os::unix::net::UnixStream,
    };
    if !require_root() {
        return;
    }
    let c = running("d-val", 1);
    let state = c.node("node").daemon.as_ref().unwrap().state_dir.clone();
    let sd = state.to_str().unwrap().to_string();
    let runtime = || std::fs::read_to_string(state.join("runtime.json")).unwrap_or_default();
    let before = runtime();
    let raw = |line: &str| -> String {
        let mut s = UnixStream::connect(state.join("ipipd.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply).unwrap();
        reply
    };
    let long = "cali0123456789abcdefghijk";
    for (change, error) in [
        (
            format!(
                r#"{{"change":{{"op":"endpoint_add","address":"192.168.83.150","interface":"{long}"}}}}"#
            ),
            format!(r#"interface: "{long}" is not an interface name"#),
        ),
        (
            r#"{"change":{"op":"endpoint_add","address":"192.168.83.150","interface":"a/b"}}"#
                .to_string(),
            r#"interface: "a/b" is not an interface name"#.to_string(),
        ),
        (
            r#"{"change":{"op":"endpoint_add","address":"192.168.83.150","interface":"lo"}}"#
                .to_string(),
            "interface: is the loopback device".to_string(),
        ),
        (
            r#"{"change":{"op":"peer_add","address":"255.255.255.255","blocks":[]}}"#
                .to_string(),
            "address: 255.255.255.255 is reserved or broadcast (240.0.0.0/4), not a unicast host address"
                .to_string(),
        ),
        (
            r#"{"change":{"op":"peer_add","address":"127.0.0.1","blocks":[]}}"#.to_string(),
            "address: 127.0.0.1 is loopback, not a unicast host address".to_string(),
        ),
    ] {
        let reply: serde_json::Value = serde_json::from_str(&raw(&change)).unwrap();
        assert_eq!(reply["ok"], false, "{change} accepted: {reply}");
        assert_eq!(reply["error"].as_str().unwrap(), error, "{change}");
    }
    // The CLI refuses the same before it sends anything (the file's message).
    let out = Command::new(ipipd_tests::cluster::ipipd_binary().unwrap())
        .args(["endpoint", "add", "--address", "192.168.83.150"])
        .args(["--interface", long, "--state-dir", &sd])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!(r#"interface: "{long}" is not an interface name"#)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(runtime(), before, "a refused change was recorded");
    assert!(
        ping_ok(&c, "node", N1, M1, 1),
        "the node still forwards\n{}",
        c.logs()
    );
}

/// The log grows with what happens, not with how often the daemon reconciles: 500 endpoints
/// waiting for their interfaces are each logged once across many reconciles, and one whose
/// interface appears is attached once.
#[test]
fn waiting_endpoints_are_logged_once_not_at_every_reconcile() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new("d-log", &seed_nodes(1)).unwrap();
    let mut cfg = c.config_for("node", "");
    cfg += "\n[[block]]\ncidr = \"10.99.0.0/22\"\n";
    for i in 0..500u32 {
        cfg += &format!(
            "\n[[endpoint]]\naddress = \"10.99.{}.{}\"\ninterface = \"pend{i}\"\n",
            i / 200,
            i % 200 + 1
        );
    }
    c.start_daemon("node", Some(cfg)).unwrap();
    let node = c.node("node").ns.view();
    // Twenty link changes, each a reconcile with the 500 still pending.
    for i in 0..10 {
        node.ip(&format!("link add churn{i} type veth peer name churn{i}p"))
            .unwrap();
        node.ip(&format!("link del churn{i}")).unwrap();
    }
    // One of them appears: attached, once.
    node.ip("link add pend7 type veth peer name pend7p")
        .unwrap();
    node.ip("link set pend7 up").unwrap();
    let daemon = c.node("node").daemon.as_ref().unwrap();
    eventually("pend7 attached", || {
        daemon.log_text().contains("from_pod to pend7")
    });
    let log = daemon.log_text();
    let waiting = log.matches(": waiting for interface pend").count();
    assert_eq!(
        waiting,
        500,
        "each waiting endpoint logged once:\n{}",
        tail(&log)
    );
    assert_eq!(
        log.matches("from_pod to pend7").count(),
        1,
        "{}",
        tail(&log)
    );
    let lines = log.lines().count();
    assert!(
        lines < 700,
        "{lines} log lines for 500 pending endpoints and 20 link events:\n{}",
        tail(&log)
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The pin directory removed under the running daemon (a careless `rm -rf`) is put back: the
/// maps pinned again as they are, the programs whose links went with their pins attached again.
/// Pods talk, the counters read through the pins keep counting, and a later endpoint add works,
/// all without a restart.
#[test]
fn a_removed_pin_directory_is_put_back() {
    if !require_root() {
        return;
    }
    let mut c = running("d-pin", 1);
    let pin = c.node("node").daemon.as_ref().unwrap().pin_dir.clone();
    let state = c.node("node").daemon.as_ref().unwrap().state_dir.clone();
    let pins = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let (maps_before, links_before) = (pins(&pin), pins(&pin.join("links")));
    // TCX links are pinned (before TCX, netlink filters are not: only the maps are).
    assert_eq!(
        links_before.is_empty(),
        !kernel_has_tcx(),
        "pinned links: {links_before:?}"
    );
    assert!(ping_ok(&c, "node", N1, M1, 1), "{}", c.logs());

    // (The daemon may put pins back while the removal is still going: then it stops at a
    // directory that is not empty, as `rm -rf` would.)
    if let Err(e) = std::fs::remove_dir_all(&pin) {
        assert_eq!(e.kind(), std::io::ErrorKind::DirectoryNotEmpty, "{e}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while pins(&pin) != maps_before || pins(&pin.join("links")) != links_before {
        assert!(
            Instant::now() < deadline,
            "the pins were not put back: {:?} {:?}\n{}",
            pins(&pin),
            pins(&pin.join("links")),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ping_ok(&c, "node", N1, M1, 3), "{}", c.logs());
    assert!(ping_ok(&c, "master", M1, N1, 3), "{}", c.logs());
    let encap: u64 = json(&c, "node", "stats")
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "encap")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert!(
        encap >= 4,
        "the counters, read through the pins: {encap} encap"
    );

    // A later endpoint add.
    let new = PodSpec {
        address: Ipv4Addr::new(192, 168, 83, 150),
        interface: "calipin0000001".into(),
    };
    c.node_mut("node").add_pod("d-pin-p", new.clone()).unwrap();
    c.node("node")
        .ipipd(&[
            "endpoint",
            "add",
            "--address",
            "192.168.83.150",
            "--interface",
            &new.interface,
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .unwrap();
    assert!(ping_ok(&c, "master", M1, new.address, 2), "{}", c.logs());
    let log = c.node("node").daemon.as_ref().unwrap().log_text();
    assert!(log.contains("under the running daemon, put back"), "{log}");
}

/// `n` veth pairs in the node's namespace (`c<tag>NNNN`, up; one `ip -batch`) and the node's
/// config with an endpoint on each, in a 10.99.0.0/22 block; and the veths' names.
fn many_endpoints(c: &Cluster, tag: &str, n: usize) -> (String, Vec<String>) {
    let names: Vec<String> = (0..n).map(|i| format!("c{tag}{i:04}")).collect();
    let batch: String = names
        .iter()
        .map(|c| {
            format!(
                "link add {c} type veth peer name p{}\nlink set {c} up\n",
                &c[1..]
            )
        })
        .collect();
    let file = c.dir.join(format!("{tag}-veths.batch"));
    std::fs::write(&file, batch).unwrap();
    check(
        Command::new("ip")
            .args(["-n", &c.node("node").ns.name, "-batch"])
            .arg(&file),
    )
    .unwrap();
    let mut cfg = c.config_for("node", "") + "\n[[block]]\ncidr = \"10.99.0.0/22\"\n";
    for (i, name) in names.iter().enumerate() {
        cfg += &format!(
            "\n[[endpoint]]\naddress = \"10.99.{}.{}\"\ninterface = \"{name}\"\n",
            i / 200,
            i % 200 + 1
        );
    }
    (cfg, names)
}

/// A node with more endpoints than its soft limit of open files: its fds do not grow with
/// its endpoints (pinned links, their fds closed), so 300 endpoints run under a limit of 64.
#[test]
fn more_endpoints_than_the_open_file_limit_allows() {
    if !require_root() {
        return;
    }
    let c = Cluster::new("d-fd", &seed_nodes(1)).unwrap();
    let node = c.node("node").ns.view();
    let (cfg, _) = many_endpoints(&c, "fd", 300);
    let dir = c.dir.join("node");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ipipd.toml"), cfg).unwrap();
    let mut d = ipipd_tests::cluster::Daemon::spawn_limited(
        &node,
        &dir.join("ipipd.toml"),
        &dir.join("state"),
        &c.bpffs.join("node"),
        Some(64),
    )
    .unwrap();
    d.wait_ready_within(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("64")),
        "{limits}"
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .count();
    assert!(fds < 64, "{fds} fds");
    let n = json(&c, "node", "endpoints").as_array().unwrap().len();
    assert_eq!(n, 301, "every endpoint programmed (300 and the seed's pod)");
    assert!(
        !d.log_text().contains("Too many open files"),
        "{}",
        d.log_text()
    );
}

/// A second daemon for a node — the same config, another name in the same namespace, the same
/// pin directory or the same state directory from another namespace — exits non-zero naming
/// the holder, before touching anything: the first keeps forwarding (no ping lost), with its
/// pins, tunnel device and routes as they were.
#[test]
fn a_second_daemon_for_the_node_is_refused_and_the_first_is_untouched() {
    if !require_root() {
        return;
    }
    let c = running("d-two", 1);
    let node = c.node("node");
    let first = node.daemon.as_ref().unwrap();
    let pid = first.pid();
    let cfg = std::fs::read_to_string(&first.config).unwrap();
    let snapshot = || {
        let mut pins: Vec<String> = std::fs::read_dir(&first.pin_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pins.sort();
        (
            pins,
            node.ns.ifindex("ipipd0").unwrap(),
            node.ns.ip("route show proto 180").unwrap(),
        )
    };
    let before = snapshot();
    // Pings across nodes all along.
    let pod = node.pod(N1).ns.view();
    let pinger = std::thread::spawn(move || ping_all(&pod, M1, 200));

    let other_ns = NetNs::new("d-two-x").unwrap();
    other_ns
        .ip("link add eth0 mtu 1500 type veth peer name eth1")
        .unwrap();
    other_ns.ip("link set eth0 up").unwrap();
    let dir = c.dir.join("second");
    std::fs::create_dir_all(&dir).unwrap();
    let renamed = cfg.replacen("name = \"", "name = \"other-", 1);
    let own_pins = format!("pin_dir = \"{}\"", c.bpffs.join("other").display());
    let pin_line = cfg
        .lines()
        .find(|l| l.starts_with("pin_dir"))
        .unwrap()
        .to_string();
    let cases = [
        (
            "the same config",
            &node.ns,
            cfg.clone(),
            first.state_dir.clone(),
            format!("(pid {pid})"),
        ),
        (
            "another name, the same namespace",
            &node.ns,
            renamed.replace(&pin_line, &own_pins),
            dir.join("state-a"),
            format!("another ipipd runs in this network namespace (pid {pid})"),
        ),
        (
            "the same pin directory, another namespace",
            &other_ns,
            renamed.clone(),
            dir.join("state-b"),
            format!("is in use by another ipipd (pid {pid})"),
        ),
        (
            "the same state directory, another namespace",
            &other_ns,
            renamed.replace(&pin_line, &own_pins),
            first.state_dir.clone(),
            format!("is in use by another ipipd (pid {pid})"),
        ),
    ];
    for (i, (what, ns, text, state, expect)) in cases.iter().enumerate() {
        let path = dir.join(format!("ipipd-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = ipipd_tests::output_within(
            Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .arg(ipipd_tests::cluster::ipipd_binary().unwrap())
                .args(["run", "--metrics-addr", "off", "--config"])
                .arg(&path)
                .arg("--state-dir")
                .arg(state),
            Duration::from_secs(30),
        )
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: still running after 30 s"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what}: the second daemon ran\n{err}"
        );
        assert!(err.contains(expect.as_str()), "{what}: {err}");
    }
    assert!(pinger.join().unwrap(), "pings were lost\n{}", c.logs());
    assert_eq!(snapshot(), before, "the first daemon's data plane changed");
    let log = first.log_text();
    assert!(!log.contains("previous run"), "{log}");
}

#[test]
fn kill_9_then_restart_leaves_no_stale_state() {
    if !require_root() {
        return;
    }
    let mut c = running("d-k9", 2);
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
    let d = c.node_mut("node").daemon.take().unwrap();
    let (cfg, pin, state_dir) = (d.config.clone(), d.pin_dir.clone(), d.state_dir.clone());
    d.kill9().unwrap();
    // A crash leaves the programs attached (pinned TCX links, or netlink filters recorded in the
    // state directory before TCX): the data plane keeps forwarding.
    if kernel_has_tcx() {
        assert!(pin.join("links").read_dir().unwrap().count() > 0);
    } else {
        assert!(state_dir.join("tc-filters.json").is_file());
        let filters = c
            .node("node")
            .ns
            .sh("tc filter show dev eth0 ingress")
            .unwrap();
        assert!(filters.contains("from_uplink"), "{filters}");
    }
    assert!(ping_ok(&c, "node", N1, M1, 2), "forwarding after kill -9");

    // The operator drops a pod from the file before restarting: nothing of it may survive.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let trimmed = text.replace(
        "\n[[endpoint]]\naddress = \"192.168.83.130\"\ninterface = \"calin0000001\"\n",
        "",
    );
    assert_ne!(text, trimmed);
    c.start_daemon("node", Some(trimmed)).unwrap();
    assert!(
        ping_ok(&c, "node", N1, M1, 2),
        "after restart\n{}",
        c.logs()
    );
    assert!(
        ping_ok(&c, "master", M1, N1, 2),
        "after restart\n{}",
        c.logs()
    );
    assert_eq!(endpoint_addrs(&c, "node"), vec!["192.168.83.129"]);
    assert!(!route_prefixes(&c, "node").contains(&"192.168.83.130/32".to_string()));
    let routes = c.node("node").ns.ip("route show proto 180").unwrap();
    assert!(
        !routes.contains("192.168.83.130"),
        "stale slow-path route: {routes}"
    );
    // One attachment per hook and device, none left from the killed run.
    let ns = &c.node("node").ns;
    for (dev, at) in [
        ("eth0", TcAttachType::Ingress),
        ("ipipd0", TcAttachType::Egress),
        ("calin0000000", TcAttachType::Ingress),
    ] {
        let progs = attached(ns, dev, at);
        assert_eq!(progs.len(), 1, "{dev} {at:?}: {progs:?}");
    }
    if kernel_has_tcx() {
        let links = pin.join("links").read_dir().unwrap().count();
        assert_eq!(links, 3, "pinned links");
    }
    let leftover_on_removed = attached(ns, "calin0000001", TcAttachType::Ingress);
    assert!(
        leftover_on_removed.is_empty(),
        "the removed pod's veth still has a program: {leftover_on_removed:?}"
    );
}

#[test]
fn sighup_adds_a_peer_and_removes_an_endpoint_without_losing_a_ping() {
    if !require_root() {
        return;
    }
    let c = running("d-hup", 2);
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
    let d = c.node("node").daemon.as_ref().unwrap();
    let cfg = d.config.clone();

    // 100 packets per second for 3 s, to a pod the change does not touch.
    let pod_ns = c.node("node").pod(N1).ns.name.clone();
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &pod_ns, "ping", "-c", "300", "-i", "0.01", "-W", "1",
        ])
        .arg(M1.to_string())
        .output();
    let ping = std::thread::spawn(move || ping);
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let changed = text.replace(
        "\n[[endpoint]]\naddress = \"192.168.83.130\"\ninterface = \"calin0000001\"\n",
        "",
    ) + "\n[[peer]]\naddress = \"172.31.242.158\"\nblocks = [\"192.168.200.0/26\"]\n";
    std::fs::write(&cfg, changed).unwrap();
    c.node("node").daemon.as_ref().unwrap().signal(libc::SIGHUP);
    let out = ping.join().unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("300 received"),
        "ping during SIGHUP:\n{text}\n{}",
        c.logs()
    );

    // The change took effect.
    eventually(
        "SIGHUP applied: the peer added, the endpoint removed",
        || {
            route_prefixes(&c, "node").contains(&"192.168.200.0/26".to_string())
                && !endpoint_addrs(&c, "node").contains(&"192.168.83.130".to_string())
        },
    );
    assert!(!route_prefixes(&c, "node").contains(&"192.168.83.130/32".to_string()));
    // An invalid file is rejected whole: the running state stays.
    std::fs::write(&cfg, "[node]\nuplink = \"eth0\"\naddress = \"not-an-ip\"\n").unwrap();
    c.node("node").daemon.as_ref().unwrap().signal(libc::SIGHUP);
    eventually("the invalid file is logged", || {
        c.node("node")
            .daemon
            .as_ref()
            .unwrap()
            .log_text()
            .contains("config rejected")
    });
    assert!(route_prefixes(&c, "node").contains(&"192.168.200.0/26".to_string()));
    assert!(ping_ok(&c, "node", N1, M1, 2));
}

/// Every bad input the config can carry: a one-line error naming the key, non-zero exit, and
/// nothing attached.
#[test]
fn bad_config_is_rejected_with_a_clear_error() {
    if !require_root() {
        return;
    }
    let ns = NetNs::new("badcfg").unwrap();
    ns.ip("link add eth0 mtu 1500 type veth peer name eth1")
        .unwrap();
    ns.ip("link set eth0 up").unwrap();
    let dir = std::env::temp_dir().join(format!("ipipd-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = ipipd_tests::cluster::ipipd_binary().unwrap();
    let node = "[node]\nname = \"bad\"\nuplink = \"eth0\"\naddress = \"172.31.242.156\"\n";
    let block = "\n[[block]]\ncidr = \"192.168.83.128/26\"\n";
    let peer = "\n[[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"192.168.179.0/26\"]\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "invalid CIDR",
            format!("{node}\n[[block]]\ncidr = \"192.168.83.128/33\"\n"),
            "block[0].cidr",
        ),
        (
            "host bits set",
            format!("{node}\n[[block]]\ncidr = \"192.168.83.129/26\"\n"),
            "block[0].cidr",
        ),
        (
            "invalid address",
            node.replace("172.31.242.156", "172.31.242.300"),
            "node.address",
        ),
        (
            "overlapping blocks",
            format!("{node}{block}\n[[block]]\ncidr = \"192.168.83.0/24\"\n"),
            "block[1].cidr",
        ),
        (
            "endpoint outside the blocks",
            format!("{node}{block}\n[[endpoint]]\naddress = \"10.1.1.1\"\ninterface = \"cali1\"\n"),
            "endpoint[0].address",
        ),
        (
            "peer block overlaps own",
            format!(
                "{node}{block}\n[[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"192.168.83.128/27\"]\n"
            ),
            "peer[0].blocks[0]",
        ),
        (
            "peer with the node's address",
            format!("{node}{block}\n[[peer]]\naddress = \"172.31.242.156\"\n"),
            "peer[0].address",
        ),
        (
            "a tunnel name too long for its peer's",
            format!("{node}tunnel = \"ipipd012345678x\"\n{block}"),
            "node.tunnel",
        ),
        (
            "an endpoint on the tunnel device",
            format!(
                "{node}{block}\n[[endpoint]]\naddress = \"192.168.83.129\"\ninterface = \"ipipd0\"\n"
            ),
            "endpoint[0].interface",
        ),
        (
            "two peers with one address",
            format!(
                "{node}{block}{peer}\n[[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"192.168.1.0/26\"]\n"
            ),
            "peer[1].address",
        ),
        (
            "block claimed by two peers",
            format!(
                "{node}{block}{peer}\n[[peer]]\naddress = \"172.31.242.158\"\nblocks = [\"192.168.179.0/26\"]\n"
            ),
            "peer[1].blocks[0]",
        ),
        (
            "duplicate endpoint addresses",
            format!(
                "{node}{block}\n[[endpoint]]\naddress = \"192.168.83.129\"\ninterface = \"cali1\"\n\n[[endpoint]]\naddress = \"192.168.83.129\"\ninterface = \"cali2\"\n"
            ),
            "endpoint[1].address",
        ),
        (
            "unknown uplink",
            format!("{}{block}", node.replace("\"eth0\"", "\"eth9\"")),
            "node.uplink",
        ),
        (
            "mtu above the uplink's",
            format!("{node}mtu = 9000\n{block}"),
            "node.mtu",
        ),
        (
            "unknown key",
            format!("{node}colour = \"blue\"\n{block}"),
            "colour",
        ),
        (
            "bad mode",
            format!("{node}mode = \"sometimes\"\n{block}"),
            "node.mode",
        ),
        (
            "bad MAC",
            format!(
                "{node}{block}\n[[endpoint]]\naddress = \"192.168.83.129\"\ninterface = \"cali1\"\nmac = \"zz\"\n"
            ),
            "endpoint[0].mac",
        ),
    ];
    let mut failures = Vec::new();
    let state = dir.join("state").to_str().unwrap().to_string();
    for (what, text, key) in &cases {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        for cmd in ["check", "run"] {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .arg(&bin)
                .args([cmd, "--config"])
                .arg(&path)
                .args(if cmd == "run" {
                    vec!["--state-dir", state.as_str()]
                } else {
                    vec![]
                })
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or_default().to_string();
            if out.status.success() || !last.contains(key) || !last.contains("bad.toml") {
                failures.push(format!(
                    "{what} ({cmd}): exit {}, stderr {err:?}",
                    out.status
                ));
            }
        }
        let tc = attached(&ns, "eth0", TcAttachType::Ingress);
        assert!(tc.is_empty(), "{what}: something stayed attached: {tc:?}");
    }
    // A missing file.
    let out = Command::new(&bin)
        .args(["check", "--config", "/nonexistent/ipipd.toml"])
        .output()
        .unwrap();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ipipd.toml")
    );
    // A failure part-way through run (native XDP on a bridge, which has none) rolls back what it
    // attached before (the tc programs).
    ns.ip("link add dummy0 type bridge").unwrap();
    ns.ip("link set dummy0 up").unwrap();
    ns.ip("addr add 172.31.242.156/20 dev dummy0").unwrap();
    let path = dir.join("partial.toml");
    std::fs::write(
        &path,
        format!(
            "{}xdp = \"native\"\npin_dir = \"/sys/fs/bpf/ipipd-partial-{}\"\n{block}",
            node.replace("eth0", "dummy0"),
            std::process::id()
        ),
    )
    .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&path)
        .args(["--state-dir", dir.join("state2").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "native XDP on dummy0 should fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        leftovers(&ns, &["dummy0"]),
        Vec::<String>::new(),
        "rolled back"
    );
    let _ = check(Command::new("rm").arg("-rf").arg(&dir));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_deleted_tunnel_device_is_recreated_with_its_routes() {
    if !require_root() {
        return;
    }
    let c = running("d-tun", 1);
    assert!(
        ping_all(&c.node("node").ns, M1, 2),
        "host → remote pod\n{}",
        c.logs()
    );
    let ns = &c.node("node").ns;
    let old = ns.ifindex("ipipd0").unwrap();
    ns.ip("link del ipipd0").unwrap();
    // The kernel took the device's routes with it; the daemon makes both again.
    eventually("the tunnel device and its routes are back", || {
        ns.ip("route show proto 180")
            .unwrap()
            .contains("192.168.179.0/26 dev ipipd0 scope link src 172.31.242.156")
    });
    assert_ne!(ns.ifindex("ipipd0").unwrap(), old);
    assert_eq!(
        attached(ns, "ipipd0", TcAttachType::Egress).len(),
        1,
        "to_tunnel on the new device"
    );
    assert!(
        ping_all(&c.node("node").ns, M1, 2),
        "host → remote pod after\n{}",
        c.logs()
    );
    assert!(ping_ok(&c, "node", N1, M1, 2), "pod → remote pod after");
}

/// The kernel objects of a node's data plane: its pinned maps (by id), the programs that use
/// them, the links of those programs and every map those programs use (by id). Found from the
/// node's own pins, so that other tests' data planes on the host do not count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Objects {
    pinned_maps: BTreeMap<String, u32>,
    programs: BTreeSet<u32>,
    links: usize,
    maps: BTreeSet<u32>,
}

impl Objects {
    /// What a restart must leave as it found: the same pins, and as many programs, links and
    /// maps (new programs have new ids).
    fn counts(&self) -> (&BTreeMap<String, u32>, usize, usize, usize) {
        (
            &self.pinned_maps,
            self.programs.len(),
            self.links,
            self.maps.len(),
        )
    }
}

/// The node's objects once the kernel has released what the last restart replaced: polled
/// until their counts are `want`'s, for at most `within`. A replaced netlink `cls_bpf` filter
/// frees its program after an RCU grace period, on a workqueue (slow under TCG): such a
/// program is gone by the next look. One still held after the bound is a leak. Also the ids
/// that were held beyond `want` on the way (released late).
fn settled(
    pin_dir: &std::path::Path,
    want: &Objects,
    within: Duration,
) -> (Objects, BTreeSet<u32>) {
    let deadline = Instant::now() + within;
    let mut late = BTreeSet::new();
    loop {
        let now = objects(pin_dir);
        if now.counts() == want.counts() || Instant::now() > deadline {
            return (now, late);
        }
        late.extend(now.programs.iter().copied());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn objects(pin_dir: &std::path::Path) -> Objects {
    let pinned_maps: BTreeMap<String, u32> = std::fs::read_dir(pin_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ipipd_"))
        .map(|e| {
            let id = aya::maps::MapInfo::from_pin(e.path()).unwrap().id();
            (e.file_name().to_string_lossy().into_owned(), id)
        })
        .collect();
    let ours: BTreeSet<u32> = pinned_maps.values().copied().collect();
    let mut programs = BTreeSet::new();
    let mut maps = BTreeSet::new();
    for p in aya::programs::loaded_programs().flatten() {
        let Ok(Some(ids)) = p.map_ids() else { continue };
        if ids.iter().any(|i| ours.contains(i)) {
            programs.insert(p.id());
            maps.extend(ids);
        }
    }
    let links = aya::programs::loaded_links()
        .flatten()
        .filter(|l| programs.contains(&l.program_id()))
        .count();
    Objects {
        pinned_maps,
        programs,
        links,
        maps,
    }
}

/// Ten restarts (SIGTERM, start) of a node, then a kill -9 and start of each node, while pods
/// ping each other across the nodes at 200 a second both ways and a TCP stream runs: nothing
/// is lost, the stream arrives intact without a retransmission timeout, and the counters keep
/// counting across every restart.
#[test]
fn restarts_and_kill_9_lose_no_packet_and_keep_the_counters() {
    if !require_root() {
        return;
    }
    let mut c = running("d-restart", 1);
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
    let node_pod = c.node("node").pod(N1).ns.view();
    let master_pod = c.node("master").pod(M1).ns.view();
    let timeouts = tcp_ext(&master_pod, "TCPTimeouts").unwrap();
    let go = AtomicBool::new(true);
    let keep_going = || go.load(Ordering::Relaxed);
    let (restarts, there, back, tcp) = std::thread::scope(|s| {
        let there = s.spawn(|| ping_while(&node_pod, M1, 200, "0.005", 300, &keep_going));
        let back = s.spawn(|| ping_while(&master_pod, N1, 200, "0.005", 300, &keep_going));
        let tcp = s.spawn(|| {
            tcp_stream(
                &node_pod,
                N1,
                5201,
                &master_pod,
                16 << 30,
                Duration::from_millis(2),
                &keep_going,
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let restarts = (|| -> anyhow::Result<Vec<String>> {
            let mut problems = Vec::new();
            let mut last = stats(&c, "node");
            for i in 0..10 {
                let status = c.stop_daemon("node")?;
                if !status.success() {
                    problems.push(format!("restart {i}: exited {status}"));
                }
                c.restart_daemon("node")?;
                let now = stats(&c, "node");
                for (k, v) in &last {
                    if now.get(k).is_none_or(|n| n.0 < v.0) {
                        problems.push(format!(
                            "restart {i}: {k:?} went from {v:?} to {:?}",
                            now.get(k)
                        ));
                    }
                }
                last = now;
            }
            for node in ["node", "master"] {
                c.kill_daemon(node)?;
                c.restart_daemon(node)?;
            }
            Ok(problems)
        })();
        std::thread::sleep(Duration::from_millis(500));
        go.store(false, Ordering::Relaxed);
        (
            restarts,
            there.join().unwrap(),
            back.join().unwrap(),
            tcp.join().unwrap(),
        )
    });
    let problems = restarts.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert_eq!(problems, Vec::<String>::new(), "{}", c.logs());
    let (there, there_out) = there.unwrap();
    let (back, back_out) = back.unwrap();
    assert!(there.sent > 0 && back.sent > 0);
    let lossy = |outs: &[String]| -> Vec<String> {
        outs.iter()
            .filter(|o| Pings::parse(o).is_some_and(|p| p.lost() > 0))
            .cloned()
            .collect()
    };
    assert_eq!(
        (there.lost(), back.lost()),
        (0, 0),
        "pings lost across the restarts ({there:?} there, {back:?} back):\n{:?}\n{:?}\n{}",
        lossy(&there_out),
        lossy(&back_out),
        c.logs()
    );
    let tcp = tcp.unwrap();
    eprintln!(
        "across 10 restarts and 2 kill -9: pings {there:?} there, {back:?} back; TCP {} bytes",
        tcp.sent.0
    );
    assert!(tcp.sent.0 > 0);
    assert_eq!(tcp.sent, tcp.received, "the TCP stream");
    assert_eq!(
        tcp_ext(&master_pod, "TCPTimeouts").unwrap(),
        timeouts,
        "a retransmission timeout fired"
    );
    // Each restart adopted: no map was recreated.
    let log = c.node("node").daemon.as_ref().unwrap().full_log();
    assert_eq!(log.matches("adopting the data plane").count(), 11, "{log}");
}

/// 50 start/stop cycles: the node's kernel objects (its maps, the programs on them, their links)
/// and the daemon's open files are the same after each as after the first start, once the
/// kernel has released what the restart replaced (bounded: a program still held 30 s on is a
/// leak, named by id with the cycle that loaded it).
#[test]
fn start_stop_cycles_leak_no_kernel_object_and_no_fd() {
    if !require_root() {
        return;
    }
    let cycles: u32 = std::env::var("IPIPD_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut c = running("d-cycles", 1);
    let pin = c.bpffs.join("node");
    let first = objects(&pin);
    assert_eq!(
        first.pinned_maps.len(),
        dataplane_common::map_names::ALL.len()
    );
    // The object's programs, whatever the kernel's attachment kind.
    assert_eq!(first.programs.len(), program_names::ALL.len(), "{first:?}");
    let first_daemon = c.node("node").daemon.as_ref().unwrap();
    let (fds, fd_kinds) = (
        first_daemon.open_fds().unwrap(),
        first_daemon.fd_kinds().unwrap(),
    );
    // Which cycle loaded each program id seen, to name a leak.
    let mut loaded_in: BTreeMap<u32, u32> = first.programs.iter().map(|&p| (p, 0)).collect();
    for i in 1..=cycles {
        let status = c.stop_daemon("node").unwrap();
        assert!(status.success(), "cycle {i}: exited {status}\n{}", c.logs());
        c.restart_daemon("node").unwrap();
        let (now, late) = settled(&pin, &first, Duration::from_secs(30));
        for p in &now.programs {
            loaded_in.entry(*p).or_insert(i);
        }
        let leaked: Vec<(u32, u32)> = now
            .programs
            .iter()
            .filter(|p| loaded_in[p] < i)
            .map(|p| (*p, loaded_in[p]))
            .collect();
        assert_eq!(
            now.counts(),
            first.counts(),
            "cycle {i}: still held after 30 s; programs of earlier cycles (id, cycle): {leaked:?}\n{}",
            c.logs()
        );
        if late.len() > now.programs.len() {
            let gone: Vec<u32> = late.difference(&now.programs).copied().collect();
            eprintln!("cycle {i}: programs released after the restart was ready: {gone:?}");
        }
        // The daemon's files come down to the first start's (a netlink or metrics socket of
        // the bring-up may still be open when it says ready), within a bound.
        let d = c.node("node").daemon.as_ref().unwrap();
        let t = Instant::now();
        while d.open_fds().unwrap() > fds && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            d.open_fds().unwrap() <= fds,
            "cycle {i}: open files {:?}, first start {fd_kinds:?}",
            d.fd_kinds().unwrap()
        );
    }
    for dev in ["eth0", "calin0000000"] {
        assert_eq!(
            attached(&c.node("node").ns, dev, TcAttachType::Ingress).len(),
            1
        );
    }
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
}

/// Pings both ways between the two nodes' first pods, in rounds, while `during` runs; the pings
/// of both directions.
fn pinging_while<T>(c: &mut Cluster, during: impl FnOnce(&mut Cluster) -> T) -> (T, Pings, Pings) {
    let node_pod = c.node("node").pod(N1).ns.view();
    let master_pod = c.node("master").pod(M1).ns.view();
    let go = AtomicBool::new(true);
    let keep_going = || go.load(Ordering::Relaxed);
    std::thread::scope(|s| {
        let there = s.spawn(|| ping_while(&node_pod, M1, 100, "0.005", 300, &keep_going));
        let back = s.spawn(|| ping_while(&master_pod, N1, 100, "0.005", 300, &keep_going));
        std::thread::sleep(Duration::from_millis(300));
        let r = during(c);
        std::thread::sleep(Duration::from_millis(300));
        go.store(false, Ordering::Relaxed);
        let there = there.join().unwrap().unwrap().0;
        let back = back.join().unwrap().unwrap().0;
        (r, there, back)
    })
}

/// `[node]` changes take effect on a restart, without a gap in pod traffic: the MTU (the tunnel
/// device adopted and set to the new MTU, not recreated), generic then native XDP, then off, and another tunnel
/// device name (the new device made, the old one removed).
#[test]
fn node_settings_change_across_restarts_without_a_gap() {
    if !require_root() {
        return;
    }
    let mut c = running("d-nodecfg", 1);
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
    let ns = c.node("node").ns.view();
    let tunnel_before = ns.ifindex("ipipd0").unwrap();
    let tunnel_after_mtu = |ns: &NetNs| ns.ifindex("ipipd0").ok();
    let restart_with = |c: &mut Cluster, keys: &str| -> anyhow::Result<()> {
        c.stop_daemon("node")?;
        let cfg = c.config_for("node", keys);
        c.start_daemon("node", Some(cfg))
    };
    let steps = [
        ("mtu = 1400", "link show dev ipipd0"),
        ("mtu = 1400\nxdp = \"generic\"", "link show dev eth0"),
        ("mtu = 1400\nxdp = \"native\"", "link show dev eth0"),
        ("mtu = 1400", "link show dev eth0"),
        ("mtu = 1400\ntunnel = \"ipipd1\"", "route show proto 180"),
    ];
    let mut seen = Vec::new();
    let mut lost = Vec::new();
    for (keys, show) in steps {
        let (r, there, back) = pinging_while(&mut c, |c| restart_with(c, keys));
        r.unwrap_or_else(|e| panic!("{keys}: {e:#}\n{}", c.logs()));
        seen.push(ns.ip(show).unwrap());
        if seen.len() == 1 {
            let now = tunnel_after_mtu(&ns);
            assert_eq!(now, Some(tunnel_before), "the tunnel device was recreated");
        }
        if there.lost() + back.lost() > 0 {
            lost.push(format!("{keys:?}: {there:?} there, {back:?} back"));
        }
    }
    assert!(seen[0].contains("mtu 1380"), "tunnel MTU: {}", seen[0]);
    assert_eq!(
        ns.ifindex("ipipd1").ok().map(|_| ()),
        Some(()),
        "the renamed tunnel device"
    );
    assert!(
        seen[1].contains("xdpgeneric"),
        "generic XDP on: {}",
        seen[1]
    );
    assert!(
        seen[2].contains("xdp") && !seen[2].contains("xdpgeneric"),
        "native XDP on: {}",
        seen[2]
    );
    assert!(!seen[3].contains("xdp"), "XDP off: {}", seen[3]);
    assert!(
        seen[4].contains("192.168.179.0/26 dev ipipd1") && !seen[4].contains("ipipd0"),
        "{}",
        seen[4]
    );
    assert!(
        ns.ifindex("ipipd0").is_err(),
        "the old tunnel device is left"
    );
    assert_eq!(lost, Vec::<String>::new(), "pings lost\n{}", c.logs());
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
}

/// A restart onto pins of another layout (here: the running data plane's map pins renamed to
/// an older `_v` suffix while no daemon runs, which is what a daemon of an older build leaves):
/// the new daemon builds new maps from the config, moves the running links onto its programs
/// and removes the old maps, with no packet lost.
#[test]
fn a_layout_upgrade_rebuilds_the_maps_without_losing_a_packet() {
    if !require_root() {
        return;
    }
    let mut c = running("d-layout", 1);
    assert!(ping_ok(&c, "node", N1, M1, 2), "{}", c.logs());
    let pin = c.bpffs.join("node");
    let version = format!("_v{}", dataplane_common::LAYOUT_VERSION);
    let older = format!("_v{}", dataplane_common::LAYOUT_VERSION - 1);
    let (r, there, back) = pinging_while(&mut c, |c| -> anyhow::Result<()> {
        c.stop_daemon("node")?;
        for name in dataplane_common::map_names::ALL {
            std::fs::rename(pin.join(name), pin.join(name.replace(&version, &older)))?;
        }
        c.restart_daemon("node")
    });
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let log = c.node("node").daemon.as_ref().unwrap().log_text();
    assert!(log.contains("upgrading the data plane"), "{log}");
    let left: Vec<String> = std::fs::read_dir(&pin)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&older) || n == "previous")
        .collect();
    assert_eq!(left, Vec::<String>::new(), "old pins left");
    assert_eq!(objects(&pin).programs.len(), program_names::ALL.len());
    assert_eq!(
        (there.lost(), back.lost()),
        (0, 0),
        "pings lost across the upgrade ({there:?} there, {back:?} back)\n{}",
        c.logs()
    );
}

/// The upgrade from release v0.1.0 (built from its commit) to this tree's ipipd, under the same
/// traffic as the restarts and a TCP stream from the node itself through a ClusterIP (kube-proxy's
/// DNAT) to a pod on the other node, which works in v0.1.0 too (its replies come to the node's
/// address): v0.1.0 tears its data plane down on SIGTERM, so it is stopped with SIGKILL (an
/// orchestrator's forced stop); the new daemon finds maps of an older layout (v0.1.0's v5),
/// builds its own from the config and moves every attachment onto its programs. No ping is lost,
/// and the stream arrives intact.
#[test]
fn an_upgrade_from_v0_1_0_under_traffic_loses_no_packet() {
    if !require_root() {
        return;
    }
    let Some(old) = ipipd_tests::v0_1_0_binary() else {
        return;
    };
    let mut c = Cluster::new("d-upgrade", &seed_nodes(1)).unwrap();
    for n in ["master", "node"] {
        c.start_daemon_binary(n, None, Duration::from_secs(60), &old)
            .unwrap();
    }
    assert!(ping_ok(&c, "node", N1, M1, 2), "v0.1.0\n{}", c.logs());
    let svc = Service {
        vip: Ipv4Addr::new(10, 96, 0, 30),
        port: 80,
        proto: Proto::Tcp,
        backend: std::net::SocketAddrV4::new(M1, 9100),
        node_port: None,
    };
    let node = c.node("node").ns.view();
    install(
        &node,
        ProxyMode::Iptables,
        std::slice::from_ref(&svc),
        "192.168.0.0/16",
    )
    .unwrap();
    node.sh("ip route add 10.96.0.0/12 dev eth0").unwrap();
    let backend = c.node("master").pod(M1).ns.view();
    let streaming = AtomicBool::new(true);
    let keep_streaming = || streaming.load(Ordering::Relaxed);
    let (r, there, back, stream) = std::thread::scope(|s| {
        let t = s.spawn(|| {
            tcp_stream_via(
                &backend,
                svc.backend,
                &node,
                std::net::SocketAddrV4::new(svc.vip, svc.port),
                1 << 30,
                Duration::from_millis(2),
                &keep_streaming,
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        let (r, there, back) = pinging_while(&mut c, |c| -> anyhow::Result<()> {
            for n in ["node", "master"] {
                c.kill_daemon(n)?;
                c.restart_daemon(n)?;
            }
            Ok(())
        });
        streaming.store(false, Ordering::Relaxed);
        (r, there, back, t.join().unwrap())
    });
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let stream = stream.unwrap_or_else(|e| panic!("the stream: {e:#}\n{}", c.logs()));
    assert!(
        stream.sent.0 > 0 && stream.sent == stream.received,
        "{stream:?}"
    );
    eprintln!(
        "upgrade v0.1.0 → this tree, both nodes: {} of {} pings lost there, {} of {} back",
        there.lost(),
        there.sent,
        back.lost(),
        back.sent
    );
    for n in ["master", "node"] {
        let log = c.node(n).daemon.as_ref().unwrap().log_text();
        assert!(log.contains("upgrading the data plane"), "{n}: {log}");
    }
    assert_eq!(
        (there.lost(), back.lost()),
        (0, 0),
        "pings lost across the upgrade\n{}",
        c.logs()
    );
    assert!(ping_ok(&c, "master", M1, N1, 2), "{}", c.logs());
}

/// A first start with many pods attaches their `from_pod` as netlink filters (a TCX attach waits
/// for an RCU grace period, ~13 ms each) and then moves each to a pinned TCX link in the
/// background; a restart in the middle of the move adopts both kinds and finishes it. No ping is
/// lost across it all; in the end every pod veth runs exactly one program on its ingress, and no
/// filter or `clsact` of ipipd's is left on it. Without TCX (6.1) the filters stay, one each,
/// and `ipipd teardown` removes them with the `clsact` it added.
#[test]
fn a_large_first_start_moves_its_pods_from_filters_to_tcx_links_without_a_gap() {
    if !require_root() {
        return;
    }
    const N: usize = 200;
    let mut c = Cluster::new("d-promo", &seed_nodes(1)).unwrap();
    c.start_daemon("master", None).unwrap();
    let node = c.node("node").ns.view();
    let (cfg, extra) = many_endpoints(&c, "pr", N);
    let pod_veth = c.node("node").pod(N1).spec.interface.clone();
    let mut veths = extra;
    veths.push(pod_veth);
    c.start_daemon("node", Some(cfg)).unwrap();
    let tcx = kernel_has_tcx();
    let first_log = c.node("node").daemon.as_ref().unwrap().full_log();
    if tcx {
        assert!(
            first_log.contains(&format!(
                "attached from_pod to {} pod interfaces as netlink filters",
                N + 1
            )),
            "{first_log}"
        );
    }
    let filters_file = c.dir.join("node/state/tc-filters.json");
    let readyz = |ns: &NetNs| metrics_get(ns, "/readyz").map(|r| r.1).unwrap_or_default();
    let (left_at_stop, there, back) = pinging_while(&mut c, |c| {
        c.stop_daemon("node").unwrap();
        // What the stopped daemon left as filters (the move was under way on a TCX kernel).
        let left = std::fs::read_to_string(&filters_file)
            .unwrap_or_default()
            .matches("\"cpr")
            .count();
        c.restart_daemon("node").unwrap();
        ipipd_tests::eventually_within(
            "every pod interface on its final attachment",
            Duration::from_secs(120),
            || {
                let body = readyz(&node);
                body.starts_with("ready")
                    && body.matches(" from_pod attached (").count() == N + 1
                    && (!tcx || !body.contains("(netlink)"))
            },
        );
        left
    });
    assert_eq!(
        (there.lost(), back.lost()),
        (0, 0),
        "pings lost while the filters moved ({there:?} there, {back:?} back)\n{}",
        c.logs()
    );
    assert!(there.sent > 0 && back.sent > 0);
    eprintln!("{left_at_stop} filters were left for the restart to adopt and move");
    if tcx {
        assert!(left_at_stop > 0, "the restart came after the move ended");
    }
    let body = readyz(&node);
    let mut problems = Vec::new();
    for v in &veths {
        let progs = attached(&node, v, TcAttachType::Ingress);
        if progs.len() != 1 {
            problems.push(format!("{v}: {progs:?}"));
        }
        let mode = if tcx { "tcx" } else { "netlink" };
        if !body.contains(&format!("{v} from_pod attached ({mode})")) {
            problems.push(format!("{v}: not attached with {mode} in /readyz"));
        }
        if tcx {
            let filters = node.sh(&format!("tc filter show dev {v} ingress")).unwrap();
            let qdiscs = node.sh(&format!("tc qdisc show dev {v}")).unwrap();
            if !filters.trim().is_empty() || qdiscs.contains("clsact") {
                problems.push(format!("{v}: left {filters} {qdiscs}"));
            }
        }
    }
    assert_eq!(problems, Vec::<String>::new(), "{body}\n{}", c.logs());
    // `ipipd status` lists each pod's attachment with its kind (filters from the state dir).
    let status = json(&c, "node", "status");
    let listed: BTreeSet<String> = status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let suffix = if tcx { "" } else { "(netlink)" };
    let wanted: BTreeSet<String> = veths
        .iter()
        .map(|v| format!("{v}:from_pod{suffix}"))
        .collect();
    assert_eq!(
        listed
            .iter()
            .filter(|a| a.contains(":from_pod"))
            .cloned()
            .collect::<BTreeSet<_>>(),
        wanted,
        "{status}"
    );
    // Teardown removes whichever kind is there, and the clsact ipipd added for filters.
    c.stop_daemon("node").unwrap();
    c.teardown("node").unwrap();
    for v in &veths {
        assert_eq!(
            attached(&node, v, TcAttachType::Ingress),
            Vec::<String>::new()
        );
        let qdiscs = node.sh(&format!("tc qdisc show dev {v}")).unwrap();
        assert!(!qdiscs.contains("clsact"), "{v}: {qdiscs}");
    }
}
