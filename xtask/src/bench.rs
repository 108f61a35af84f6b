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

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ipipd_tests::{
    NetNs,
    cluster::{Cluster, PodSpec, seed_nodes},
};
use serde_json::{Value, json};

use crate::setup;

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

/// Whether the running kernel has the ipip module loaded (setup D).
fn kernel_has_ipip() -> bool {
    Path::new("/sys/module/ipip").exists()
}

/// The setups, in groups that run back to back: A with A_floor, whose in-situ program costs
/// are compared run for run, so that the machine's drift between the two stays small.
fn setups() -> Vec<Vec<Setup>> {
    let mut a = vec![Setup::A];
    // The floors go first in the TCX chain, in front of ipipd's programs.
    if ipipd_tests::kernel_has_tcx() {
        a.push(Setup::AFloor);
    }
    let mut v = vec![
        a,
        vec![Setup::AXdp],
        vec![Setup::ASlow],
        vec![Setup::B, Setup::BMtu],
        vec![Setup::C],
    ];
    if kernel_has_ipip() {
        v.push(vec![Setup::D]);
    }
    v
}

/// Round `round`'s order: the groups rotated by the round, and each group's own order reversed
/// every other round, so that drift of the machine spreads over every setup.
fn round_order(groups: &[Vec<Setup>], round: usize) -> Vec<Setup> {
    let mut order = Vec::new();
    for i in 0..groups.len() {
        let g = &groups[(i + round) % groups.len()];
        if round % 2 == 1 {
            order.extend(g.iter().rev());
        } else {
            order.extend(g.iter());
        }
    }
    order
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
        r["profile"] = crate::profile::of_runs(dir, &r["throughput"]);
    }
    Ok(r)
}

