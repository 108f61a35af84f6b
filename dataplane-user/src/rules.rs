//! The rules every desired state obeys, whatever it came from (the file, the control socket,
//! the CLI, the datastore): each item's own ([`Node::check`], [`Peer::check`],
//! [`EndpointCfg::check`]) and those between items ([`validate`]). Errors name their key.

use std::fmt;

use crate::{
    config::{Config, EndpointCfg, Node, Peer, tunnel_peer},
    net::{Ipv4Net, check_block, check_ifname, check_pod_mac, check_unicast},
};

/// A validation error naming its key.
#[derive(Debug, Clone)]
pub struct KeyError {
    pub key: String,
    pub msg: String,
}

pub(crate) fn err(key: impl Into<String>, msg: impl Into<String>) -> KeyError {
    KeyError {
        key: key.into(),
        msg: msg.into(),
    }
}

impl Node {
    /// The node's own rules: (key, message) of the first one broken.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        check_ifname(&self.uplink).map_err(|e| ("node.uplink", e))?;
        if self.uplink == "lo" {
            return Err(("node.uplink", "is the loopback device".into()));
        }
        check_unicast(self.address).map_err(|e| ("node.address", e))?;
        // The tunnel device's peer adds a character to its name.
        if check_ifname(&tunnel_peer(&self.tunnel)).is_err() {
            return Err((
                "node.tunnel",
                format!(
                    "{:?} is not an interface name of at most 14 characters",
                    self.tunnel
                ),
            ));
        }
        if self.tunnel == self.uplink || tunnel_peer(&self.tunnel) == self.uplink {
            return Err(("node.tunnel", "is the uplink (or its peer would be)".into()));
        }
        Ok(())
    }
}

impl EndpointCfg {
    /// One endpoint's rules that need no node: (field, message) of the first one broken.
    pub fn check_alone(&self) -> Result<(), (&'static str, String)> {
        check_unicast(self.address).map_err(|e| ("address", e))?;
        check_ifname(&self.interface).map_err(|e| ("interface", e))?;
        if self.interface == "lo" {
            return Err(("interface", "is the loopback device".into()));
        }
        if let Some(m) = &self.mac {
            check_pod_mac(m).map_err(|e| ("mac", e))?;
        }
        Ok(())
    }

    /// One endpoint's own rules on `node`. The file, the control socket and the CLI all check
    /// endpoints with this.
    pub fn check(&self, node: &Node) -> Result<(), (&'static str, String)> {
        self.check_alone()?;
        if self.interface == node.uplink {
            return Err(("interface", "is the uplink".into()));
        }
        if self.interface == node.tunnel || self.interface == tunnel_peer(&node.tunnel) {
            return Err((
                "interface",
                "is the tunnel device (node.tunnel) or its peer".into(),
            ));
        }
        Ok(())
    }
}

impl Peer {
    /// One peer's rules that need no node: (field, message) of the first one broken, the
    /// field being `address` or `blocks[k]`.
    pub fn check_alone(&self) -> Result<(), (String, String)> {
        check_unicast(self.address).map_err(|e| ("address".to_string(), e))?;
        for (k, b) in self.blocks.iter().enumerate() {
            check_block(b).map_err(|e| (format!("blocks[{k}]"), e))?;
            if b.contains(self.address) {
                return Err((format!("blocks[{k}]"), format!("{b} holds a node address")));
            }
        }
        Ok(())
    }

    /// One peer's own rules against `node`.
    pub fn check(&self, node: &Node) -> Result<(), (String, String)> {
        self.check_alone()?;
        if self.address == node.address {
            return Err((
                "address".into(),
                format!("{} is this node's own address", self.address),
            ));
        }
        for (k, b) in self.blocks.iter().enumerate() {
            if b.contains(node.address) {
                return Err((format!("blocks[{k}]"), format!("{b} holds a node address")));
            }
        }
        Ok(())
    }
}

