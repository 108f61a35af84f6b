//! The data plane's counters as the tests read them: `ipipd stats -o json`, and what moved.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

use crate::{NetNs, cluster::Cluster};

/// (interface, hook, reason) → (packets, bytes).
pub type Counters = BTreeMap<(String, String, String), (u64, u64)>;

/// A node's counters, from `ipipd stats -o json`.
pub fn stats(c: &Cluster, node: &str) -> Counters {
    try_stats(c, node).unwrap_or_else(|e| panic!("ipipd stats on {node}: {e:#}"))
}

fn try_stats(c: &Cluster, node: &str) -> Result<Counters> {
    let pin = c.bpffs.join(node);
    let out = c
        .node(node)
        .ipipd(&["stats", "-o", "json", "--pin-dir", &pin.to_string_lossy()])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v.as_array()
        .context("a JSON array")?
        .iter()
        .map(|r| -> Result<_> {
            let s = |k: &str| -> Result<String> {
                Ok(r[k]
                    .as_str()
                    .with_context(|| format!("{k} in {r}"))?
                    .to_string())
            };
            let n = |k: &str| r[k].as_u64().with_context(|| format!("{k} in {r}"));
            Ok((
                (s("interface")?, s("hook")?, s("reason")?),
                (n("packets")?, n("bytes")?),
            ))
        })
        .collect()
}

/// What moved between two readings for one reason, summed over interfaces and hooks.
pub fn moved(before: &Counters, after: &Counters, reason: &str) -> (u64, u64) {
    after
        .iter()
        .filter(|((_, _, r), _)| r == reason)
        .map(|(k, (p, b))| {
            let (p0, b0) = before.get(k).copied().unwrap_or_default();
            (p - p0, b - b0)
        })
        .fold((0, 0), |a, x| (a.0 + x.0, a.1 + x.1))
}

/// `ping ARGS` inside a namespace; its stdout and stderr (the summary says what arrived).
pub fn ping(ns: &NetNs, args: &str) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "sh",
            "-c",
            &format!("ping {args}"),
        ])
        .output()
        .expect("running ping");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