/// What a 1 kHz ping (`-i 0.001`: as fast as ping goes, about that) saw while `during` ran:
/// the replies that never came (the `icmp_seq`s missing below the last one answered: the tail
/// is in flight when ping is stopped) and the longest time between two replies (`-D`
/// timestamps), in ms.
fn ping_1khz<T>(
    from: &NetNs,
    to: Ipv4Addr,
    during: impl FnOnce() -> Result<T>,
) -> Result<(T, Value)> {
    use std::io::Read as _;
    let mut child = Command::new("ip")
        .args([
            "netns", "exec", &from.name, "ping", "-n", "-D", "-i", "0.001", "-W", "1",
        ])
        .args(["-c", "600000", "-w", "600"])
        .arg(to.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting ping")?;
    // Read as it comes: a full pipe would stop ping.
    let mut stdout = child.stdout.take().context("ping's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let r = during();
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait()?;
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("ping reader panicked"))??;
    let replies: BTreeMap<u64, f64> = out
        .lines()
        .filter_map(|l| {
            let ts = l
                .strip_prefix('[')?
                .split(']')
                .next()?
                .parse::<f64>()
                .ok()?;
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((seq, ts))
        })
        .collect();
    let last = replies.keys().next_back().copied().unwrap_or(0);
    let lost = (1..=last).filter(|s| !replies.contains_key(s)).count();
    let mut times: Vec<f64> = replies.values().copied().collect();
    times.sort_by(f64::total_cmp);
    let longest = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    let span = times.last().zip(times.first()).map_or(0.0, |(l, f)| l - f);
    Ok((
        r?,
        json!({
            "sent": last,
            "lost": lost,
            "longest_gap_ms": longest * 1e3,
            "rate_per_s": if span > 0.0 { times.len() as f64 / span } else { 0.0 },
            "during_s": took.as_secs_f64(),
        }),
    ))
}

/// Pod traffic across the node's daemon being restarted (SIGTERM, start) ten times, then across
/// a layout upgrade (the map pins renamed to an older layout while no daemon runs, as an older
/// build's would be): a 1 kHz ping from a pod of the node to a pod of the other node.
fn restart() -> Result<Value> {
    let mut c = Cluster::new("brs", &seed_nodes(1))?;
    c.start_daemon("master", None)?;
    c.start_daemon("node", None)?;
    let from = c.node("node").pods[0].ns.view();
    let to = c.node("master").pods[0].spec.address;
    let mut took = Vec::new();
    let (_, restarts) = ping_1khz(&from, to, || {
        for _ in 0..10 {
            let t = Instant::now();
            c.stop_daemon("node")?;
            c.restart_daemon("node")?;
            took.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    })?;
    let pin = c.bpffs.join("node");
    let version = format!("_v{}", dataplane_common::LAYOUT_VERSION);
    let older = format!("_v{}", dataplane_common::LAYOUT_VERSION - 1);
    let (_, upgrade) = ping_1khz(&from, to, || {
        c.stop_daemon("node")?;
        for name in dataplane_common::map_names::ALL {
            std::fs::rename(pin.join(name), pin.join(name.replace(&version, &older)))?;
        }
        c.restart_daemon("node")
    })?;
    let log = c
        .node("node")
        .daemon
        .as_ref()
        .map(|d| d.log_text())
        .unwrap_or_default();
    if !log.contains("upgrading the data plane") {
        bail!("the upgrade did not rebuild the maps:\n{log}");
    }
    Ok(json!({
        "restarts": took.len(),
        "restart_ms": sj(stat(took)),
        "during_restarts": restarts,
        "during_upgrade": upgrade,
    }))
}

/// The cluster sizes the datastore part writes into etcd (Kubernetes supports 5,000 nodes),
/// the nodes it then adds one at a time, and the churn it then writes: nodes added at a rate,
/// paced, for a time.
const DS_NODES: [u32; 2] = [1000, 5000];
const DS_ADDS: u32 = 100;
const DS_CHURN_RATE: u32 = 100;
const DS_CHURN_S: u32 = 10;

/// The datastore at scale: `nodes` nodes with a block each written into etcd (Debian's, in a
/// namespace on the underlay), then one real node started on it: the time to ready with every
/// one of them programmed as a peer and its RSS; then [`DS_ADDS`] nodes added one at a time,
/// each timed from its etcd transaction to its block's entry in the real node's routes map;
/// then [`DS_CHURN_RATE`] node additions per second for [`DS_CHURN_S`] s, each one's lag to the
/// map measured while the next ones are written (whether the watch keeps up).
fn datastore(bench_bin: &Path, nodes: u32) -> Result<Value> {
    let etcd_ip = Ipv4Addr::new(172, 31, 242, 10);
    // A /16 underlay: the bench's nodes have addresses on it (ds_node).
    let specs = [
        ipipd_tests::cluster::NodeSpec::host("etcd", etcd_ip, 16),
        ipipd_tests::cluster::NodeSpec::host("node", Ipv4Addr::new(172, 31, 242, 151), 16),
    ];
    let mut c = Cluster::new("bds", &specs)?;
    let etcd =
        ipipd_tests::etcd::Etcd::start(&c.node("etcd").ns, etcd_ip, 23790, &c.dir.join("etcd"))?;
    let prefix = "/ipipd/v1";
    let etcd_ns = c.node("etcd").ns.name.clone();
    let in_etcd_ns = |args: &[String]| -> Result<String> {
        let out = ipipd_tests::check(
            Command::new("ip")
                .args(["netns", "exec", &etcd_ns])
                .arg(bench_bin)
                .args(args),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let t = Instant::now();
    in_etcd_ns(&[
        "ds-fill".into(),
        "--etcd".into(),
        etcd.url.clone(),
        "--prefix".into(),
        prefix.into(),
        "--nodes".into(),
        nodes.to_string(),
    ])?;
    let fill_s = t.elapsed().as_secs_f64();
    let cfg = format!(
        "[node]\nname = \"real\"\nuplink = \"eth0\"\naddress = \"172.31.242.151\"\npin_dir = \"{}\"\n\n\
         [datastore]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\n\n[[pool]]\ncidr = \"10.64.0.0/10\"\nblock_size = 26\n",
        c.bpffs.join("node").display(),
        etcd.url
    );
    let t = Instant::now();
    c.start_daemon_within("node", Some(cfg), Duration::from_secs(600))?;
    let ready_s = t.elapsed().as_secs_f64();
    let routes = rows(&c, "routes")?;
    if routes < nodes as usize {
        bail!("the node programmed {routes} routes for {nodes} nodes");
    }
    // A bench command that writes to etcd while it watches the real node's routes map.
    let watching = |cmd: &str, args: &[(&str, String)]| -> Result<String> {
        let mut v: Vec<String> = vec![
            cmd.into(),
            "--etcd".into(),
            etcd.url.clone(),
            "--prefix".into(),
            prefix.into(),
            "--pin-dir".into(),
            c.bpffs.join("node").to_string_lossy().into_owned(),
        ];
        for (flag, value) in args {
            v.extend([format!("--{flag}"), value.clone()]);
        }
        in_etcd_ns(&v)
    };
    // Past the blocks the real node may claim (the pool's first free ones).
    let out = watching(
        "ds-add-wait",
        &[
            ("count", DS_ADDS.to_string()),
            ("first", (2 * nodes).to_string()),
        ],
    )?;
    let ms: Vec<f64> = serde_json::from_str(out.trim())?;
    let pid = c.node("node").daemon.as_ref().map(|d| d.pid()).unwrap_or(0);
    let rss_kib = || -> Result<u64> {
        Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0))
    };
    let rss_after_adds = rss_kib()?;
    let out = watching(
        "ds-churn",
        &[
            ("rate", DS_CHURN_RATE.to_string()),
            ("seconds", DS_CHURN_S.to_string()),
            ("first", (2 * nodes + DS_ADDS).to_string()),
        ],
    )?;
    let churn: Value = serde_json::from_str(out.trim())?;
    let series = |k: &str| -> Result<Vec<f64>> { Ok(serde_json::from_value(churn[k].clone())?) };
    let lag = series("lag_ms")?;
    let max_lag = lag.iter().copied().fold(0.0, f64::max);
    Ok(json!({
        "nodes": nodes,
        "fill_s": fill_s,
        "start_to_ready_s": ready_s,
        "routes": routes,
        "add_to_map_ms": median_p99(ms),
        "rss_kib": rss_after_adds,
        "churn": {
            "rate": DS_CHURN_RATE,
            "seconds": DS_CHURN_S,
            "lag_ms": median_p99(lag),
            "max_lag_ms": max_lag,
            "commit_ms": median_p99(series("commit_ms")?),
            "after_commit_ms": median_p99(series("after_commit_ms")?),
            "late_writes": churn["late_writes"],
            "rss_kib": rss_kib()?,
        },
    }))
}

/// Pods the CNI part adds and deletes.
const CNI_PODS: usize = 100;

/// The pod churn: pods per second, for how long, on how many runtime threads.
const CHURN_RATE: u32 = 100;
const CHURN_S: u32 = 60;
const CHURN_WORKERS: usize = 16;

/// Pod churn through `ipipd-cni` on one node ([`ipipd_tests::cni::churn`]): each pod's
/// namespace made, ADD, DEL, namespace removed, at [`CHURN_RATE`] a second for [`CHURN_S`] s;
/// then what is left on the node (veths, allocations, endpoints, pod routes, the daemon's fds
/// against before), which must be nothing.
fn pod_churn() -> Result<Value> {
    let mut specs = seed_nodes(0);
    specs[1].block = "192.168.83.0/25".into();
    let mut c = Cluster::new("bchurn", &specs)?;
    c.start_daemon("master", None)?;
    c.start_daemon("node", None)?;
    let plugin = ipipd_tests::cni::Plugin::new(&c, "node")?;
    let fds = c
        .node("node")
        .daemon
        .as_ref()
        .map(|d| d.open_fds())
        .transpose()?;
    let veths = |c: &Cluster| -> Result<usize> {
        Ok(c.node("node")
            .ns
            .ip("-o link show type veth")?
            .lines()
            .count())
    };
    let veths_before = veths(&c)?;
    let r = ipipd_tests::cni::churn(&plugin, CHURN_RATE, CHURN_S, CHURN_WORKERS)?;
    let json_rows = |args: &[&str]| -> Result<usize> {
        Ok(c.ipipd_json("node", args)?
            .as_array()
            .map_or(0, |a| a.len()))
    };
    // How many went on a TCX link at once, how many on a netlink filter (the daemon's pace).
    let log = c
        .node("node")
        .daemon
        .as_ref()
        .map(|d| d.full_log())
        .unwrap_or_default();
    let attached = |mode: &str| log.matches(&format!("({mode}, from_pod)")).count();
    let left = json!({
        "veths": veths(&c)? as i64 - veths_before as i64,
        "allocations": std::fs::read_to_string(c.dir.join("node/state/ipam.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["allocations"].as_array().map(|a| a.len()))
            .unwrap_or(0),
        "endpoints": json_rows(&["endpoints"])?,
        "pod_routes": c.node("node").ns.ip("route show proto 180")?.lines().filter(|l| l.contains(" dev cali")).count(),
        "fds": match (fds, c.node("node").daemon.as_ref().map(|d| d.open_fds()).transpose()?) {
            (Some(a), Some(b)) => b as i64 - a as i64,
            _ => 0,
        },
    });
    Ok(json!({
        "pods": r.add_ms.len(),
        "rate": CHURN_RATE,
        "seconds": CHURN_S,
        "workers": CHURN_WORKERS,
        "took_s": r.took.as_secs_f64(),
        "late": r.late,
        "on_tcx": attached("tcx"),
        "on_filters": attached("netlink"),
        "add_ms": median_p99(r.add_ms),
        "del_ms": median_p99(r.del_ms),
        "left": left,
    }))
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

/// What one packet of each test-run path costs (the `cost` build's counts: map accesses by
/// map, helper calls by helper) and the size of the program it runs.
fn cost_table(t: &Value) -> String {
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
        "\nWhat one packet of each path costs (ipipd's programs built with their `cost` feature, on the same maps, a second packet: the caches warm), and the program's size (translated instructions / instructions the verifier processed / JIT bytes):\n\n| path | map accesses | helper calls | program |\n|---|---|---|---|\n",
    );
    for p in t["paths"].as_array().into_iter().flatten() {
        let (nl, l) = items(&p["lookups"]);
        let (nh, h) = items(&p["helper_calls"]);
        s += &format!(
            "| {} | {nl}: {l} | {nh}: {h} | `{}` {} / {} / {} |\n",
            p["path"].as_str().unwrap_or(""),
            p["program"].as_str().unwrap_or(""),
            p["program_insns"],
            p["verified_insns"],
            p["jited_bytes"],
        );
    }
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

/// CNI ADD then DEL of [`CNI_PODS`] pods on a node running ipipd, each timed from the plugin
/// process's start to its result (the daemon's allocation, the veth, the pod's address and
/// routes, the endpoint attached and in the maps; DEL: the reverse).
fn cni() -> Result<Value> {
    // A /25 for the node: 126 addresses to hand out, more than the pods.
    let mut specs = seed_nodes(0);
    specs[1].block = "192.168.83.0/25".into();
    let mut c = Cluster::new("bcni", &specs)?;
    c.start_daemon("master", None)?;
    c.start_daemon("node", None)?;
    let (add, del) = cni_calls(&c, "node", CNI_PODS)?;
    Ok(json!({"add_ms": add, "del_ms": del}))
}

/// How often the control-plane benches add a pod: a fifth slower than the daemon's pace (8 in a
/// second, `attach/pace.rs`; xtask cannot name it: dataplane-user builds only after `cargo
/// xtask setup`), so that each one's `from_pod` goes on a TCX link at once, as a pod's that
/// comes alone does (the churn measures pods that come faster).
const ONE_POD_EVERY: Duration = Duration::from_millis(150);

/// Waits until `next`, then sets it [`ONE_POD_EVERY`] later.
fn pod_pace(next: &mut Instant) {
    std::thread::sleep(next.saturating_duration_since(Instant::now()));
    *next = Instant::now() + ONE_POD_EVERY;
}

/// `pods` pods, each in its namespace, added through `ipipd-cni` on `node` one after another
/// ([`ONE_POD_EVERY`]), then deleted: each call timed from the plugin's start to its result
/// (median, p99 in ms).
fn cni_calls(c: &Cluster, node: &str, pods: usize) -> Result<(Value, Value)> {
    let plugin = ipipd_tests::cni::Plugin::new(c, node)?;
    let conf = plugin.conf("1.0.0");
    let pods: Vec<ipipd_tests::NetNs> = (0..pods)
        .map(|_| ipipd_tests::NetNs::new("bcni-p"))
        .collect::<Result<_>>()?;
    let (mut add, mut del) = (Vec::new(), Vec::new());
    let mut pace = Instant::now();
    for (cmd, times) in [("ADD", &mut add), ("DEL", &mut del)] {
        for (i, p) in pods.iter().enumerate() {
            if cmd == "ADD" {
                pod_pace(&mut pace);
            }
            let t = Instant::now();
            let r = plugin.call(cmd, &format!("b{i}"), Some(&p.name), "eth0", &conf, &[]);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if !r.ok() {
                bail!("{cmd} {i}: {r}");
            }
        }
    }
    Ok((median_p99(add), median_p99(del)))
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// kernel.bpf_stats_enabled: each program's run time and count, at the price of two clock
/// reads per run. On only while the programs' in-situ cost is measured.
fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write(BPF_STATS, if on { "1" } else { "0" })
        .with_context(|| format!("writing {BPF_STATS}"))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn cpu_busy_s() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((total - idle) / hz)
}

/// Builds one setup, runs every workload on it, and tears it down.
fn run_setup(s: Setup, plan: &Plan, bench_bin: &Path) -> Result<Vec<(Workload, Run)>> {
    let mut c = Cluster::new(&format!("b{}", s.key()), &seed_nodes(1))?;
    // Program id -> which side of the data direction its ipipd runs on.
    let mut roles: BTreeMap<u32, &'static str> = BTreeMap::new();
    // The pods' MTU where a tunnel's (or, in B_mtu, its MTU's) 20 bytes come off the uplink's.
    let tunnel_mtu = |c: &Cluster, n: &str| -> Result<()> {
        let node = c.node(n);
        node.pods[0]
            .ns
            .sh(&format!("ip link set eth0 mtu {}", node.spec.mtu - 20))?;
        Ok(())
    };
    let (client, server, server_ip) = match s {
        Setup::A | Setup::AXdp | Setup::AFloor | Setup::ASlow => {
            for (n, role) in SIDES {
                tunnel_mtu(&c, n)?;
                let extra = match s {
                    Setup::AXdp => "xdp = \"native\"",
                    Setup::ASlow => "fast_path = false",
                    _ => "",
                };
                let cfg = c.config_for(n, extra);
                loaded_by(bench_bin, &mut roles, role, || c.start_daemon(n, Some(cfg)))?;
            }
            (
                c.node("master").pods[0].ns.view(),
                c.node("node").pods[0].ns.view(),
                c.node("node").pods[0].spec.address,
            )
        }
        Setup::B | Setup::BMtu => {
            if s == Setup::BMtu {
                for (n, _) in SIDES {
                    tunnel_mtu(&c, n)?;
                }
            }
            c.node("master").kernel_plain_routing(c.node("node"))?;
            c.node("node").kernel_plain_routing(c.node("master"))?;
            (
                c.node("master").pods[0].ns.view(),
                c.node("node").pods[0].ns.view(),
                c.node("node").pods[0].spec.address,
            )
        }
        Setup::D => {
            for (n, peer) in [("master", "node"), ("node", "master")] {
                tunnel_mtu(&c, n)?;
                c.node(n).kernel_tunl0(c.node(peer))?;
            }
            (
                c.node("master").pods[0].ns.view(),
                c.node("node").pods[0].ns.view(),
                c.node("node").pods[0].spec.address,
            )
        }
        Setup::C => (
            c.node("master").ns.view(),
            c.node("node").ns.view(),
            c.node("node").spec.address,
        ),
    };
    // Warm up neighbours (and, in A, the programs) before measuring.
    let warm = client.sh(&format!("ping -c 2 -i 0.2 -W 2 {server_ip} >/dev/null"));
    if let Err(e) = warm {
        bail!(
            "{}: no connectivity before the runs: {e:#}\n{}",
            s.name(),
            c.logs()
        );
    }
    let _floors = if s == Setup::AFloor {
        Some(Floors::attach(&c, bench_bin, &mut roles)?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (i, w) in WORKLOADS.into_iter().enumerate() {
        let port = 5300 + 2 * i as u16;
        let one_run = |port: u16| match w {
            Workload::Rr => rr(&client, &server, server_ip, port, plan.seconds),
            _ => iperf(&client, &server, server_ip, port, w, plan),
        };
        // Throughput and CPU with kernel.bpf_stats_enabled off: B and C do not pay for the
        // kernel's per-run accounting, so A must not either. (A_floor is measured for its
        // program costs only.)
        let mut r = Run::default();
        if s != Setup::AFloor {
            set_bpf_stats(false)?;
            let perf = match &plan.profile {
                Some(dir) => Some(
                    Command::new("perf")
                        .args(["record", "-a", "-g", "-F", "999", "-q", "-o"])
                        .arg(crate::profile::file(dir, s.key(), w.key()))
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("starting perf record (Debian's linux-perf)")?,
                ),
                None => None,
            };
            let cpu0 = cpu_busy_s()?;
            r = one_run(port)?;
            r.cpu_s = cpu_busy_s()? - cpu0;
            if let Some(mut p) = perf {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
                let _ = p.wait();
            }
        }
        // The programs' in-situ cost: the same workload again, with the accounting on.
        if matches!(s, Setup::A | Setup::AXdp | Setup::AFloor | Setup::ASlow) {
            set_bpf_stats(true)?;
            let (p0, h0) = (progstats(bench_bin)?, hook_bytes(&c)?);
            let stats_run = one_run(port + 1);
            let (p1, h1) = (progstats(bench_bin)?, hook_bytes(&c)?);
            set_bpf_stats(false)?;
            let stats_run = stats_run?;
            if s == Setup::AFloor {
                r = stats_run;
            }
            for (id, (name, t1, n1)) in &p1 {
                let Some(role) = roles.get(id) else { continue };
                let key = format!("{name}@{role}");
                let (_, t0, n0) = p0.get(id).cloned().unwrap_or_default();
                let b = h1.get(&key).copied().unwrap_or(0.0) - h0.get(&key).copied().unwrap_or(0.0);
                let e = r.progs.entry(key).or_default();
                e.0 += t1 - t0;
                e.1 += n1 - n0;
                e.2 += b;
            }
        }
        out.push((w, r));
    }
    drop(c);
    Ok(out)
}

fn iperf(
    client: &NetNs,
    server: &NetNs,
    server_ip: Ipv4Addr,
    port: u16,
    w: Workload,
    plan: &Plan,
) -> Result<Run> {
    let seconds = plan.seconds;
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &server.name, "timeout"])
        .arg((seconds + 30).to_string())
        .args(["iperf3", "-s", "-1", "-B"])
        .arg(server_ip.to_string())
        .arg("-p")
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let mut args: Vec<String> = vec![
        "-c".into(),
        server_ip.to_string(),
        "-p".into(),
        port.to_string(),
        "-t".into(),
        seconds.to_string(),
        "-J".into(),
    ];
    match w {
        Workload::Tcp4 => args.extend(["-P".into(), "4".into()]),
        Workload::Udp64 => args.extend(["-u", "-b", "0", "-l", "64"].map(String::from)),
        _ => {}
    }
    if matches!(w, Workload::Tcp1 | Workload::Tcp4) {
        args.extend(["-C".into(), plan.cc.clone()]);
    }
    let mut last_err = String::new();
    let mut parsed = None;
    // The server needs a moment to listen: a bounded number of tries.
    for _ in 0..20 {
        let out = Command::new("ip")
            .args(["netns", "exec", &client.name, "timeout"])
            .arg((seconds + 20).to_string())
            .arg("iperf3")
            .args(&args)
            .output()
            .context("running iperf3 -c")?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if out.status.success() && v.get("error").is_none() {
            parsed = Some(v);
            break;
        }
        last_err = v["error"].as_str().unwrap_or("no output").to_string();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = srv.wait();
    let v = parsed.with_context(|| format!("iperf3 {}: {last_err}", w.name()))?;
    let end = &v["end"];
    Ok(match w {
        Workload::Udp64 => {
            let sum = &end["sum"];
            let sent = sum["packets"].as_f64().unwrap_or(0.0);
            let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
            let secs = sum["seconds"].as_f64().unwrap_or(seconds as f64).max(0.001);
            let received = (sent - lost).max(0.0);
            Run {
                rate: received / secs,
                bytes: received * 64.0,
                packets: received,
                ..Default::default()
            }
        }
        _ => {
            let sum = &end["sum_received"];
            let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
            Run {
                retransmits: end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
                rate: sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
                bytes,
                // Full-sized segments of the pod MTU: the packet count the bytes stand for.
                packets: bytes / 1428.0,
                ..Default::default()
            }
        }
    })
}

/// TCP request/response, 64 bytes each way, one connection, for `seconds`.
fn rr(client: &NetNs, server: &NetNs, server_ip: Ipv4Addr, port: u16, seconds: u32) -> Result<Run> {
    let listener =
        server.enter(move || TcpListener::bind(SocketAddrV4::new(server_ip, port)))??;
    let srv = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 64];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(_) => return Ok(()),
            }
        }
    });
    let n = client.enter(move || -> Result<u64> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddrV4::new(server_ip, port).into(),
            Duration::from_secs(5),
        )?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [7u8; 64];
        let end = Instant::now() + Duration::from_secs(seconds as u64);
        let mut n = 0u64;
        while Instant::now() < end {
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            n += 1;
        }
        Ok(n)
    })??;
    let _ = srv.join();
    let rate = n as f64 / seconds as f64;
    Ok(Run {
        rate,
        bytes: n as f64 * 128.0,
        packets: n as f64 * 2.0,
        ..Default::default()
    })
}

