//! The datastore part: a node among 1,000 and 5,000 others in etcd.

use std::{net::Ipv4Addr, process::Command};

use ipipd_tests::cluster::Cluster;

use super::scale::rows;
use super::*;

/// The cluster sizes the datastore part writes into etcd (Kubernetes supports 5,000 nodes),
/// the nodes it then adds one at a time, and the churn it then writes: nodes added at a rate,
/// paced, for a time.
pub(super) const DS_NODES: [u32; 2] = [1000, 5000];

pub(super) const DS_ADDS: u32 = 100;

pub(super) const DS_CHURN_RATE: u32 = 100;

pub(super) const DS_CHURN_S: u32 = 10;

/// The datastore at scale: `nodes` nodes with a block each written into etcd (Debian's, in a
/// namespace on the underlay), then one real node started on it: the time to ready with every
/// one of them programmed as a peer and its RSS; then [`DS_ADDS`] nodes added one at a time,
/// each timed from its etcd transaction to its block's entry in the real node's routes map;
/// then [`DS_CHURN_RATE`] node additions per second for [`DS_CHURN_S`] s, each one's lag to the
/// map measured while the next ones are written (whether the watch keeps up).
pub(super) fn datastore(bench_bin: &Path, nodes: u32) -> Result<Value> {
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
