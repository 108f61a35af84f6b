//! `ipipd-cni`, the CNI plugin: every command and error code invoked as the spec defines
//! (environment + stdin), and containers of a real runtime (podman with its CNI backend) on
//! two nodes running ipipd.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use ipipd_tests::{
    NetNs,
    cluster::{Cluster, NodeSpec, seed_nodes},
    cni::{Plugin, Podman},
    counters::ping,
    require_root,
    traffic::tcp_stream,
};
use serde_json::{Value, json};

/// The seed's two nodes, no pods, ipipd on both; `node`'s block is `node_block`.
fn cluster(tag: &str, node_block: &str) -> Cluster {
    let mut specs: Vec<NodeSpec> = seed_nodes(0);
    specs[1].block = node_block.into();
    let mut c = Cluster::new(tag, &specs).unwrap();
    c.start_daemon("master", None).unwrap();
    c.start_daemon("node", None).unwrap();
    c
}

fn ping_ok(ns: &NetNs, to: Ipv4Addr) -> bool {
    ping(ns, &format!("-c 2 -i 0.2 -W 2 {to}")).contains(" 2 received")
}

/// The node's IPAM file's allocations: (container, ifname, address).
fn allocations(c: &Cluster, node: &str) -> Vec<(String, String, String)> {
    let p = c.dir.join(node).join("state").join("ipam.json");
    let Ok(t) = std::fs::read_to_string(&p) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&t).unwrap();
    v["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["container_id"].as_str().unwrap().to_string(),
                a["ifname"].as_str().unwrap().to_string(),
                a["address"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `ipipd endpoints -o json` of the node (its state directory gives the pods' names).
fn endpoints(c: &Cluster, node: &str) -> Vec<Value> {
    c.ipipd_json(node, &["endpoints"])
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The node's links whose names start with `cali`.
fn cali_links(c: &Cluster, node: &str) -> BTreeSet<String> {
    c.node(node)
        .ns
        .ip("-o link show")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with("cali"))
        .collect()
}

/// ipipd's routes (proto 180) on the node, one line each.
fn ipipd_routes(c: &Cluster, node: &str) -> String {
    c.node(node).ns.ip("route show proto 180").unwrap()
}

#[test]
fn every_version_adds_checks_and_deletes_a_pod_that_talks() {
    if !require_root() {
        return;
    }
    let c = cluster("cni-ver", "192.168.83.128/26");
    let node = Plugin::new(&c, "node").unwrap();
    let master = Plugin::new(&c, "master").unwrap();

    // VERSION lists the four versions.
    let v = node.call(
        "VERSION",
        "",
        None,
        "",
        &json!({"cniVersion": "1.1.0"}),
        &[],
    );
    assert!(v.ok(), "{v}");
    assert_eq!(
        v.out["supportedVersions"],
        json!(["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    // A pod on master to reach across the tunnel.
    let far = NetNs::new("cni-ver-far").unwrap();
    let m = master.call(
        "ADD",
        "far0",
        Some(&far.name),
        "eth0",
        &master.conf("1.0.0"),
        &[],
    );
    assert!(m.ok(), "{m}\n{}", c.logs());
    let far_addr = m.address().unwrap();

    let mut pods = Vec::new();
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let ns = NetNs::new("cni-ver-p").unwrap();
        let id = format!("ctr{i}");
        let conf = node.conf(version);
        let args = [(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
        )];
        let r = node.call("ADD", &id, Some(&ns.name), "eth0", &conf, &args);
        assert!(r.ok(), "ADD {version}: {r}\n{}", c.logs());
        assert_eq!(r.out["cniVersion"], version);
        let addr = r.address().unwrap();
        // In the node's block 192.168.83.128/26, neither its first nor its last.
        let [a, b, c3, d] = addr.octets();
        assert!(
            [a, b, c3] == [192, 168, 83] && (129..=190).contains(&d),
            "{addr} outside the node's block or reserved"
        );
        // The format of the version asked for.
        let old = version == "0.3.1" || version == "0.4.0";
        assert_eq!(r.out["ips"][0]["version"] == "4", old, "{}", r.out);
        assert_eq!(r.out["ips"][0]["interface"], 1);
        assert_eq!(
            r.out["interfaces"][1].get("mtu").is_some(),
            version == "1.1.0"
        );
        assert_eq!(r.out["interfaces"][1]["name"], "eth0");
        assert_eq!(
            r.out["interfaces"][1]["sandbox"],
            format!("/run/netns/{}", ns.name)
        );
        assert_eq!(r.out["routes"][1]["gw"], "169.254.1.1");
        // The pod as Calico's: /32, the tunnel's MTU, the on-link gateway.
        let pod_link = ns.ip("-o link show eth0").unwrap();
        assert!(pod_link.contains("mtu 1480"), "{pod_link}");
        assert!(
            ns.ip("-o addr show eth0")
                .unwrap()
                .contains(&format!("{addr}/32")),
        );
        let routes = ns.ip("route").unwrap();
        assert!(
            routes.contains("default via 169.254.1.1 dev eth0"),
            "{routes}"
        );
        assert!(
            routes
                .lines()
                .any(|l| l.starts_with("169.254.1.1 dev eth0 ") && l.contains("scope link")),
            "{routes}"
        );
        let mac = r.out["interfaces"][1]["mac"].as_str().unwrap().to_string();
        assert!(pod_link.contains(&mac), "{pod_link} vs {mac}");
        // The node: the host veth, ipipd's /32 to it, the endpoint with its pod.
        let host = r.host_veth().unwrap();
        assert!(host.starts_with("cali") && host.len() == 15, "{host}");
        assert!(
            ipipd_routes(&c, "node").contains(&format!("{addr} dev {host}")),
            "{}",
            ipipd_routes(&c, "node")
        );
        let eps = endpoints(&c, "node");
        let ep = eps
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} not in {eps:?}"));
        assert_eq!(ep["pod"], "shop/web-0");
        assert_eq!(ep["interface"], host);
        // It talks: across the tunnel and to the pods before it on this node.
        assert!(ping_ok(&ns, far_addr), "{addr} → {far_addr}\n{}", c.logs());
        for (_, _, _, other) in &pods {
            assert!(ping_ok(&ns, *other), "{addr} → {other}");
        }
        // CHECK (0.4.0 on) agrees; before 0.4.0 it is not a command.
        let mut check_conf = conf.clone();
        check_conf["prevResult"] = r.out.clone();
        let ch = node.call("CHECK", &id, Some(&ns.name), "eth0", &check_conf, &[]);
        if old && version == "0.3.1" {
            assert_eq!(ch.error_code(), Some(1), "{ch}");
        } else {
            assert!(ch.ok(), "CHECK {version}: {ch}");
        }
        pods.push((ns, id, check_conf, addr));
    }

    // CHECK finds what was broken.
    let (ns, id, conf, _) = &pods[3];
    ns.ip("route del default").unwrap();
    let ch = node.call("CHECK", id, Some(&ns.name), "eth0", conf, &[]);
    assert_eq!(ch.error_code(), Some(104), "{ch}");
    assert!(
        ch.out["msg"].as_str().unwrap().contains("default route"),
        "{ch}"
    );

    // DEL, twice: the pod is gone from the node each time; the second finds nothing to do.
    let before = cali_links(&c, "node").len();
    for (ns, id, conf, addr) in &pods {
        for round in 0..2 {
            let d = node.call("DEL", id, Some(&ns.name), "eth0", conf, &[]);
            assert!(d.ok(), "DEL {round}: {d}");
            assert_eq!(d.out, Value::Null);
        }
        assert!(!ipipd_routes(&c, "node").contains(&format!("{addr} ")));
        assert!(
            !endpoints(&c, "node")
                .iter()
                .any(|e| e["address"] == addr.to_string())
        );
        assert!(ns.ip("-o link show eth0").is_err(), "eth0 still in the pod");
    }
    assert_eq!(cali_links(&c, "node").len(), before - pods.len());
    assert!(
        allocations(&c, "node").is_empty(),
        "{:?}",
        allocations(&c, "node")
    );
}

#[test]
fn bad_input_gets_the_specs_error_codes_and_a_failed_add_leaves_nothing() {
    if !require_root() {
        return;
    }
    let mut c = cluster("cni-err", "192.168.83.128/29");
    let node = Plugin::new(&c, "node").unwrap();
    let conf = node.conf("1.0.0");
    let pod = NetNs::new("cni-err-p").unwrap();

    // 4: the environment, naming what is missing.
    let e = node.call("ADD", "", Some(&pod.name), "eth0", &conf, &[]);
    assert_eq!(e.error_code(), Some(4), "{e}");
    assert!(
        e.out["msg"].as_str().unwrap().contains("CNI_CONTAINERID"),
        "{e}"
    );
    let e = node.call("ADD", "x1", None, "eth0", &conf, &[]);
    assert_eq!(e.error_code(), Some(4), "{e}");
    assert!(e.out["msg"].as_str().unwrap().contains("CNI_NETNS"), "{e}");
    let e = node.call("ADD", "x1", Some("ipipd-no-such-netns"), "eth0", &conf, &[]);
    assert_eq!(e.error_code(), Some(4), "{e}");
    // 6: stdin is not JSON; 7: a key is wrong; 1: a version not spoken.
    let env = |cmd: &str| -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), cmd.into()),
            ("CNI_CONTAINERID".into(), "x1".into()),
            ("CNI_NETNS".into(), format!("/run/netns/{}", pod.name)),
            ("CNI_IFNAME".into(), "eth0".into()),
        ]
    };
    let e = node.raw(&env("ADD"), b"{not json");
    assert_eq!(e.error_code(), Some(6), "{e}");
    let mut bad = conf.clone();
    bad["socket"] = json!("relative/ipipd.sock");
    assert_eq!(
        node.raw(&env("ADD"), bad.to_string().as_bytes())
            .error_code(),
        Some(7)
    );
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.2.0");
    let e = node.raw(&env("ADD"), old.to_string().as_bytes());
    assert_eq!(e.error_code(), Some(1), "{e}");
    // STATUS and GC are 1.1.0's.
    let e = node.call("STATUS", "", None, "", &conf, &[]);
    assert_eq!(e.error_code(), Some(1), "{e}");
    assert!(allocations(&c, "node").is_empty());

    // A full block: a /29 has 6 addresses to hand out (first and last reserved).
    let mut held = Vec::new();
    for i in 0..6 {
        let ns = NetNs::new("cni-err-f").unwrap();
        let r = node.call("ADD", &format!("f{i}"), Some(&ns.name), "eth0", &conf, &[]);
        assert!(r.ok(), "{r}\n{}", c.logs());
        held.push((ns, r.address().unwrap()));
    }
    let addrs: BTreeSet<Ipv4Addr> = held.iter().map(|h| h.1).collect();
    assert_eq!(addrs.len(), 6);
    assert!(!addrs.contains(&"192.168.83.128".parse().unwrap()));
    assert!(!addrs.contains(&"192.168.83.135".parse().unwrap()));
    let links = cali_links(&c, "node");
    let full = node.call("ADD", "f6", Some(&pod.name), "eth0", &conf, &[]);
    assert_eq!(full.error_code(), Some(101), "{full}");
    assert!(
        full.out["msg"]
            .as_str()
            .unwrap()
            .contains("no free address"),
        "{full}"
    );
    let status = node.call("STATUS", "", None, "", &node.conf("1.1.0"), &[]);
    assert_eq!(status.error_code(), Some(50), "{status}");
    assert_eq!(cali_links(&c, "node"), links, "a failed ADD left a veth");
    assert_eq!(allocations(&c, "node").len(), 6);
    assert!(pod.ip("-o link show eth0").is_err());

    // CNI_IFNAME taken in the pod: an error, and nothing of this attachment is left.
    let d = node.call("DEL", "f5", Some(&held[5].0.name), "eth0", &conf, &[]);
    assert!(d.ok(), "{d}");
    let dup = node.call("ADD", "dup", Some(&held[0].0.name), "eth0", &conf, &[]);
    assert_eq!(dup.error_code(), Some(102), "{dup}");
    assert_eq!(allocations(&c, "node").len(), 5);
    assert!(
        ping_ok(&held[0].0, held[1].1),
        "the first pod was disturbed"
    );

    // The daemon down: ADD is "try again" (11) and leaves nothing; STATUS says 50; DEL
    // removes the veth and asks to be retried (the address is the daemon's to release).
    c.stop_daemon("node").unwrap();
    let links = cali_links(&c, "node");
    let down = node.call("ADD", "late", Some(&pod.name), "eth0", &conf, &[]);
    assert_eq!(down.error_code(), Some(11), "{down}");
    assert_eq!(cali_links(&c, "node"), links);
    assert!(pod.ip("-o link show eth0").is_err());
    let status = node.call("STATUS", "", None, "", &node.conf("1.1.0"), &[]);
    assert_eq!(status.error_code(), Some(50), "{status}");
    // The pods keep talking with no daemon (the data plane stays).
    assert!(ping_ok(&held[0].0, held[1].1));
    c.restart_daemon("node").unwrap();
    assert_eq!(allocations(&c, "node").len(), 5);
    let status = node.call("STATUS", "", None, "", &node.conf("1.1.0"), &[]);
    assert!(status.ok(), "{status}");
    let late = node.call("ADD", "late", Some(&pod.name), "eth0", &conf, &[]);
    assert!(late.ok(), "{late}\n{}", c.logs());
    assert!(ping_ok(&pod, held[0].1));
    for (i, (ns, _)) in held.iter().enumerate().take(5) {
        assert!(
            node.call("DEL", &format!("f{i}"), Some(&ns.name), "eth0", &conf, &[])
                .ok()
        );
    }
    assert!(
        node.call("DEL", "late", Some(&pod.name), "eth0", &conf, &[])
            .ok()
    );
    assert!(allocations(&c, "node").is_empty());
    assert!(endpoints(&c, "node").is_empty());
}

