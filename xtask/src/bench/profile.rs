//! `cargo xtask bench --profile`: where each setup's CPU per GB went. Each TCP run's
//! system-wide profile (`perf-<setup>-<workload>.data`, the last round's) is read back with
//! `perf report`, its busy samples split by kernel symbol into ipipd's programs and what they
//! call or cause, the kernel's own forwarding, and the rest; the shares are then taken of the
//! setup's measured CPU seconds per GB. This is issue 34's profile of A against C: what of A's
//! extra CPU the programs are, and what the topology is.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// What a kernel symbol's samples are counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The idle loop: not busy.
    Idle,
    /// A BPF program, the helpers ipipd's programs call (room for the outer header, the
    /// redirects, the hash map of the kernel-flows check) and the GSO re-check the room's
    /// `SKB_GSO_DODGY` mark makes every device do.
    Programs,
    /// The kernel's route table at work: route input, the FIB, `ip_forward`.
    Forwarding,
    /// Everything else: the TCP stacks, copies, devices, softirqs, scheduling.
    Other,
}

const IDLE: &[&str] = &[
    "pv_native_safe_halt",
    "native_safe_halt",
    "acpi_safe_halt",
    "default_idle",
    "poll_idle",
    "cpuidle_enter_state",
    "intel_idle",
];

const PROGRAM_PREFIXES: &[&str] = &[
    "bpf_prog_",
    "bpf_skb_adjust_room",
    "bpf_skb_generic_push",
    "bpf_skb_net_grow",
    "bpf_skb_change_",
    "bpf_redirect",
    "__bpf_redirect",
    "skb_do_redirect",
    "bpf_lru_",
    "htab_",
    "__htab_",
    "lookup_nulls_elem_raw",
    "tcx_run",
    "inet_gso_segment",
    "ipip_gso_segment",
    "tcp4_gso_segment",
    "tcp_gso_segment",
    "skb_mac_gso_segment",
    "__skb_gso_segment",
];

const FORWARDING_PREFIXES: &[&str] = &[
    "fib_",
    "__fib_",
    "ip_route_input",
    "ip_route_use_hint",
    "ip_mkroute_input",
    "__mkroute_input",
    "ip_forward",
    "ip_rt_",
];

pub fn class_of(symbol: &str) -> Class {
    if IDLE.contains(&symbol) {
        Class::Idle
    } else if PROGRAM_PREFIXES.iter().any(|p| symbol.starts_with(p)) {
        Class::Programs
    } else if FORWARDING_PREFIXES.iter().any(|p| symbol.starts_with(p)) {
        Class::Forwarding
    } else {
        Class::Other
    }
}

/// The (symbol, samples) lines of `perf report --no-children --sort sym --stdio -n -g none`:
/// `    15.20%      1234  [k] _raw_spin_unlock_irqrestore`.
pub fn parse(report: &str) -> Vec<(String, u64)> {
    report
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let samples = w.next()?.parse::<u64>().ok()?;
            let kind = w.next()?;
            if !(kind.starts_with('[') && kind.ends_with(']')) {
                return None;
            }
            let symbol = w.collect::<Vec<_>>().join(" ");
            (!symbol.is_empty()).then_some((symbol, samples))
        })
        .collect()
}

/// A profile's busy samples, and how many of them each class took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub busy: u64,
    pub programs: u64,
    pub forwarding: u64,
}

pub fn split(samples: &[(String, u64)]) -> Split {
    let mut s = Split::default();
    for (symbol, n) in samples {
        match class_of(symbol) {
            Class::Idle => continue,
            Class::Programs => s.programs += n,
            Class::Forwarding => s.forwarding += n,
            Class::Other => {}
        }
        s.busy += n;
    }
    s
}

/// Where the profile of `setup`'s runs of `workload` goes in `dir`.
pub fn file(dir: &Path, setup: &str, workload: &str) -> PathBuf {
    dir.join(format!("perf-{setup}-{workload}.data"))
}

