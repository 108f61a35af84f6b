//! `cargo xtask bench`: ipipd side by side with the kernel's own paths, as ratios, in the seed's
//! netns topology. Setups, alternated within each round:
//! - A: ipipd IPIP (pods at the tunnel MTU, the uplink's - 20, as Calico sets them for IPIP),
//!   xdp off; A+xdp: native XDP on the uplinks; A_floor: A with the floor programs first in the
//!   TCX chains of the data direction's hooks (the in-situ floors); A_slow: A with
//!   `fast_path = false` (the kernel forwards every pod packet; ipipd still tunnels);
//! - B: the kernel's route table without a tunnel (Calico without IPIP): /32 routes to the pods'
//!   veths, proxy ARP, each block via its node on the underlay; B_mtu: the same with the pods at
//!   A's MTU, which separates what the tunnel's 20 bytes cost the pods' TCP from what the path
//!   costs;
//! - C: node to node on the underlay, the limit.
//!
//! Workloads: iperf3 TCP 1 and 4 streams, iperf3 UDP 64-byte datagrams, and TCP request/response
//! (64 bytes each way). Whole-machine busy CPU from /proc/stat over each run, per GB and per
//! million packets, with kernel.bpf_stats_enabled off. In A, each workload then runs once more
//! with it on, for each program's in-situ ns per run.
//! Then BPF_PROG_TEST_RUN per path against its floor (`ipipd-bench testrun`), and the control
//! plane at scale. Writes target/bench/bench.{md,json}.

mod control;
mod datastore;
mod profile;
mod report;
mod scale;
mod testrun;
mod traffic;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::setup;

use self::{
    control::{CHURN_RATE, CHURN_S, CNI_PODS, cni, pod_churn, restart},
    datastore::{DS_ADDS, DS_CHURN_RATE, DS_CHURN_S, DS_NODES, datastore},
    report::{markdown, report},
    scale::scale,
    testrun::testrun,
    traffic::{round_order, run_setup, setups},
};

pub struct Opts {
    pub quick: bool,
    /// Rounds of the traffic part; default 5 (1 when quick).
    pub rounds: Option<u32>,
    /// Where bench.md and bench.json go.
    pub out: std::path::PathBuf,
    /// ipipd, the CNI plugin the scale, CNI and churn parts start, and ipipd-bench.
    pub ipipd: std::path::PathBuf,
    pub cni_plugin: std::path::PathBuf,
    pub bench_bin: std::path::PathBuf,
    /// Record a system-wide `perf` profile of each setup's runs, one file per workload, into
    /// `<out>/perf-<setup>-<workload>.data`.
    pub profile: bool,
    /// The parts to run; empty: all.
    pub only: Vec<Part>,
    /// The iperf3 runs' TCP congestion control; None: the namespaces' default (the host's).
    pub cc: Option<String>,
    /// The scale part's endpoints.
    pub scale_endpoints: usize,
}

/// `--cc`: a congestion control this kernel has.
pub fn check_congestion_control(cc: &str) -> Result<()> {
    const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
    let available =
        std::fs::read_to_string(AVAILABLE).with_context(|| format!("reading {AVAILABLE}"))?;
    if !available.split_whitespace().any(|a| a == cc) {
        bail!(
            "--cc {cc}: not a TCP congestion control this kernel has (it has: {})",
            available.trim()
        );
    }
    Ok(())
}

/// The bench's independent parts (`--only`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Throughput, CPU, latency and in-situ program cost (setups A, B, B', C, D).
    Traffic,
    /// BPF_PROG_TEST_RUN per path against its floor.
    Testrun,
    /// The control plane at scale.
    Scale,
    /// Pod traffic across daemon restarts and a layout upgrade (1 kHz ping).
    Restart,
    /// CNI ADD and DEL, plugin process start to result.
    Cni,
    /// Pods created and deleted through ipipd-cni at 100/s for 60 s: ADD/DEL, and leaks.
    Churn,
    /// The datastore at 1,000 and 5,000 nodes: start to ready, a node added to its block in
    /// the map, the watch's lag under 100 changes per second.
    Datastore,
}

/// Whether the parts `only` asks for (all when empty) start `ipipd-cni`.
pub fn starts_plugin(only: &[Part]) -> bool {
    [Part::Scale, Part::Cni, Part::Churn]
        .into_iter()
        .any(|p| runs(only, p))
}

/// Which build of `ipipd-cni` the parts start: its path (the report's `cni_plugin`).
fn plugin_named() -> String {
    ipipd_tests::cluster::cni_binary().map_or_else(|e| e.to_string(), |p| p.display().to_string())
}