#[test]
fn del_without_netns_gc_and_a_restart_between_add_and_del() {
    if !require_root() {
        return;
    }
    let mut c = cluster("cni-gc", "192.168.83.128/26");
    let node = Plugin::new(&c, "node").unwrap();
    let conf = node.conf("1.1.0");
    let mut pods = Vec::new();
    for id in ["a", "b", "c", "d"] {
        let ns = NetNs::new("cni-gc-p").unwrap();
        let r = node.call("ADD", id, Some(&ns.name), "eth0", &conf, &[]);
        assert!(r.ok(), "{r}\n{}", c.logs());
        pods.push((ns, id, r));
    }
    let before: Vec<_> = allocations(&c, "node");

    // A restart between ADD and DEL loses no allocation, and CHECK still agrees.
    c.stop_daemon("node").unwrap();
    c.restart_daemon("node").unwrap();
    assert_eq!(allocations(&c, "node"), before);
    let mut check = conf.clone();
    check["prevResult"] = pods[0].2.out.clone();
    let ch = node.call("CHECK", "a", Some(&pods[0].0.name), "eth0", &check, &[]);
    assert!(ch.ok(), "{ch}");

    // DEL with the netns already gone and no CNI_NETNS, no prevResult.
    let (ns_a, _, ra) = pods.remove(0);
    drop(ns_a);
    let d = node.call("DEL", "a", None, "eth0", &conf, &[]);
    assert!(d.ok(), "{d}");
    assert!(!cali_links(&c, "node").contains(&ra.host_veth().unwrap()));
    assert!(!allocations(&c, "node").iter().any(|x| x.0 == "a"));

    // GC with a partial list: b stays, c and d go (endpoint, route, veth, address).
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "b", "ifname": "eth0"}]);
    let g = node.call("GC", "", None, "", &gc, &[]);
    assert!(g.ok(), "{g}");
    let left: Vec<String> = allocations(&c, "node").into_iter().map(|x| x.0).collect();
    assert_eq!(left, ["b"]);
    let eps = endpoints(&c, "node");
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["address"], pods[0].2.address().unwrap().to_string());
    let links = cali_links(&c, "node");
    assert_eq!(links, [pods[0].2.host_veth().unwrap()].into());
    for (_, _, r) in &pods[1..] {
        assert!(!ipipd_routes(&c, "node").contains(&format!("{} ", r.address().unwrap())));
    }
    // b still talks to master's node address through its gateway.
    assert!(ping_ok(&pods[0].0, "172.31.242.156".parse().unwrap()));
    // Delegated IPAM: the reference host-local, inside the node's block.
    let pod = NetNs::new("cni-gc-hl").unwrap();
    let mut hl = conf.clone();
    hl["cniVersion"] = json!("1.0.0");
    hl["ipam"] = json!({
        "type": "host-local",
        "dataDir": c.dir.join("host-local"),
        "ranges": [[{"subnet": "192.168.83.128/26", "rangeStart": "192.168.83.180", "rangeEnd": "192.168.83.189"}]],
    });
    let r = node.call("ADD", "hl", Some(&pod.name), "eth0", &hl, &[]);
    assert!(r.ok(), "{r}\n{}", c.logs());
    let a = r.address().unwrap();
    assert!((180..=189).contains(&a.octets()[3]), "{a}");
    assert!(ping_ok(&pod, pods[0].2.address().unwrap()));
    assert!(!allocations(&c, "node").iter().any(|x| x.0 == "hl"));
    assert!(
        node.call("DEL", "hl", Some(&pod.name), "eth0", &hl, &[])
            .ok()
    );
    assert!(
        node.call("DEL", "hl", Some(&pod.name), "eth0", &hl, &[])
            .ok()
    );
    let hl_dir = c.dir.join("host-local").join("pods");
    assert!(!hl_dir.join(a.to_string()).exists(), "host-local kept {a}");
    assert_eq!(endpoints(&c, "node").len(), 1);

    // `ipipd endpoint add` without --address takes one from the same allocator; GC leaves
    // it alone (not the runtime's); `endpoint del` releases it.
    c.node("node")
        .ns
        .sh("ip link add calicli0 type veth peer name pcli0; ip link set calicli0 up")
        .unwrap();
    let state = c.dir.join("node").join("state");
    let state = state.to_string_lossy();
    let out = c
        .node("node")
        .ipipd(&[
            "endpoint",
            "add",
            "--interface",
            "calicli0",
            "--state-dir",
            &state,
        ])
        .unwrap();
    let cli: Ipv4Addr = out
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(
        allocations(&c, "node").contains(&(
            "ipipd-endpoint-add".into(),
            "calicli0".into(),
            cli.to_string()
        )),
        "{:?}",
        allocations(&c, "node")
    );
    assert!(node.call("GC", "", None, "", &gc, &[]).ok());
    assert!(
        allocations(&c, "node")
            .iter()
            .any(|a| a.2 == cli.to_string())
    );
    c.node("node")
        .ipipd(&[
            "endpoint",
            "del",
            "--address",
            &cli.to_string(),
            "--state-dir",
            &state,
        ])
        .unwrap();
    assert!(
        !allocations(&c, "node")
            .iter()
            .any(|a| a.2 == cli.to_string())
    );
}

