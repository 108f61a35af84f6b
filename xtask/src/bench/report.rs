//! bench.json from the runs (medians and spreads, ratios round by round) and bench.md from it.

use std::process::Command;

use super::*;
use super::{testrun::cost_table, traffic::kernel_has_ipip};

pub(super) fn report(
    plan: &Plan,
    runs: &BTreeMap<(Setup, Workload), Vec<Run>>,
    testrun: Value,
    scale: Value,
) -> Value {
    let get = |s: Setup, w: Workload| runs.get(&(s, w)).cloned().unwrap_or_default();
    let mut throughput = serde_json::Map::new();
    let mut ratios = serde_json::Map::new();
    let mut cpu = serde_json::Map::new();
    for w in WORKLOADS {
        let mut per = serde_json::Map::new();
        for s in setups().into_iter().flatten() {
            let r = get(s, w);
            per.insert(
                s.key().into(),
                json!({
                    "rate": sj(stat(r.iter().map(|x| x.rate).collect())),
                    "cpu_s_per_gb": sj(stat(r.iter().map(|x| x.cpu_s / (x.bytes / 1e9)).collect())),
                    "cpu_s_per_mpkt": sj(stat(r.iter().map(|x| x.cpu_s / (x.packets / 1e6)).collect())),
                    "tcp_retransmits_per_gb": sj(stat(r.iter().map(|x| x.retransmits / (x.bytes / 1e9)).collect())),
                }),
            );
        }
        throughput.insert(w.key().into(), Value::Object(per));
        // Ratios per round (runs of one round were alternated side by side).
        let ratio = |a: Setup, b: Setup, f: &dyn Fn(&Run) -> f64| {
            let (x, y) = (get(a, w), get(b, w));
            stat(x.iter().zip(&y).map(|(p, q)| f(p) / f(q)).collect())
        };
        let rate = |r: &Run| r.rate;
        let per_gb = |r: &Run| r.cpu_s / r.bytes;
        ratios.insert(
            w.key().into(),
            json!({
                "A/B": sj(ratio(Setup::A, Setup::B, &rate)),
                "A/B_mtu": sj(ratio(Setup::A, Setup::BMtu, &rate)),
                "A/C": sj(ratio(Setup::A, Setup::C, &rate)),
                "A_xdp/B": sj(ratio(Setup::AXdp, Setup::B, &rate)),
                "A_xdp/C": sj(ratio(Setup::AXdp, Setup::C, &rate)),
                "A_slow/B": sj(ratio(Setup::ASlow, Setup::B, &rate)),
                "A_slow/A": sj(ratio(Setup::ASlow, Setup::A, &rate)),
                "A/D": sj(ratio(Setup::A, Setup::D, &rate)),
            }),
        );
        cpu.insert(
            w.key().into(),
            json!({
                "A/B cpu per byte": sj(ratio(Setup::A, Setup::B, &per_gb)),
                "A/B_mtu cpu per byte": sj(ratio(Setup::A, Setup::BMtu, &per_gb)),
                "A/C cpu per byte": sj(ratio(Setup::A, Setup::C, &per_gb)),
                "A_slow/A cpu per byte": sj(ratio(Setup::ASlow, Setup::A, &per_gb)),
                "A/D cpu per byte": sj(ratio(Setup::A, Setup::D, &per_gb)),
            }),
        );
    }
    // In-situ program cost per program and side (sender, receiver of the data), over every run
    // of a setup.
    let mut insitu = serde_json::Map::new();
    for s in [Setup::A, Setup::AXdp, Setup::AFloor] {
        let mut per_prog: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
        for w in WORKLOADS {
            for r in get(s, w) {
                for (name, v) in &r.progs {
                    per_prog.entry(name.clone()).or_default().push(*v);
                }
            }
        }
        let mut m = serde_json::Map::new();
        for (name, v) in per_prog {
            let (t, n, b): (f64, f64, f64) = v
                .iter()
                .fold((0.0, 0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1, a.2 + x.2));
            m.insert(
                name,
                json!({
                    "ns_per_run": sj(stat(v.iter().filter(|x| x.1 > 0.0).map(|x| x.0 / x.1).collect())),
                    "runs": n,
                    "ns_per_run_overall": if n > 0.0 { t / n } else { 0.0 },
                    "bytes_per_run": if n > 0.0 { b / n } else { 0.0 },
                }),
            );
        }
        insitu.insert(s.key().into(), Value::Object(m));
    }
    // Each data-direction path in situ against its floor in situ, per workload: ns per run in
    // A over ns per run in A_floor, round by round.
    let mut vs_floor = Vec::new();
    for w in WORKLOADS {
        for (path, prog, floor) in INSITU_PATHS {
            let per_run = |r: &Run, k: &str| {
                r.progs
                    .get(k)
                    .filter(|x| x.1 > 0.0)
                    .map(|x| (x.0 / x.1, x.2 / x.1))
            };
            let (a, f) = (get(Setup::A, w), get(Setup::AFloor, w));
            // ns (.0) or bytes (.1) per run of program `k`, over the runs of one setup.
            let column = |runs: &[Run], k: &str, pick: fn((f64, f64)) -> f64| {
                stat(
                    runs.iter()
                        .filter_map(|r| per_run(r, k))
                        .map(pick)
                        .collect(),
                )
            };
            let ns = column(&a, prog, |x| x.0);
            let bytes = column(&a, prog, |x| x.1);
            let fl = column(&f, floor, |x| x.0);
            let ratio = stat(
                a.iter()
                    .zip(&f)
                    .filter_map(|(p, q)| Some(per_run(p, prog)?.0 / per_run(q, floor)?.0))
                    .collect(),
            );
            vs_floor.push(json!({
                "workload": w.key(), "path": path, "program": prog, "floor": floor,
                "ns": sj(ns), "bytes_per_run": sj(bytes), "floor_ns": sj(fl), "over_floor": sj(ratio),
            }));
        }
    }
    let kvm = Path::new("/dev/kvm").exists();
    json!({
        "date": chrono_like_now(),
        "kernel": kernel_release(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        // With BBR, TCP's throughput here depends on the pods' MSS (see B_mtu).
        "tcp_congestion_control": plan.cc,
        "kvm_device": kvm,
        "rounds": plan.rounds,
        "seconds_per_run": plan.seconds,
        "throughput": throughput,
        "ratios": ratios,
        "cpu_ratios": cpu,
        "insitu": insitu,
        "insitu_vs_floor": vs_floor,
        "testrun": testrun,
        "scale": scale,
        "cni_plugin": plugin_named(),
        "D_kernel_tunl0": if kernel_has_ipip() {
            Value::String("measured (setup D; A/D in the ratios)".into())
        } else {
            Value::String(format!(
                "not measured: kernel {} has no ipip module (`cargo xtask bench --vm` measures it in the test VM)",
                kernel_release()
            ))
        },
    })
}

fn chrono_like_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The columns A, A + XDP, A_slow, B, B_mtu, C, D of one workload's `key` (a median with its
/// spread), scaled.
fn setup_cells(per_setup: &Value, key: &str, scale: f64, digits: usize) -> String {
    ["A", "A_xdp", "A_slow", "B", "B_mtu", "C", "D"]
        .map(|setup| {
            let v = &per_setup[setup][key];
            let g = |k: &str| v[k].as_f64().map(|x| x * scale);
            let scaled = match (g("median"), g("min"), g("max")) {
                (Some(m), Some(a), Some(b)) => json!({"median": m, "min": a, "max": b}),
                _ => Value::Null,
            };
            f(&scaled, digits)
        })
        .join(" | ")
}

fn f(v: &Value, digits: usize) -> String {
    match v.get("median").and_then(Value::as_f64) {
        Some(m) => {
            let lo = v["min"].as_f64().unwrap_or(m);
            let hi = v["max"].as_f64().unwrap_or(m);
            if (hi - lo).abs() < f64::EPSILON {
                format!("{m:.digits$}")
            } else {
                format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
            }
        }
        None => "–".into(),
    }
}

pub(super) fn markdown(r: &Value, plan: &Plan, took: Duration) -> String {
    let mut s = String::new();
    s += &format!(
        "Measured {} on kernel {} ({} CPUs{}), {} round(s) of {} s per run, alternating setups; `cargo xtask bench{}` ({:.0} s). Medians, with (min–max) over rounds.\n\n",
        r["date"].as_str().unwrap_or(""),
        r["kernel"].as_str().unwrap_or(""),
        r["cpus"],
        r["tcp_congestion_control"]
            .as_str()
            .map(|cc| format!(", TCP congestion control {cc}"))
            .unwrap_or_default(),
        plan.rounds,
        plan.seconds,
        plan.args,
        took.as_secs_f64()
    );
    if plan.runs(Part::Traffic) {
        s += "| workload | A ipipd | A + XDP | A, fast_path = false | B kernel routes | B' routes, tunnel MTU | C node to node | D kernel tunl0 | A/B | A/B' | A/C | A+XDP/C | A/D | A slow/A |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        let units = [
            ("tcp1", "Gbit/s", 2),
            ("tcp4", "Gbit/s", 2),
            ("udp64", "kpps", 0),
            ("rr", "k trans/s", 1),
        ];
        for (w, unit, d) in units {
            let scale = if unit == "Gbit/s" { 1.0 } else { 1e-3 };
            let name = WORKLOADS
                .iter()
                .find(|x| x.key() == w)
                .map_or(w, |x| x.name());
            s += &format!(
                "| {name} ({unit}) | {} | {} | {} | {} | {} | {} | {} |\n",
                setup_cells(&r["throughput"][w], "rate", scale, d),
                f(&r["ratios"][w]["A/B"], 2),
                f(&r["ratios"][w]["A/B_mtu"], 2),
                f(&r["ratios"][w]["A/C"], 2),
                f(&r["ratios"][w]["A_xdp/C"], 2),
                f(&r["ratios"][w]["A/D"], 2),
                f(&r["ratios"][w]["A_slow/A"], 2),
            );
        }
        s += "\nWhole-machine busy CPU seconds per GB (TCP) and per million packets (UDP 64 B), over the same runs:\n\n| | A ipipd | A + XDP | A, fast_path = false | B kernel routes | B' routes, tunnel MTU | C node to node | D kernel tunl0 | A/B | A/B' | A/D | A slow/A |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for (w, k, label) in [
            ("tcp1", "cpu_s_per_gb", "TCP 1 stream, CPU s/GB"),
            ("tcp4", "cpu_s_per_gb", "TCP 4 streams, CPU s/GB"),
            ("udp64", "cpu_s_per_mpkt", "UDP 64 B, CPU s/Mpkt"),
        ] {
            // Per byte and per packet give the same ratio within one workload.
            let ab = f(&r["cpu_ratios"][w]["A/B cpu per byte"], 2);
            let abm = f(&r["cpu_ratios"][w]["A/B_mtu cpu per byte"], 2);
            let ad = f(&r["cpu_ratios"][w]["A/D cpu per byte"], 2);
            let slow = f(&r["cpu_ratios"][w]["A_slow/A cpu per byte"], 2);
            let cells = setup_cells(&r["throughput"][w], k, 1.0, 2);
            s += &format!("| {label} | {cells} | {ab} | {abm} | {ad} | {slow} |\n");
        }
        s += "\nTCP retransmissions per GB (iperf3's sender), over the same runs:\n\n| | A ipipd | A + XDP | A, fast_path = false | B kernel routes | B' routes, tunnel MTU | C node to node | D kernel tunl0 |\n|---|---|---|---|---|---|---|---|\n";
        for (w, label) in [("tcp1", "TCP 1 stream"), ("tcp4", "TCP 4 streams")] {
            let cells = setup_cells(&r["throughput"][w], "tcp_retransmits_per_gb", 1.0, 1);
            s += &format!("| {label} | {cells} |\n");
        }
        s += "\nIn-situ program cost (kernel.bpf_stats_enabled), per program and side of the data direction (the iperf3 client's node sends), over every run; a GSO packet is one run:\n\n| program | ns per run (A) | bytes per run | ns per run (A + XDP) |\n|---|---|---|---|\n";
        if let Some(m) = r["insitu"]["A"].as_object() {
            for (name, v) in m {
                s += &format!(
                    "| `{name}` | {} | {:.0} | {} |\n",
                    f(&v["ns_per_run"], 0),
                    v["bytes_per_run"].as_f64().unwrap_or(0.0),
                    f(&r["insitu"]["A_xdp"][name]["ns_per_run"], 0),
                );
            }
        }
        s += "\nEach data-direction path in situ against its floor in situ (setup A_floor: the floor programs first in the TCX chains of the same hooks, same flow), per workload:\n\n| workload | path | program | ns per run | bytes per run | floor | floor ns per run | / floor |\n|---|---|---|---|---|---|---|---|\n";
        for p in r["insitu_vs_floor"].as_array().into_iter().flatten() {
            s += &format!(
                "| {} | {} | `{}` | {} | {} | `{}` | {} | {} |\n",
                p["workload"].as_str().unwrap_or(""),
                p["path"].as_str().unwrap_or(""),
                p["program"].as_str().unwrap_or(""),
                f(&p["ns"], 0),
                f(&p["bytes_per_run"], 0),
                p["floor"].as_str().unwrap_or(""),
                f(&p["floor_ns"], 0),
                f(&p["over_floor"], 2),
            );
        }
        s += &profile::markdown(&r["profile"]);
    }
    let tr = |t: &Value, title: &str| -> String {
        let mut s = format!(
            "\n{title} ({} routes in the map):\n\n| path | program | method | ns | floor | floor ns | / floor |\n|---|---|---|---|---|---|---|\n",
            t["routes"]
        );
        for p in t["paths"].as_array().into_iter().flatten() {
            s += &format!(
                "| {} | `{}` | {} | {} | `{}` | {} | {} |\n",
                p["path"].as_str().unwrap_or(""),
                p["program"].as_str().unwrap_or(""),
                p["method"].as_str().unwrap_or(""),
                f(&p["ns"], 0),
                p["floor"].as_str().unwrap_or(""),
                f(&p["floor_ns"], 0),
                f(&p["over_floor"], 2),
            );
        }
        s += &cost_table(t);
        s
    };
    if plan.runs(Part::Testrun) {
        s += &tr(
            &r["testrun"],
            "BPF_PROG_TEST_RUN, ns per run minus a do-nothing program measured the same way",
        );
    }
    if plan.runs(Part::Scale) {
        let sc = &r["scale"];
        s += &tr(&sc["testrun_at_scale"], "The same at scale");
        s += &format!(
            "\nControl plane: {} remote blocks and {} endpoints programmed from start to ready in {:.2} s, under a soft limit of {} open files (the daemon then held {} fds; their {} veths took {:.2} s to create); {} pods were attached as netlink filters first, all on TCX links {:.1} s after the start; an endpoint add took effect in {} ms (CLI round trip, the entry then in the map), a CNI ADD in {} ms and a DEL in {} ms (`ipipd-cni`: {}); a restart (SIGTERM, then a start that adopts it all) was ready in {:.2} s.\n",
            sc["blocks"],
            sc["endpoints"],
            sc["startup_to_ready_s"].as_f64().unwrap_or(0.0),
            sc["nofile_soft_limit"],
            sc["daemon_fds"],
            sc["endpoints"],
            sc["create_veths_s"].as_f64().unwrap_or(0.0),
            sc["netlink_filters_at_ready"],
            sc["all_tcx_s"].as_f64().unwrap_or(0.0),
            ms_median_p99(&sc["endpoint_add_ms"]),
            ms_median_p99(&sc["cni_add_ms"]),
            ms_median_p99(&sc["cni_del_ms"]),
            r["cni_plugin"].as_str().unwrap_or_default(),
            sc["restart_to_ready_s"].as_f64().unwrap_or(0.0),
        );
    }
    if plan.runs(Part::Restart) {
        let rs = &r["restart"];
        let row = |what: &str, v: &Value| {
            format!(
                "| {what} | {:.1} s | {} at {:.0}/s | {} | {:.1} ms |\n",
                v["during_s"].as_f64().unwrap_or(0.0),
                v["sent"],
                v["rate_per_s"].as_f64().unwrap_or(0.0),
                v["lost"],
                v["longest_gap_ms"].as_f64().unwrap_or(0.0),
            )
        };
        s += &format!(
            "\nRestart: a 1 kHz ping from a pod of the node to a pod of the other node (each restart, SIGTERM to ready: {} ms). The longest gap is the longest time between two replies.\n\n| during | for | pings | lost | longest gap |\n|---|---|---|---|---|\n{}{}",
            f(&rs["restart_ms"], 0),
            row(
                &format!("{} restarts", rs["restarts"]),
                &rs["during_restarts"]
            ),
            row("one layout upgrade", &rs["during_upgrade"]),
        );
    }
    if plan.runs(Part::Cni) {
        let cn = &r["cni"];
        let row = |what: &str, v: &Value| {
            format!(
                "| {what} | {:.1} ms | {:.1} ms |\n",
                v["median"].as_f64().unwrap_or(0.0),
                v["p99"].as_f64().unwrap_or(0.0)
            )
        };
        s += &format!(
            "\nCNI: `ipipd-cni` ({}) invoked as a runtime does, {CNI_PODS} pods on a node running ipipd, from the plugin's process start to its result.\n\n| command | median | p99 |\n|---|---|---|\n{}{}",
            r["cni_plugin"].as_str().unwrap_or_default(),
            row(
                "ADD (address, veth, pod's routes, endpoint attached)",
                &cn["add_ms"]
            ),
            row("DEL", &cn["del_ms"]),
        );
    }
    if plan.runs(Part::Churn) {
        let ch = &r["churn"];
        let f = |v: &Value| v.as_f64().unwrap_or(0.0);
        s += &format!(
            "\nPod churn: {} pods created and deleted through `ipipd-cni` ({}) on one node, {} per second for {} s on {} runtime threads (each: its namespace, ADD, DEL, namespace removed), in {:.1} s ({} started late; {} pods' `from_pod` on a TCX link at once, {} on a netlink filter, the daemon's pace); ADD median {:.1} ms, p99 {:.1} ms; DEL median {:.1} ms, p99 {:.1} ms. Left on the node afterwards: {}.\n",
            ch["pods"],
            r["cni_plugin"].as_str().unwrap_or_default(),
            ch["rate"],
            ch["seconds"],
            ch["workers"],
            f(&ch["took_s"]),
            ch["late"],
            ch["on_tcx"],
            ch["on_filters"],
            f(&ch["add_ms"]["median"]),
            f(&ch["add_ms"]["p99"]),
            f(&ch["del_ms"]["median"]),
            f(&ch["del_ms"]["p99"]),
            ch["left"],
        );
    }
    if plan.runs(Part::Datastore) {
        s += &format!(
            "\nDatastore (one etcd, Debian's): a real node started on N nodes with a block each is ready with all of them programmed; {DS_ADDS} nodes then added one at a time, each from its etcd transaction to its block in the node's routes map; then {DS_CHURN_RATE} nodes added per second for {DS_CHURN_S} s, paced, each one's lag from its transaction's start to the map (the watch keeping up), and how much of it was etcd's answer to the transaction.\n\n| nodes | written in | ready in | routes | RSS | add → map median | p99 | at {DS_CHURN_RATE}/s: lag median | p99 | max | of it etcd's answer, median / p99 | after the answer, median / p99 | writes late |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        );
        for d in r["datastore"].as_array().into_iter().flatten() {
            let f = |v: &Value| v.as_f64().unwrap_or(0.0);
            s += &format!(
                "| {} | {:.1} s | {:.2} s | {} | {} MiB | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {} |\n",
                d["nodes"],
                f(&d["fill_s"]),
                f(&d["start_to_ready_s"]),
                d["routes"],
                d["rss_kib"].as_u64().unwrap_or(0) / 1024,
                f(&d["add_to_map_ms"]["median"]),
                f(&d["add_to_map_ms"]["p99"]),
                f(&d["churn"]["lag_ms"]["median"]),
                f(&d["churn"]["lag_ms"]["p99"]),
                f(&d["churn"]["max_lag_ms"]),
                f(&d["churn"]["commit_ms"]["median"]),
                f(&d["churn"]["commit_ms"]["p99"]),
                f(&d["churn"]["after_commit_ms"]["median"]),
                f(&d["churn"]["after_commit_ms"]["p99"]),
                d["churn"]["late_writes"],
            );
        }
    }
    s += &format!(
        "\nD (the kernel's tunl0): {}\n",
        r["D_kernel_tunl0"].as_str().unwrap_or("")
    );
    s
}

/// "median (p99 P, n N)" of a [`median_p99`].
fn ms_median_p99(v: &Value) -> String {
    format!(
        "{:.1} (p99 {:.1}, n {})",
        v["median"].as_f64().unwrap_or(f64::NAN),
        v["p99"].as_f64().unwrap_or(f64::NAN),
        v["n"]
    )
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}