struct Plan {
    /// The options as given on the command line (for the report's reproduce line).
    args: String,
    /// Where perf profiles go, when profiling.
    profile: Option<std::path::PathBuf>,
    rounds: usize,
    seconds: u32,
    testrun_calls: u32,
    testrun_repeat: u32,
    scale_blocks: usize,
    scale_endpoints: usize,
    only: Vec<Part>,
    /// The iperf3 TCP runs' congestion control (`-C`): `--cc`, or the host's default.
    cc: String,
}

impl Plan {
    fn runs(&self, p: Part) -> bool {
        runs(&self.only, p)
    }
}

/// Whether `--only` (all parts when empty) runs part `p`.
fn runs(only: &[Part], p: Part) -> bool {
    only.is_empty() || only.contains(&p)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum Setup {
    A,
    AXdp,
    /// A with floor programs first on the data direction's hooks (in-situ floors).
    AFloor,
    /// A with `fast_path = false`.
    ASlow,
    B,
    /// B with the pods at A's MTU (the tunnel MTU).
    BMtu,
    C,
    /// The kernel's own IPIP (`tunl0`, Calico's classic mode), where the kernel has ipip.
    D,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::A => "A ipipd",
            Setup::AXdp => "A ipipd + XDP",
            Setup::AFloor => "A with the floors in front",
            Setup::ASlow => "A ipipd, fast_path = false",
            Setup::B => "B kernel routes, no tunnel",
            Setup::BMtu => "B' kernel routes, pods at the tunnel MTU",
            Setup::C => "C node to node",
            Setup::D => "D kernel tunl0",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Setup::A => "A",
            Setup::AXdp => "A_xdp",
            Setup::AFloor => "A_floor",
            Setup::ASlow => "A_slow",
            Setup::B => "B",
            Setup::BMtu => "B_mtu",
            Setup::C => "C",
            Setup::D => "D",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum Workload {
    Tcp1,
    Tcp4,
    Udp64,
    Rr,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Tcp1 => "TCP 1 stream",
            Workload::Tcp4 => "TCP 4 streams",
            Workload::Udp64 => "UDP 64 B",
            Workload::Rr => "TCP request/response 64 B",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Workload::Tcp1 => "tcp1",
            Workload::Tcp4 => "tcp4",
            Workload::Udp64 => "udp64",
            Workload::Rr => "rr",
        }
    }
}

/// The nodes of the seed cluster and their side of the data direction (the iperf3 client runs
/// on the master's pod).
const SIDES: [(&str, &str); 2] = [("master", "sender"), ("node", "receiver")];

/// The data direction's paths in situ: (path, `<program>@<side>` in A, its floor in A_floor).
/// (The uplink's egress runs no program of ipipd's: the encapsulated packets leave with none.)
const INSITU_PATHS: [(&str, &str, &str); 2] = [
    (
        "encap (sender's pod veth)",
        "from_pod@sender",
        "floor_encap@sender",
    ),
    (
        "decap (receiver's uplink)",
        "from_uplink@receiver",
        "floor_decap@receiver",
    ),
];

const WORKLOADS: [Workload; 4] = [
    Workload::Tcp1,
    Workload::Tcp4,
    Workload::Udp64,
    Workload::Rr,
];

/// One run of one workload on one setup.
#[derive(Clone, Debug, Default)]
struct Run {
    /// Gbit/s (TCP), packets/s (UDP), transactions/s (RR).
    rate: f64,
    bytes: f64,
    packets: f64,
    cpu_s: f64,
    /// TCP: the sender's retransmitted segments (iperf3) over the run.
    retransmits: f64,
    /// Per program: (Δrun_time_ns, Δrun_cnt, Δbytes counted by its hook).
    progs: BTreeMap<String, (f64, f64, f64)>,
}