/// The veth of a podman container on the node: the one whose endpoint has its address.
fn veth_of(c: &Cluster, node: &str, addr: Ipv4Addr) -> String {
    endpoints(c, node)
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .and_then(|e| e["interface"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no endpoint {addr} on {node}"))
}

#[test]
fn podman_containers_talk_across_nodes_and_rm_removes_them() {
    if !require_root() {
        return;
    }
    let c = cluster("cni-pm", "192.168.83.128/26");
    let pm_master = Podman::new(&c, "master", "1.0.0").unwrap();
    let pm_node = Podman::new(&c, "node", "1.0.0").unwrap();
    let logs = || {
        format!(
            "{}\n{}\n{}",
            c.logs(),
            pm_node.plugin_log(),
            pm_master.plugin_log()
        )
    };
    pm_master
        .run("m1")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    pm_node
        .run("n1")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    pm_node
        .run("n2")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
    let m1 = pm_master.address("m1").unwrap();
    let (n1, n2) = (
        pm_node.address("n1").unwrap(),
        pm_node.address("n2").unwrap(),
    );
    assert_eq!(m1.octets()[..3], [192, 168, 179], "{m1}");
    assert_eq!(n1.octets()[..3], [192, 168, 83], "{n1}");
    assert_ne!(n1, n2);
    let (m1_ns, n1_ns) = (pm_master.netns("m1").unwrap(), pm_node.netns("n1").unwrap());
    // Across the nodes, both ways, and on one node; busybox's ping inside the container too.
    assert!(ping_ok(&n1_ns, m1), "n1 → m1\n{}", logs());
    assert!(ping_ok(&m1_ns, n2), "m1 → n2\n{}", logs());
    assert!(ping_ok(&n1_ns, n2), "n1 → n2\n{}", logs());
    let inside = pm_node.exec("n2", &format!("ping -c 2 -W 2 {m1}")).unwrap();
    assert!(inside.contains("2 packets received"), "{inside}");
    // TCP across the tunnel, intact.
    let before = ipipd_tests::counters::stats(&c, "node");
    let t = tcp_stream(&m1_ns, m1, 5201, &n1_ns, 16 << 20, Duration::ZERO, &|| true).unwrap();
    assert_eq!(t.sent, t.received, "{t:?}");
    assert_eq!(t.sent.0, 16 << 20, "{t:?}");
    // `ipipd stats` shows it on n1's veth; `ipipd endpoints` names the containers (podman
    // passes K8S_POD_NAME).
    let after = ipipd_tests::counters::stats(&c, "node");
    let veth = veth_of(&c, "node", n1);
    let encap = (veth.clone(), "from_pod".to_string(), "encap".to_string());
    let sent = after.get(&encap).map_or(0, |a| a.1) - before.get(&encap).map_or(0, |b| b.1);
    assert!(
        sent >= 16 << 20,
        "{sent} bytes encapsulated from {veth}: {after:?}"
    );
    let eps = endpoints(&c, "node");
    let names: BTreeSet<&str> = eps.iter().filter_map(|e| e["pod"].as_str()).collect();
    assert_eq!(names, ["n1", "n2"].into(), "{eps:?}");

    // `ipipd monitor` names the container behind the veth.
    let n2_veth = veth_of(&c, "node", n2);
    let mon = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.node("node").ns.name))
        .arg(ipipd_tests::cluster::ipipd_binary().unwrap())
        .args(["monitor", "-o", "json", "--count", "6", "--seconds", "30"])
        .args(["--endpoint", &n2.to_string()])
        .arg("--state-dir")
        .arg(c.dir.join("node").join("state"))
        .arg("--pin-dir")
        .arg(c.bpffs.join("node"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mon = std::thread::scope(|s| {
        let h = s.spawn(|| mon.wait_with_output().unwrap());
        for _ in 0..60 {
            if h.is_finished() {
                break;
            }
            ping(&m1_ns, &format!("-c 1 -W 1 {n2}"));
        }
        h.join().unwrap()
    });
    let text = String::from_utf8_lossy(&mon.stdout);
    assert!(
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| e["interface"] == n2_veth && e["pod"] == "n2"),
        "no event of n2 on {n2_veth}: {text}{}",
        String::from_utf8_lossy(&mon.stderr)
    );

    // podman rm: the endpoint, the veth, the address and the route go.
    pm_node.rm("n1").unwrap();
    assert!(!cali_links(&c, "node").contains(&veth));
    assert!(!ipipd_routes(&c, "node").contains(&format!("{n1} ")));
    assert!(
        !endpoints(&c, "node")
            .iter()
            .any(|e| e["address"] == n1.to_string())
    );
    let held: Vec<String> = allocations(&c, "node").into_iter().map(|a| a.2).collect();
    assert_eq!(held, [n2.to_string()]);
    assert!(ping_ok(&m1_ns, n2), "m1 → n2 after n1 went");
}

#[test]
fn ten_parallel_podman_runs_then_create_remove_cycles_leak_nothing() {
    if !require_root() {
        return;
    }
    let c = cluster("cni-par", "192.168.83.128/26");
    let pm = Podman::new(&c, "node", "1.0.0").unwrap();
    let logs = || format!("{}\n{}", c.logs(), pm.plugin_log());
    let master = &c.node("master").ns;
    let fds = c.node("node").daemon.as_ref().unwrap().open_fds().unwrap();
    let links = cali_links(&c, "node");

    // 10 at once: 10 distinct addresses, all reachable from the other node.
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    std::thread::scope(|s| {
        for n in &names {
            let pm = &pm;
            s.spawn(move || pm.run(n).unwrap_or_else(|e| panic!("{n}: {e:#}")));
        }
    });
    let addrs: BTreeSet<Ipv4Addr> = names.iter().map(|n| pm.address(n).unwrap()).collect();
    assert_eq!(addrs.len(), 10, "{addrs:?}\n{}", logs());
    for a in &addrs {
        assert!(ping_ok(master, *a), "master → {a}\n{}", logs());
    }
    assert_eq!(allocations(&c, "node").len(), 10);
    for n in &names {
        pm.rm(n).unwrap();
    }

    // Create/remove cycles (podman run --rm: ADD then DEL).
    let cycles: usize = std::env::var("IPIPD_CNI_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for i in 0..cycles {
        pm.run_once(&format!("cycle{i}"))
            .unwrap_or_else(|e| panic!("cycle {i}: {e:#}\n{}", logs()));
    }
    assert_nothing_left(&c, &links, fds);
}

/// Pods created and deleted in parallel through the plugin, paced (a bounded slice of the
/// bench's 100/s for 60 s): every ADD and DEL succeeds, and nothing is left — no veth,
/// allocation, endpoint, pod route or daemon fd more than before.
#[test]
fn pod_churn_in_parallel_leaks_nothing() {
    if !require_root() {
        return;
    }
    let c = cluster("cni-churn", "192.168.83.128/26");
    let plugin = Plugin::new(&c, "node").unwrap();
    let fds = c.node("node").daemon.as_ref().unwrap().open_fds().unwrap();
    let links = cali_links(&c, "node");
    let r = ipipd_tests::cni::churn(&plugin, 20, 10, 4)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert_eq!((r.add_ms.len(), r.del_ms.len()), (200, 200));
    println!(
        "200 pods in {:?} ({} late); ADD median {:.1} ms, DEL median {:.1} ms",
        r.took,
        r.late,
        median(r.add_ms),
        median(r.del_ms)
    );
    assert_nothing_left(&c, &links, fds);
}

/// Pods added faster than TCX attaches go (each waits ~13 ms for an RCU grace period under
/// the RTNL lock, holding every link and route change of the node) get their `from_pod` on a
/// netlink filter (~1 ms) past the daemon's pace (`attach/pace.rs`), and talk at once; those still
/// there a while later move to TCX links without a lost ping. Their DEL leaves nothing.
/// Without TCX (6.1) every pod is on a filter, as always.
#[test]
fn pods_added_in_a_burst_talk_on_filters_then_move_to_tcx_links() {
    if !require_root() {
        return;
    }
    use dataplane_user::attach::pace::{PER_WINDOW, WINDOW};
    const N: usize = 24;
    let c = cluster("cni-burst", "192.168.83.128/26");
    let plugin = Plugin::new(&c, "node").unwrap();
    let master = &c.node("master").ns;
    let fds = c.node("node").daemon.as_ref().unwrap().open_fds().unwrap();
    let links = cali_links(&c, "node");
    let tcx = ipipd_tests::kernel_has_tcx();
    // The namespaces first: the ADDs then come one right after the other.
    let nss: Vec<NetNs> = (0..N).map(|_| NetNs::new("cni-burst").unwrap()).collect();
    let conf = plugin.conf("1.0.0");
    let call = |cmd: &str, i: usize, ns: &NetNs| {
        let r = plugin.call(
            cmd,
            &format!("burst{i}"),
            Some(&ns.name),
            "eth0",
            &conf,
            &[],
        );
        assert!(r.ok(), "{cmd} {i}: {r}\n{}", c.logs());
        r
    };
    let started = std::time::Instant::now();
    let addrs: Vec<Ipv4Addr> = nss
        .iter()
        .enumerate()
        .map(|(i, ns)| call("ADD", i, ns).address().unwrap())
        .collect();
    // However slow the machine, at most PER_WINDOW a window went on TCX links.
    let windows = (started.elapsed().as_nanos() / WINDOW.as_nanos()) as usize + 1;
    let pod_modes = || -> Vec<String> {
        let status = c.ipipd_json("node", &["status"]).unwrap();
        status["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str().filter(|a| a.contains(":from_pod")))
            .map(str::to_string)
            .collect()
    };
    let modes = pod_modes();
    let on_filters: Vec<&String> = modes.iter().filter(|m| m.ends_with("(netlink)")).collect();
    assert_eq!(modes.len(), N, "{modes:?}");
    println!(
        "{N} pods added in {:?}: {} on netlink filters",
        started.elapsed(),
        on_filters.len()
    );
    if tcx {
        assert!(
            on_filters.len() >= N.saturating_sub(PER_WINDOW * windows),
            "{N} pods in {windows} windows: {modes:?}"
        );
    } else {
        assert_eq!(on_filters.len(), N, "{modes:?}");
    }
    for a in &addrs {
        assert!(ping_ok(master, *a), "master → {a}\n{}", c.logs());
    }
    // The last pod's from_pod moves (on a TCX kernel) while it answers 10 pings a second.
    let last = *addrs.last().unwrap();
    let pinged = std::thread::scope(|s| {
        let p = s.spawn(|| ping(master, &format!("-c 200 -i 0.1 -W 1 {last}")));
        if tcx {
            ipipd_tests::eventually_within(
                "every pod on a TCX link",
                Duration::from_secs(60),
                || pod_modes().iter().all(|m| !m.ends_with("(netlink)")),
            );
        }
        p.join().unwrap()
    });
    assert!(pinged.contains(" 200 received"), "{pinged}\n{}", c.logs());
    assert!(pod_modes().iter().all(|m| m.ends_with("(netlink)") != tcx));
    for (i, ns) in nss.iter().enumerate() {
        call("DEL", i, ns);
    }
    assert_nothing_left(&c, &links, fds);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// After every pod went: the node's pod veths are `links` again, and no allocation, endpoint,
/// pod route or daemon fd more than the `fds` before is left.
fn assert_nothing_left(c: &Cluster, links: &BTreeSet<String>, fds: usize) {
    assert_eq!(&cali_links(c, "node"), links, "veths left");
    assert!(
        allocations(c, "node").is_empty(),
        "{:?}",
        allocations(c, "node")
    );
    assert!(
        endpoints(c, "node").is_empty(),
        "{:?}",
        endpoints(c, "node")
    );
    let routes = ipipd_routes(c, "node");
    assert!(!routes.contains(" dev cali"), "pod routes left: {routes}");
    let after = c.node("node").daemon.as_ref().unwrap().open_fds().unwrap();
    assert_eq!(after, fds, "the daemon's fds grew");
    // No netlink filter of a pod is recorded (the uplink's are, before TCX).
    let filters = c.dir.join("node/state/tc-filters.json");
    let filters = std::fs::read_to_string(filters).unwrap_or_default();
    assert!(!filters.contains("\"cali"), "filters left: {filters}");
}

/// The files of a directory with their modification times and modes.
fn files(dir: &std::path::Path) -> Vec<(String, std::time::SystemTime, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.modified().unwrap(),
                m.permissions().mode() & 0o7777,
            )
        })
        .collect();
    v.sort();
    v
}