/// (name, run_time_ns, run_cnt) of every loaded program of ipipd's and the floors', by id.
fn progstats(bench_bin: &Path) -> Result<BTreeMap<u32, (String, f64, f64)>> {
    let out = Command::new(bench_bin)
        .arg("progstats")
        .output()
        .context("ipipd-bench progstats")?;
    if !out.status.success() {
        bail!(
            "ipipd-bench progstats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(id, x)| {
            Some((
                id.parse().ok()?,
                (
                    x["name"].as_str()?.to_string(),
                    x["run_time_ns"].as_f64().unwrap_or(0.0),
                    x["run_cnt"].as_f64().unwrap_or(0.0),
                ),
            ))
        })
        .collect())
}

/// Runs `load`, then gives every program it loaded (an id that was not loaded before) to
/// `role`, the side of the data direction it runs on.
fn loaded_by(
    bench_bin: &Path,
    roles: &mut BTreeMap<u32, &'static str>,
    role: &'static str,
    load: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let before = progstats(bench_bin)?;
    load()?;
    for id in progstats(bench_bin)?.into_keys() {
        if !before.contains_key(&id) {
            roles.insert(id, role);
        }
    }
    Ok(())
}

/// The floor programs of setup A_floor, attached first on the data direction's hooks (sender:
/// the client pod's veth ingress; receiver: the uplink's ingress), each held by an
/// `ipipd-bench floor` process until its standard input closes.
struct Floors(Vec<std::process::Child>);

