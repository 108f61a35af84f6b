//! natOutgoing in a table of ipipd's own, `ip ipipd`, through `nft`'s JSON (as kube-proxy's
//! nftables mode does): the kernel's masquerade for traffic from the node's pods to
//! destinations outside the pod network. Pod-to-pod traffic (local, tunnelled or
//! cross-subnet) never matches: its destination is in the pod network, or it leaves through
//! the tunnel device. No other table is ever touched.
//!
//! ```text
//! table ip ipipd {
//!   set pod-network  { type ipv4_addr; flags interval; elements = { every pool and block } }
//!   set nat-outgoing { type ipv4_addr; flags interval; elements = { the node's blocks with natOutgoing } }
//!   chain nat-postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr @nat-outgoing ip daddr != @pod-network oifname != "<tunnel>" masquerade
//!   }
//! }
//! ```
//!
//! [`desired`] is pure; [`apply`] replaces the table in one `nft` transaction (add, delete,
//! add again: never a moment without it, whatever was there), so a restart adopts it without
//! a gap; [`remove`] deletes it (teardown, or natOutgoing switched off).

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{config::Config, net::Ipv4Net};

pub const TABLE: &str = "ipipd";
const CHAIN: &str = "nat-postrouting";
const POD_NETWORK: &str = "pod-network";
const SOURCES: &str = "nat-outgoing";

/// What the table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The node's blocks whose pods' traffic out of the pod network is masqueraded.
    pub sources: Vec<Ipv4Net>,
    /// Every pool and block of the cluster: destinations never masqueraded.
    pub pod_network: Vec<Ipv4Net>,
    /// The tunnel device: nothing leaving through it is masqueraded.
    pub tunnel: String,
}

/// The table for `cfg` (its blocks and peers, and the pools of the datastore): None when no
/// block of the node has natOutgoing (`[node] nat_outgoing`, or a pool's `nat_outgoing`).
pub fn desired(cfg: &Config) -> Option<Rules> {
    let sources: Vec<Ipv4Net> = cfg
        .blocks
        .iter()
        .filter(|b| {
            cfg.node.nat_outgoing
                || cfg
                    .pools
                    .iter()
                    .any(|p| p.nat_outgoing && p.cidr.overlaps(b))
        })
        .copied()
        .collect();
    if sources.is_empty() {
        return None;
    }
    let mut pod_network: Vec<Ipv4Net> = cfg
        .pools
        .iter()
        .map(|p| p.cidr)
        .chain(cfg.blocks.iter().copied())
        .chain(cfg.peers.iter().flat_map(|p| p.blocks.iter().copied()))
        .collect();
    pod_network.sort();
    pod_network.dedup();
    Some(Rules {
        sources,
        pod_network: covering(pod_network),
        tunnel: cfg.node.tunnel.clone(),
    })
}

/// The prefixes of `nets` (sorted) that no other of them covers: an interval set refuses
/// overlapping elements.
fn covering(nets: Vec<Ipv4Net>) -> Vec<Ipv4Net> {
    let mut out: Vec<Ipv4Net> = Vec::new();
    // Sorted by address, then length: a covering prefix comes before what it covers.
    for n in nets {
        if !out.iter().any(|o| o.len <= n.len && o.contains(n.addr)) {
            out.retain(|o| !(n.len <= o.len && n.contains(o.addr)));
            out.push(n);
        }
    }
    out
}

fn prefix(n: &Ipv4Net) -> Value {
    json!({"prefix": {"addr": n.addr.to_string(), "len": n.len}})
}

fn table() -> Value {
    json!({"family": "ip", "name": TABLE})
}

/// The `nft -j -f` commands that replace the table with `r`, in one transaction.
pub fn commands(r: &Rules) -> Value {
    let set = |name: &str, elems: &[Ipv4Net]| {
        let mut cmds = vec![json!({"add": {"set": {
            "family": "ip", "table": TABLE, "name": name,
            "type": "ipv4_addr", "flags": ["interval"],
        }}})];
        if !elems.is_empty() {
            cmds.push(json!({"add": {"element": {
                "family": "ip", "table": TABLE, "name": name,
                "elem": elems.iter().map(prefix).collect::<Vec<_>>(),
            }}}));
        }
        cmds
    };
    let mut cmds = vec![
        // Add first, so that the delete finds it, then build it anew: one transaction.
        json!({"add": {"table": table()}}),
        json!({"delete": {"table": table()}}),
        json!({"add": {"table": table()}}),
    ];
    cmds.extend(set(POD_NETWORK, &r.pod_network));
    cmds.extend(set(SOURCES, &r.sources));
    cmds.push(json!({"add": {"chain": {
        "family": "ip", "table": TABLE, "name": CHAIN,
        "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept",
    }}}));
    cmds.push(json!({"add": {"rule": {
        "family": "ip", "table": TABLE, "chain": CHAIN,
        "comment": "ipipd: natOutgoing",
        "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": format!("@{SOURCES}")}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": format!("@{POD_NETWORK}")}},
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": r.tunnel}},
            {"masquerade": null},
        ],
    }}}));
    json!({"nftables": cmds})
}