pub fn run(opts: Opts) -> Result<()> {
    setup::require_root("the bench creates network namespaces and loads BPF programs")?;
    let quick = opts.quick;
    let plan = Plan {
        profile: opts.profile.then(|| opts.out.clone()),
        rounds: opts.rounds.unwrap_or(if quick { 1 } else { 5 }) as usize,
        args: [
            quick.then(|| " --quick".to_string()),
            opts.rounds.map(|n| format!(" --rounds {n}")),
            opts.cc.as_ref().map(|cc| format!(" --cc {cc}")),
            (!opts.only.is_empty()).then(|| {
                let parts: Vec<String> = opts
                    .only
                    .iter()
                    .filter_map(|p| {
                        Some(
                            clap::ValueEnum::to_possible_value(p)?
                                .get_name()
                                .to_string(),
                        )
                    })
                    .collect();
                format!(" --only {}", parts.join(","))
            }),
        ]
        .into_iter()
        .flatten()
        .collect(),
        seconds: if quick { 2 } else { 5 },
        testrun_calls: if quick { 20_000 } else { 100_000 },
        testrun_repeat: if quick { 200_000 } else { 1_000_000 },
        scale_blocks: 10_000,
        scale_endpoints: opts.scale_endpoints,
        only: opts.only.clone(),
        // A new namespace starts with the host's default.
        cc: match &opts.cc {
            Some(cc) => cc.clone(),
            None => std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
                .context("reading net.ipv4.tcp_congestion_control")?
                .trim()
                .to_string(),
        },
    };
    std::fs::create_dir_all(&opts.out)?;
    let (ipipd, bench_bin) = (opts.ipipd.clone(), opts.bench_bin.clone());
    // SAFETY: single-threaded here.
    unsafe {
        std::env::set_var("IPIPD_BIN", &ipipd);
        std::env::set_var("IPIPD_CNI_BIN", &opts.cni_plugin);
    }
    let started = Instant::now();
    let stats_was = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    let result = measure_all(&plan, &ipipd, &bench_bin);
    let _ = std::fs::write(BPF_STATS, stats_was.trim());
    let report = result?;
    let out = opts.out;
    let md = markdown(&report, &plan, started.elapsed());
    std::fs::write(out.join("bench.md"), &md)?;
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    println!("{md}");
    println!(
        "xtask bench: wrote {} and {} in {:.0} s",
        out.join("bench.md").display(),
        out.join("bench.json").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn measure_all(plan: &Plan, ipipd: &Path, bench_bin: &Path) -> Result<Value> {
    let setups = setups();
    let mut runs: BTreeMap<(Setup, Workload), Vec<Run>> = BTreeMap::new();
    let rounds = if plan.runs(Part::Traffic) {
        plan.rounds
    } else {
        0
    };
    for round in 0..rounds {
        for s in round_order(&setups, round) {
            eprintln!(
                "xtask bench: round {}/{}: {}",
                round + 1,
                plan.rounds,
                s.name()
            );
            for (w, r) in run_setup(s, plan, bench_bin)? {
                runs.entry((s, w)).or_default().push(r);
            }
        }
    }
    let testrun = if plan.runs(Part::Testrun) {
        eprintln!("xtask bench: BPF_PROG_TEST_RUN per path");
        testrun(plan, bench_bin, 0)?
    } else {
        Value::Null
    };
    let scale = if plan.runs(Part::Scale) {
        eprintln!(
            "xtask bench: control plane at {} blocks / {} endpoints",
            plan.scale_blocks, plan.scale_endpoints
        );
        scale(plan, ipipd, bench_bin)?
    } else {
        Value::Null
    };
    let restart = if plan.runs(Part::Restart) {
        eprintln!("xtask bench: a 1 kHz ping across 10 restarts and a layout upgrade");
        restart()?
    } else {
        Value::Null
    };
    let cni = if plan.runs(Part::Cni) {
        eprintln!("xtask bench: {CNI_PODS} CNI ADDs and DELs");
        cni()?
    } else {
        Value::Null
    };
    let churn = if plan.runs(Part::Churn) {
        eprintln!(
            "xtask bench: pod churn, {CHURN_RATE} pods/s created and deleted for {CHURN_S} s"
        );
        pod_churn()?
    } else {
        Value::Null
    };
    let ds = if plan.runs(Part::Datastore) {
        let mut v = Vec::new();
        for nodes in DS_NODES {
            eprintln!(
                "xtask bench: a node among {nodes} in etcd, then {DS_ADDS} more added, then {} at {DS_CHURN_RATE}/s",
                DS_CHURN_RATE * DS_CHURN_S
            );
            v.push(datastore(bench_bin, nodes)?);
        }
        Value::Array(v)
    } else {
        Value::Null
    };
    let mut r = report(plan, &runs, testrun, scale);
    r["restart"] = restart;
    r["cni"] = cni;
    r["datastore"] = ds;
    r["churn"] = churn;
    if let Some(dir) = &plan.profile
        && rounds > 0
    {
        r["profile"] = profile::of_runs(dir, &r["throughput"]);
    }
    Ok(r)
}

/// The median and the 99th percentile (nearest rank) of `v`.
fn median_p99(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return Value::Null;
    }
    let p99 = v[(v.len() * 99).div_ceil(100) - 1];
    json!({"median": v[v.len() / 2], "p99": p99, "n": v.len()})
}

/// kernel.bpf_stats_enabled, which the traffic part turns on for the in-situ runs only; the
/// bench puts back what it found.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Option<Stat> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(Stat {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    })
}

fn sj(s: Option<Stat>) -> Value {
    match s {
        Some(s) => json!({"median": s.median, "min": s.min, "max": s.max}),
        None => Value::Null,
    }
}