impl Floors {
    fn attach(
        c: &Cluster,
        bench_bin: &Path,
        roles: &mut BTreeMap<u32, &'static str>,
    ) -> Result<Floors> {
        let (snd, rcv) = (c.node("master"), c.node("node"));
        let mac = |ns: &NetNs, dev: &str| -> Result<String> {
            Ok(ns
                .sh(&format!("cat /sys/class/net/{dev}/address"))?
                .trim()
                .to_string())
        };
        let snd_pod_if = snd.pods[0].spec.interface.clone();
        let rcv_pod_if = rcv.pods[0].spec.interface.clone();
        let jobs: Vec<(&NetNs, &'static str, Vec<String>)> = vec![
            (
                &snd.ns,
                "sender",
                vec![
                    "--prog=floor_encap".into(),
                    format!("--iface={snd_pod_if}"),
                    "--direction=ingress".into(),
                    "--out-if=eth0".into(),
                    format!("--src-ip={}", snd.spec.address),
                    format!("--dst-ip={}", rcv.spec.address),
                    format!("--smac={}", mac(&snd.ns, "eth0")?),
                    format!("--dmac={}", mac(&rcv.ns, "eth0")?),
                ],
            ),
            (
                &rcv.ns,
                "receiver",
                vec![
                    "--prog=floor_decap".into(),
                    "--iface=eth0".into(),
                    "--direction=ingress".into(),
                    format!("--out-if={rcv_pod_if}"),
                    format!("--smac={}", mac(&rcv.ns, &rcv_pod_if)?),
                    format!("--dmac={}", mac(&rcv.pods[0].ns, "eth0")?),
                ],
            ),
        ];
        let mut floors = Floors(Vec::new());
        for (ns, role, args) in jobs {
            loaded_by(bench_bin, roles, role, || {
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &ns.name])
                    .arg(bench_bin)
                    .arg("floor")
                    .args(&args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .context("ipipd-bench floor")?;
                let mut line = String::new();
                let stdout = child.stdout.take().context("floor stdout")?;
                floors.0.push(child);
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
                if !line.starts_with("attached") {
                    bail!("ipipd-bench floor {}: did not attach", args.join(" "));
                }
                Ok(())
            })?;
        }
        Ok(floors)
    }
}