/// `ipipd install-cni` as a DaemonSet's init container runs it, into a node's plugin and
/// config directories (which already hold the reference plugins and another network's
/// config): the plugin (0755) and `10-ipipd.conflist` (0644) in place, a second run changes
/// nothing, the other files untouched. Podman's CNI backend, reading those directories, then
/// runs containers that talk across nodes, and a `hostPort` works through the chained portmap.
#[test]
fn install_cni_puts_the_plugin_where_podman_looks_and_host_ports_work() {
    if !require_root() {
        return;
    }
    let c = cluster("cni-inst", "192.168.83.128/26");
    let mut pms = Vec::new();
    for node in ["master", "node"] {
        let (bin, netd) = (
            c.dir.join(format!("opt-cni-bin-{node}")),
            c.dir.join(format!("net.d-{node}")),
        );
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&netd).unwrap();
        for p in ["portmap", "host-local", "loopback"] {
            std::fs::copy(
                std::path::Path::new(ipipd_tests::cni::REFERENCE_PLUGINS).join(p),
                bin.join(p),
            )
            .unwrap_or_else(|e| panic!("{p}: {e} (containernetworking-plugins)"));
        }
        std::fs::write(
            netd.join("99-loopback.conf"),
            r#"{"cniVersion": "0.3.1", "name": "lo", "type": "loopback"}"#,
        )
        .unwrap();
        let state = c.dir.join(node).join("state");
        let args = |b: &std::path::Path, n: &std::path::Path| {
            vec![
                "install-cni".to_string(),
                "--bin-dir".into(),
                b.display().to_string(),
                "--conf-dir".into(),
                n.display().to_string(),
                "--state-dir".into(),
                state.display().to_string(),
            ]
        };
        let a = args(&bin, &netd);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let before = (files(&bin), files(&netd));
        let out = c.node(node).ipipd(&a).unwrap();
        assert!(
            out.contains("installed") && out.contains("10-ipipd.conflist"),
            "{out}"
        );
        let (b1, n1) = (files(&bin), files(&netd));
        assert!(
            b1.iter().any(|(f, _, m)| f == "ipipd-cni" && *m == 0o755),
            "{b1:?}"
        );
        assert!(
            n1.iter()
                .any(|(f, _, m)| f == "10-ipipd.conflist" && *m == 0o644),
            "{n1:?}"
        );
        for (f, t, m) in before.0.iter().chain(&before.1) {
            assert!(
                b1.iter()
                    .chain(&n1)
                    .any(|x| (&x.0, &x.1, &x.2) == (f, t, m)),
                "{f} changed"
            );
        }
        assert_eq!(
            b1.len() + n1.len(),
            before.0.len() + before.1.len() + 2,
            "{b1:?} {n1:?}"
        );
        let conf: Value =
            serde_json::from_slice(&std::fs::read(netd.join("10-ipipd.conflist")).unwrap())
                .unwrap();
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(
            conf["plugins"][0]["socket"],
            state.join("ipipd.sock").display().to_string()
        );
        assert_eq!(conf["plugins"][1]["type"], "portmap");
        // Again: nothing changes, not even a modification time.
        let out = c.node(node).ipipd(&a).unwrap();
        assert_eq!(out.matches("is up to date").count(), 2, "{out}");
        assert_eq!((files(&bin), files(&netd)), (b1, n1));
        pms.push(Podman::with_cni_dirs(&c, node, &bin, &netd).unwrap());
    }
    let (pm_master, pm_node) = (&pms[0], &pms[1]);
    pm_master.run("m1").unwrap();
    pm_node
        .run_publishing(
            "web",
            "8080:80",
            // A persistent listener: a loop of one-shot ones has gaps a connection can hit.
            "exec nc -ll -p 80 -e echo hostport-ok",
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let (m1, web) = (
        pm_master.address("m1").unwrap(),
        pm_node.address("web").unwrap(),
    );
    let m1_ns = pm_master.netns("m1").unwrap();
    assert!(ping_ok(&m1_ns, web), "m1 → web across nodes\n{}", c.logs());
    assert!(
        ping_ok(&pm_node.netns("web").unwrap(), m1),
        "web → m1\n{}",
        c.logs()
    );
    // The hostPort on node's address, from master's container and from master itself.
    let node_ip = c.node("node").spec.address;
    for (from, ns) in [
        ("master's container", &m1_ns),
        ("master", &c.node("master").ns),
    ] {
        let got = ipipd_tests::services::ask(
            ns,
            std::net::SocketAddrV4::new(node_ip, 8080),
            ipipd_tests::services::Proto::Tcp,
        );
        assert_eq!(
            got.as_deref().ok(),
            Some("hostport-ok"),
            "{from} → {node_ip}:8080: {got:?}\n{}\n{}",
            c.node("node")
                .ns
                .sh("iptables-save -t nat; conntrack -L 2>&1")
                .unwrap_or_default(),
            c.logs()
        );
    }
}