/// The rules every desired state obeys, the file's and the one after runtime changes alike:
/// each item's own ([`Node::check`], [`Peer::check`], [`EndpointCfg::check`]) and those
/// between items (no two blocks overlap, no address or interface twice, endpoints inside the
/// node's blocks). Linear in the number of items (sorted once), so that a node of 100,000
/// endpoints is checked in a fraction of a second.
pub fn validate(cfg: &Config) -> Result<(), KeyError> {
    cfg.node.check().map_err(|(k, m)| err(k, m))?;
    for (i, b) in cfg.blocks.iter().enumerate() {
        check_block(b).map_err(|m| err(format!("block[{i}].cidr"), m))?;
    }
    overlapping_blocks(cfg)?;
    let mut peers = std::collections::HashMap::with_capacity(cfg.peers.len());
    for (i, p) in cfg.peers.iter().enumerate() {
        p.check(&cfg.node)
            .map_err(|(f, m)| err(format!("peer[{i}].{f}"), m))?;
        if let Some(j) = peers.insert(p.address, i) {
            return Err(err(
                format!("peer[{i}].address"),
                format!("{} is also peer[{j}]", p.address),
            ));
        }
    }
    let mut addresses = std::collections::HashMap::with_capacity(cfg.endpoints.len());
    let mut interfaces = std::collections::HashMap::with_capacity(cfg.endpoints.len());
    for (i, e) in cfg.endpoints.iter().enumerate() {
        e.check(&cfg.node)
            .map_err(|(f, m)| err(format!("endpoint[{i}].{f}"), m))?;
        // (With a datastore the node's blocks may not be claimed yet when the file is read.)
        let unclaimed = cfg.datastore.is_some() && cfg.blocks.is_empty();
        if !unclaimed && !cfg.blocks.iter().any(|b| b.contains(e.address)) {
            return Err(err(
                format!("endpoint[{i}].address"),
                format!("{} is outside this node's blocks", e.address),
            ));
        }
        if let Some(j) = addresses.insert(e.address, i) {
            return Err(err(
                format!("endpoint[{i}].address"),
                format!("{} is also endpoint[{j}]", e.address),
            ));
        }
        if let Some(j) = interfaces.insert(e.interface.as_str(), i) {
            return Err(err(
                format!("endpoint[{i}].interface"),
                format!("{} is also endpoint[{j}]'s interface", e.interface),
            ));
        }
    }
    Ok(())
}

/// Where a block comes from, in file order (the node's own first, then each peer's).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum BlockOf {
    Own(usize),
    Peer(usize, usize),
}

/// No two blocks overlap, the node's own and every peer's together: sorted by start (the
/// larger first at a tie), a CIDR overlaps an earlier one exactly when it starts inside the
/// one that reaches furthest so far (two CIDRs are nested or apart). Of the overlaps found, the
/// one whose later block comes first in the file is reported, naming the other.
fn overlapping_blocks(cfg: &Config) -> Result<(), KeyError> {
    let mut all: Vec<(Ipv4Net, BlockOf)> = cfg
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (*b, BlockOf::Own(i)))
        .chain(cfg.peers.iter().enumerate().flat_map(|(i, p)| {
            p.blocks
                .iter()
                .enumerate()
                .map(move |(k, b)| (*b, BlockOf::Peer(i, k)))
        }))
        .collect();
    all.sort_by_key(|(n, _)| (u32::from(n.addr), n.len));
    let end = |n: &Ipv4Net| u64::from(u32::from(n.addr)) + (1u64 << (32 - n.len)) - 1;
    let mut reach: Option<(u64, usize)> = None;
    let mut worst: Option<(BlockOf, BlockOf, usize, usize)> = None;
    for (x, (net, _)) in all.iter().enumerate() {
        match reach {
            Some((r, y)) if u64::from(u32::from(net.addr)) <= r => {
                let (a, b) = (all[x].1, all[y].1);
                let (later, earlier, l, e) = if a > b { (a, b, x, y) } else { (b, a, y, x) };
                if worst.is_none_or(|w| later < w.0) {
                    worst = Some((later, earlier, l, e));
                }
            }
            _ => reach = Some((end(net), x)),
        }
    }
    let Some((later, earlier, l, e)) = worst else {
        return Ok(());
    };
    let (ln, en) = (all[l].0, all[e].0);
    Err(match (later, earlier) {
        (BlockOf::Own(i), BlockOf::Own(j)) => err(
            format!("block[{i}].cidr"),
            format!("{ln} overlaps block[{j}] {en}"),
        ),
        (BlockOf::Peer(i, k), BlockOf::Own(_)) => err(
            format!("peer[{i}].blocks[{k}]"),
            format!("{ln} overlaps this node's block {en}"),
        ),
        (BlockOf::Peer(i, k), BlockOf::Peer(j, _)) => err(
            format!("peer[{i}].blocks[{k}]"),
            format!("{ln} is also claimed by peer[{j}] ({en})"),
        ),
        (BlockOf::Own(_), BlockOf::Peer(..)) => unreachable!("the node's blocks come first"),
    })
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.msg)
    }
}
