//! The test-run part: ipipd's programs and their floors under `BPF_PROG_TEST_RUN`, and what one
//! packet of each path costs.

use std::{net::Ipv4Addr, process::Command};

use ipipd_tests::cluster::{Cluster, seed_nodes};

use super::scale::{rows, scale_peers};
use super::*;

/// What one packet of each test-run path costs (the `cost` build's counts: map accesses by
/// map, helper calls by helper) and the size of the program it runs.
pub(super) fn cost_table(t: &Value) -> String {
    let items = |v: &Value| -> (u64, String) {
        let Some(m) = v.as_object().filter(|m| !m.is_empty()) else {
            return (0, "none".into());
        };
        let total = m.values().filter_map(Value::as_u64).sum();
        let list = m
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        (total, list)
    };
    let mut s = String::from(
        "\nWhat one packet of each path costs (ipipd's programs built with their `cost` feature, on the same maps, a second packet: the caches warm), the BPF instructions it executes in ipipd's program and in its floor (counted by the bench's interpreter on the same maps, the program as compiled: before the verifier inlines an array lookup or rewrites a context access), and the program's size (translated instructions / instructions the verifier processed / JIT bytes):\n\n| path | map accesses | helper calls | insns run, ipipd / floor | program |\n|---|---|---|---|---|\n",
    );
    for p in t["paths"].as_array().into_iter().flatten() {
        let (nl, l) = items(&p["lookups"]);
        let (nh, h) = items(&p["helper_calls"]);
        let run = |k: &str| p[k].as_u64().map_or("–".to_string(), |n| n.to_string());
        s += &format!(
            "| {} | {nl}: {l} | {nh}: {h} | {} / {} | `{}` {} / {} / {} |\n",
            p["path"].as_str().unwrap_or(""),
            run("insns_run"),
            run("floor_insns_run"),
            p["program"].as_str().unwrap_or(""),
            p["program_insns"],
            p["verified_insns"],
            p["jited_bytes"],
        );
    }
    s
}

/// `ipipd-bench testrun` in the node namespace of a running A cluster (with `extra_blocks`
/// more remote blocks in its config).
pub(super) fn testrun(plan: &Plan, bench_bin: &Path, extra_blocks: usize) -> Result<Value> {
    let mut specs = seed_nodes(2);
    specs.push(ipipd_tests::cluster::NodeSpec::host(
        "stranger",
        Ipv4Addr::new(172, 31, 242, 200),
        20,
    ));
    let mut c = Cluster::new("btr", &specs)?;
    for n in ["master", "node"] {
        let mut cfg = c.config_for(n, "");
        if n == "node" {
            cfg += &scale_peers(extra_blocks);
        }
        c.start_daemon(n, Some(cfg))?;
    }
    let node = c.node("node");
    let m1 = c.node("master").pods[0].spec.address;
    node.pods[0]
        .ns
        .sh(&format!("ping -c 2 -i 0.2 -W 2 {m1} >/dev/null"))?;
    let out = ipipd_tests::check(
        Command::new("ip")
            .args(["netns", "exec", &node.ns.name])
            .arg(bench_bin)
            .args(["testrun", "--pin-dir"])
            .arg(c.bpffs.join("node"))
            .args(["--pod-if", &node.pods[0].spec.interface])
            .args(["--pod2-if", &node.pods[1].spec.interface])
            .args(["--remote-pod", &m1.to_string()])
            .args(["--peer", &c.node("master").spec.address.to_string()])
            .args(["--stranger", "172.31.242.200"])
            .args(["--calls", &plan.testrun_calls.to_string()])
            .args(["--repeat", &plan.testrun_repeat.to_string()]),
    )?;
    let n_routes = rows(&c, "routes")?;
    Ok(json!({"routes": n_routes, "paths": serde_json::from_slice::<Value>(&out.stdout)?}))
}