impl Drop for Floors {
    fn drop(&mut self) {
        for c in &mut self.0 {
            drop(c.stdin.take());
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Bytes counted per hook on each side (`ipipd stats`), keyed `<hook>@<role>`.
fn hook_bytes(c: &Cluster) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for (n, role) in SIDES {
        let pin = c.bpffs.join(n);
        let text =
            c.node(n)
                .ipipd(&["stats", "-o", "json", "--pin-dir", &pin.to_string_lossy()])?;
        let v: Value = serde_json::from_str(&text)?;
        for r in v.as_array().into_iter().flatten() {
            *out.entry(format!("{}@{role}", r["hook"].as_str().unwrap_or("?")))
                .or_insert(0.0) += r["bytes"].as_f64().unwrap_or(0.0);
        }
    }
    Ok(out)
}

/// `ipipd-bench testrun` in the node namespace of a running A cluster (with `extra_blocks`
/// more remote blocks in its config).
fn testrun(plan: &Plan, bench_bin: &Path, extra_blocks: usize) -> Result<Value> {
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
    let out = Command::new("ip")
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
        .args(["--repeat", &plan.testrun_repeat.to_string()])
        .output()
        .context("ipipd-bench testrun")?;
    if !out.status.success() {
        bail!(
            "ipipd-bench testrun: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let n_routes = rows(&c, "routes")?;
    Ok(json!({"routes": n_routes, "paths": serde_json::from_slice::<Value>(&out.stdout)?}))
}

/// How many rows `ipipd <what> -o json` lists on the node "node".
fn rows(c: &Cluster, what: &str) -> Result<usize> {
    Ok(c.ipipd_json("node", &[what])?
        .as_array()
        .map_or(0, |a| a.len()))
}

/// `n` remote /26 blocks in 10.0.0.0/8, on 100 peers in the uplink's /20 (reachable, never
/// sent to).
fn scale_peers(n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let peers = 100.min(n);
    let mut s = String::new();
    for p in 0..peers {
        let addr = Ipv4Addr::new(172, 31, 250, 1 + p as u8);
        let blocks: Vec<String> = (p..n)
            .step_by(peers)
            .map(|i| {
                let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i as u32) * 64;
                format!("\"{}/26\"", Ipv4Addr::from(base))
            })
            .collect();
        s += &format!(
            "\n[[peer]]\naddress = \"{addr}\"\nblocks = [{}]\n",
            blocks.join(", ")
        );
    }
    s
}

/// This process's soft limit of open files lowered (and inherited by what it starts) until
/// dropped.
struct NoFileLimit(libc::rlimit);

impl NoFileLimit {
    fn set_soft(soft: u64) -> Result<Self> {
        let mut was = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid pointers to rlimit structs.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut was) != 0 {
                bail!("getrlimit: {}", std::io::Error::last_os_error());
            }
            let now = libc::rlimit {
                rlim_cur: soft.min(was.rlim_max),
                rlim_max: was.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &now) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
        Ok(NoFileLimit(was))
    }
}

impl Drop for NoFileLimit {
    fn drop(&mut self) {
        // SAFETY: a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

/// Endpoints added at runtime, and pods through the CNI plugin, on the node at scale.
const SCALE_ADDS: usize = 20;

/// The control plane at scale: time to program `scale_blocks` remote blocks and
/// `scale_endpoints` endpoints, one endpoint add, and the encap path's cost at that size.
fn scale(plan: &Plan, _ipipd: &Path, bench_bin: &Path) -> Result<Value> {
    let mut c = Cluster::new("bsc", &seed_nodes(1))?;
    // The endpoints' veths (the pod ends stay in the node namespace: only the host ends matter
    // to ipipd), made in one `ip -batch`.
    let n = plan.scale_endpoints;
    let batch: String = (0..n)
        .map(|i| {
            format!("link add cbx{i:07} type veth peer name pbx{i:07}\nlink set cbx{i:07} up\n")
        })
        .collect();
    let file = c.dir.join("veths.batch");
    std::fs::write(&file, batch)?;
    let t = Instant::now();
    ipipd_tests::check(
        Command::new("ip")
            .args(["-n", &c.node("node").ns.name, "-batch"])
            .arg(&file),
    )?;
    let veths_s = t.elapsed().as_secs_f64();
    let mut cfg = c.config_for("node", "");
    cfg += &scale_peers(plan.scale_blocks);
    // The node's own block must hold its endpoints (10.128.0.0/17: 32,768 addresses, apart from
    // the remote blocks in 10.0.0.0/12).
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    if n > 32_000 {
        bail!("{n} endpoints do not fit the bench's endpoint block");
    }
    for i in 0..n {
        let ip = Ipv4Addr::from(base + 1 + i as u32);
        cfg += &format!("\n[[endpoint]]\naddress = \"{ip}\"\ninterface = \"cbx{i:07}\"\n");
    }
    cfg = cfg.replace(
        "cidr = \"192.168.83.128/26\"",
        "cidr = \"192.168.83.128/26\"\n\n[[block]]\ncidr = \"10.128.0.0/17\"",
    );
    // The daemon runs under the common default soft limit of open files (1,024): a node with
    // ten times as many endpoints must not need more.
    let limit = NoFileLimit::set_soft(1024)?;
    let t = Instant::now();
    let started = c.start_daemon_within("node", Some(cfg), Duration::from_secs(900));
    let startup_s = t.elapsed().as_secs_f64();
    started?;
    let pid = c.node("node").daemon.as_ref().map(|d| d.pid()).unwrap_or(0);
    let daemon_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let pin = c.bpffs.join("node");
    let (n_routes, n_eps) = (rows(&c, "routes")?, rows(&c, "endpoints")?);
    if n_routes < plan.scale_blocks || n_eps < n {
        bail!("the scaled daemon programmed {n_routes} routes and {n_eps} endpoints");
    }
    // A large first start attaches the pods as netlink filters and moves them to TCX links
    // in the background: until /readyz lists none "(netlink)" (on a TCX kernel).
    let ns = c.node("node").ns.view();
    let modes = || {
        ipipd_tests::metrics_get(&ns, "/readyz")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let netlink_at_ready = modes().matches("from_pod attached (netlink)").count();
    let deadline = Instant::now() + Duration::from_secs(120 + n as u64 / 20);
    while modes().contains("attached (netlink)") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tcx_s = t.elapsed().as_secs_f64();
    drop(limit);
    let still = modes().matches("attached (netlink)").count();
    if still > 0 {
        bail!("{still} attachments are still netlink filters {tcx_s:.0} s after the start");
    }

    // Endpoints added at runtime one after another, each timed from the CLI's start to its
    // answer (the entry is in the map by then: checked below for all of them), each on a TCX
    // link at once ([`ONE_POD_EVERY`]).
    let state = c.dir.join("node/state");
    let mut adds = Vec::new();
    let mut pace = Instant::now();
    for i in 0..SCALE_ADDS {
        pod_pace(&mut pace);
        let (address, interface) = (
            Ipv4Addr::new(192, 168, 83, 140 + i as u8),
            format!("calibenchadd{i:02}"),
        );
        c.node_mut("node").add_pod(
            "bsc-p",
            PodSpec {
                address,
                interface: interface.clone(),
            },
        )?;
        let t = Instant::now();
        c.node("node").ipipd(&[
            "endpoint",
            "add",
            "--address",
            &address.to_string(),
            "--interface",
            &interface,
            "--state-dir",
            &state.to_string_lossy(),
        ])?;
        adds.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let eps = c.node("node").ipipd(&[
        "endpoints",
        "-o",
        "json",
        "--pin-dir",
        &pin.to_string_lossy(),
    ])?;
    if let Some(i) = (0..SCALE_ADDS).find(|i| !eps.contains(&format!("\"192.168.83.{}\"", 140 + i)))
    {
        bail!(
            "endpoint 192.168.83.{} added at runtime is not in the map",
            140 + i
        );
    }
    // Pods through the CNI plugin on that node (its IPAM hands out from the endpoints' block).
    let (cni_add, cni_del) = cni_calls(&c, "node", SCALE_ADDS)?;
    // A restart at that size: SIGTERM, then a start that adopts everything.
    let limit = NoFileLimit::set_soft(1024)?;
    let t = Instant::now();
    c.stop_daemon("node")?;
    let cfg_text = std::fs::read_to_string(c.dir.join("node/ipipd.toml"))?;
    let restarted = c.start_daemon_within("node", Some(cfg_text), Duration::from_secs(900));
    let restart_s = t.elapsed().as_secs_f64();
    drop(limit);
    restarted?;
    drop(c);
    eprintln!(
        "xtask bench: encap path cost with {} more remote blocks",
        plan.scale_blocks
    );
    let big = testrun(plan, bench_bin, plan.scale_blocks)?;
    Ok(json!({
        "blocks": plan.scale_blocks,
        "endpoints": n,
        "routes_programmed": n_routes,
        "endpoints_programmed": n_eps,
        "create_veths_s": veths_s,
        "startup_to_ready_s": startup_s,
        "netlink_filters_at_ready": netlink_at_ready,
        "all_tcx_s": tcx_s,
        "nofile_soft_limit": 1024,
        "daemon_fds": daemon_fds,
        "endpoint_add_ms": median_p99(adds),
        "cni_add_ms": cni_add,
        "cni_del_ms": cni_del,
        "restart_to_ready_s": restart_s,
        "testrun_at_scale": big,
    }))
}

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

fn report(
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

fn markdown(r: &Value, plan: &Plan, took: Duration) -> String {
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
        s += &crate::profile::markdown(&r["profile"]);
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