/// The split of the profile at `path`.
fn read(path: &Path) -> Result<Split> {
    let out = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--sort",
            "sym",
            "--stdio",
            "-n",
            "-g",
            "none",
            "-i",
        ])
        .arg(path)
        .output()
        .context("running perf report (Debian's linux-perf)")?;
    if !out.status.success() {
        bail!(
            "perf report -i {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let s = split(&parse(&String::from_utf8_lossy(&out.stdout)));
    if s.busy == 0 {
        bail!("{}: no busy samples", path.display());
    }
    Ok(s)
}

/// The TCP workloads the split is made for (per GB).
const WORKLOADS: [&str; 2] = ["tcp1", "tcp4"];

/// Per TCP workload and setup (of `throughput`, the report's), the setup's median CPU seconds
/// per GB split as its profile in `dir` splits its busy samples.
pub fn of_runs(dir: &Path, throughput: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for w in WORKLOADS {
        let Some(setups) = throughput[w].as_object() else {
            continue;
        };
        let mut per = serde_json::Map::new();
        for (setup, v) in setups {
            let path = file(dir, setup, w);
            let Some(cpu) = v["cpu_s_per_gb"]["median"].as_f64() else {
                continue;
            };
            if !path.exists() || cpu <= 0.0 {
                continue;
            }
            // A profile that cannot be read costs its row, not the bench's other results.
            let row = match read(&path) {
                Ok(s) => {
                    let of = |n: u64| cpu * n as f64 / s.busy as f64;
                    json!({
                        "cpu_s_per_gb": cpu,
                        "programs": of(s.programs),
                        "forwarding": of(s.forwarding),
                        "rest": of(s.busy - s.programs - s.forwarding),
                        "busy_samples": s.busy,
                    })
                }
                Err(e) => {
                    eprintln!("xtask bench: --profile: {e:#}");
                    json!({ "cpu_s_per_gb": cpu, "error": format!("{e:#}") })
                }
            };
            per.insert(setup.clone(), row);
        }
        out.insert(w.into(), Value::Object(per));
    }
    Value::Object(out)
}

/// The split as a markdown table (empty without one).
pub fn markdown(profile: &Value) -> String {
    let Some(ws) = profile.as_object() else {
        return String::new();
    };
    let mut s = String::from(
        "\nWhere the CPU per GB went (`--profile`: each setup's profile of its last round, its busy samples split by kernel symbol, as shares of the setup's median CPU s per GB):\n\n| workload | setup | CPU s/GB | ipipd's programs and what they call or cause | the kernel's forwarding | the rest (TCP, copies, devices, softirqs, scheduling) | busy samples |\n|---|---|---|---|---|---|---|\n",
    );
    for (w, setups) in ws {
        for (setup, v) in setups.as_object().into_iter().flatten() {
            if let Some(e) = v["error"].as_str() {
                s += &format!(
                    "| {w} | {setup} | {:.2} | – | – | – | {e} |\n",
                    v["cpu_s_per_gb"].as_f64().unwrap_or(0.0)
                );
                continue;
            }
            let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
            s += &format!(
                "| {w} | {setup} | {:.2} | {:.3} | {:.3} | {:.3} | {} |\n",
                n("cpu_s_per_gb"),
                n("programs"),
                n("forwarding"),
                n("rest"),
                v["busy_samples"]
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_split_into_programs_forwarding_and_the_rest_without_idle() {
        let report = "\
# Samples: 10K of event 'cpu-clock:pppH'
#
    30.00%      3000  [k] pv_native_safe_halt
    20.00%      2000  [k] _raw_spin_unlock_irqrestore
     1.00%       100  [k] bpf_prog_9cfea2013e7e9968_from_pod
     0.50%        50  [k] bpf_skb_adjust_room
     0.40%        40  [k] inet_gso_segment
     0.30%        30  [k] __htab_map_lookup_elem
     0.20%        20  [k] fib_table_lookup
     0.10%        10  [k] ip_forward
     0.10%        10  [.] iperf_run_server
     0.05%         5  [k] 0xffffffffc0026e95
";
        let samples = parse(report);
        assert_eq!(samples.len(), 10);
        assert_eq!(samples[1], ("_raw_spin_unlock_irqrestore".into(), 2000));
        assert_eq!(
            split(&samples),
            Split {
                busy: 2265,
                programs: 220,
                forwarding: 30,
            }
        );
    }

    #[test]
    fn lines_that_are_not_a_symbols_samples_are_skipped() {
        assert!(parse("#\n# Total Lost Samples: 0\n\n    no numbers here\n").is_empty());
        assert!(parse("    12.5%   notanumber  [k] x\n").is_empty());
    }

    #[test]
    fn the_table_has_a_row_per_setup_and_a_profile_that_could_not_be_read_says_why() {
        let p = json!({"tcp1": {
            "A": {"cpu_s_per_gb": 0.83, "programs": 0.034, "forwarding": 0.0, "rest": 0.796, "busy_samples": 2508},
            "C": {"cpu_s_per_gb": 0.77, "error": "perf-C-tcp1.data: no busy samples"},
        }});
        let md = markdown(&p);
        assert!(
            md.contains("| tcp1 | A | 0.83 | 0.034 | 0.000 | 0.796 | 2508 |"),
            "{md}"
        );
        assert!(
            md.contains("| tcp1 | C | 0.77 | – | – | – | perf-C-tcp1.data: no busy samples |"),
            "{md}"
        );
        assert_eq!(markdown(&Value::Null), "");
    }

    #[test]
    fn symbols_are_classed_by_what_they_do() {
        assert_eq!(
            class_of("bpf_prog_12242f0d03c9e926_from_uplink"),
            Class::Programs
        );
        assert_eq!(class_of("skb_do_redirect"), Class::Programs);
        assert_eq!(class_of("fib_lookup_good_nhc"), Class::Forwarding);
        assert_eq!(class_of("ip_route_input_slow"), Class::Forwarding);
        assert_eq!(class_of("ip_forward_finish"), Class::Forwarding);
        assert_eq!(class_of("tcp_sendmsg_locked"), Class::Other);
        assert_eq!(class_of("cpuidle_enter_state"), Class::Idle);
    }
}
