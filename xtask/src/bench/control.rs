//! The node's control plane under pods and restarts: a 1 kHz ping across daemon restarts and a
//! layout upgrade, CNI ADD and DEL timed one by one, and pod churn through `ipipd-cni`.

use std::{net::Ipv4Addr, process::Command};

use ipipd_tests::{
    NetNs,
    cluster::{Cluster, seed_nodes},
};

use super::*;

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
pub(super) fn restart() -> Result<Value> {
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
    let log = c.node("node").daemon_log();
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

/// The seed's two nodes with their daemons running, and no pods: the node "node" with a /25
/// (126 addresses to hand out, more than the CNI part's pods; the churn's come and go).
fn seed_with_a_25(name: &str) -> Result<Cluster> {
    let mut specs = seed_nodes(0);
    specs[1].block = "192.168.83.0/25".into();
    let mut c = Cluster::new(name, &specs)?;
    c.start_daemon("master", None)?;
    c.start_daemon("node", None)?;
    Ok(c)
}

/// Pods the CNI part adds and deletes.
pub(super) const CNI_PODS: usize = 100;

/// The pod churn: pods per second, for how long, on how many runtime threads.
pub(super) const CHURN_RATE: u32 = 100;

pub(super) const CHURN_S: u32 = 60;

const CHURN_WORKERS: usize = 16;

/// Pod churn through `ipipd-cni` on one node ([`ipipd_tests::cni::churn`]): each pod's
/// namespace made, ADD, DEL, namespace removed, at [`CHURN_RATE`] a second for [`CHURN_S`] s;
/// then what is left on the node (veths, allocations, endpoints, pod routes, the daemon's fds
/// against before), which must be nothing.
pub(super) fn pod_churn() -> Result<Value> {
    let c = seed_with_a_25("bchurn")?;
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
    let log = c.node("node").daemon_log();
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

/// CNI ADD then DEL of [`CNI_PODS`] pods on a node running ipipd, each timed from the plugin
/// process's start to its result (the daemon's allocation, the veth, the pod's address and
/// routes, the endpoint attached and in the maps; DEL: the reverse).
pub(super) fn cni() -> Result<Value> {
    let c = seed_with_a_25("bcni")?;
    let (add, del) = cni_calls(&c, "node", CNI_PODS)?;
    Ok(json!({"add_ms": add, "del_ms": del}))
}

/// How often the control-plane benches add a pod: a fifth slower than the daemon's pace (8 in a
/// second, `attach/pace.rs`; xtask cannot name it: dataplane-user builds only after `cargo
/// xtask setup`), so that each one's `from_pod` goes on a TCX link at once, as a pod's that
/// comes alone does (the churn measures pods that come faster).
pub(super) const ONE_POD_EVERY: Duration = Duration::from_millis(150);

/// Waits until `next`, then sets it [`ONE_POD_EVERY`] later.
pub(super) fn pod_pace(next: &mut Instant) {
    std::thread::sleep(next.saturating_duration_since(Instant::now()));
    *next = Instant::now() + ONE_POD_EVERY;
}

/// `pods` pods, each in its namespace, added through `ipipd-cni` on `node` one after another
/// ([`ONE_POD_EVERY`]), then deleted: each call timed from the plugin's start to its result
/// (median, p99 in ms).
pub(super) fn cni_calls(c: &Cluster, node: &str, pods: usize) -> Result<(Value, Value)> {
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