/// Runs `nft -j -f` with `doc` on its stdin.
fn nft(doc: &Value) -> Result<()> {
    // (`-f -` opens /dev/stdin, which a minimal /dev, an initramfs's, may not have.)
    let mut child = Command::new("nft")
        .args(["-j", "-f", "/proc/self/fd/0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (natOutgoing needs nftables' nft)")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(doc.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft refused ipipd's table: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Replaces the table with `r`, atomically.
pub fn apply(r: &Rules) -> Result<()> {
    nft(&commands(r))
}

/// What the table holds, as `ipipd status` shows it: its sets' elements.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shown {
    pub table: String,
    pub sources: Vec<String>,
    pub pod_network: Vec<String>,
}

/// The table in place, read back through `nft` (None when there is none).
pub fn current() -> Option<Shown> {
    let doc = show()?;
    let elems = |set: &str| -> Vec<String> {
        let items = doc["nftables"].as_array().into_iter().flatten();
        items
            .filter_map(|i| i.get("set"))
            .filter(|s| s["name"] == set)
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .map(|e| match (&e["prefix"]["addr"], &e["prefix"]["len"]) {
                (Value::String(a), Value::Number(l)) => format!("{a}/{l}"),
                _ => e.as_str().map_or_else(|| e.to_string(), str::to_string),
            })
            .collect()
    };
    Some(Shown {
        table: format!("ip {TABLE}"),
        sources: elems(SOURCES),
        pod_network: elems(POD_NETWORK),
    })
}

/// The table as `nft -j list` has it, when there is one (None also without `nft`).
fn show() -> Option<Value> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", TABLE])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Deletes the table if it is there.
pub fn remove() -> Result<()> {
    if show().is_none() {
        return Ok(());
    }
    nft(&json!({"nftables": [{"delete": {"table": table()}}]}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn config(nat: bool) -> Config {
        let text = format!(
            "[node]\nname = \"n\"\nuplink = \"eth0\"\naddress = \"172.31.0.1\"\nnat_outgoing = {nat}\n\n\
             [[block]]\ncidr = \"10.244.0.0/26\"\n\n[[peer]]\naddress = \"172.31.0.2\"\nblocks = [\"10.244.0.64/26\"]\n"
        );
        Config::parse(&text).unwrap()
    }

    #[test]
    fn a_node_with_nat_outgoing_masquerades_its_blocks_to_outside_the_pod_network() {
        assert_eq!(desired(&config(false)), None);
        let r = desired(&config(true)).unwrap();
        assert_eq!(r.sources, [net("10.244.0.0/26")]);
        assert_eq!(r.pod_network, [net("10.244.0.0/26"), net("10.244.0.64/26")]);
        assert_eq!(r.tunnel, "ipipd0");
        let doc = commands(&r).to_string();
        for part in [
            r#""hook":"postrouting""#,
            r#""masquerade":null"#,
            r#""right":"@pod-network""#,
            r#""right":"ipipd0""#,
            r#"{"delete":{"table":{"family":"ip","name":"ipipd"}}}"#,
        ] {
            assert!(doc.contains(part), "{part} not in {doc}");
        }
    }

    #[test]
    fn a_pools_nat_outgoing_covers_its_blocks_only_and_the_pod_network_has_no_overlaps() {
        let mut c = config(false);
        c.blocks.push(net("10.250.0.0/26"));
        c.pools = vec![
            crate::datastore::model::Pool::new(net("10.244.0.0/16"), 26, true),
            crate::datastore::model::Pool::new(net("10.250.0.0/16"), 26, false),
        ];
        let r = desired(&c).unwrap();
        assert_eq!(r.sources, [net("10.244.0.0/26")]);
        // The pools cover the blocks: the set holds the pools.
        assert_eq!(r.pod_network, [net("10.244.0.0/16"), net("10.250.0.0/16")]);
    }
}
