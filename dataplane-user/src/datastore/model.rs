//! What ipipd keeps in etcd, and what a node makes of it. Pure: keys, values, the cluster
//! view a list and a watch build, and what it means for one node (its blocks, its peers).
//!
//! Under the prefix (default `/ipipd/v1`), values JSON:
//!
//! | key | value |
//! |---|---|
//! | `pools/<a-b-c-d-len>` | `{"cidr": "10.244.0.0/16", "block_size": 26}` |
//! | `blocks/<a-b-c-d-len>` | `{"cidr": "10.244.3.0/26", "node": "node1"}`: the block's owner; created by a transaction that fails when the key exists, so no two nodes ever own one block |
//! | `nodes/<name>` | `{"name": "node1", "address": "172.31.242.156"}`: the node's registration |
//! | `alive/<name>` | `{"pid": 1234}`, under the daemon's lease: whether its daemon is up |
//! | `cluster` | `{"id": "9f…", "created": 1764950400}`: the store's identity, written once when the first node finds none; gone or different, the store has forgotten (see [`super::memory`]) |
//! | `disputes/<name>/<a-b-c-d-len>` | `{"cidr": …, "node": …}`, under the node's lease: a block the node holds (its pods use it) that the store gives to another |
//! | `removed/<name>` | `{"at": 1764950400}`: `ipipd node remove` removed the node (its registration went by an operator's hand, not a store that forgot); deleted when it registers again |
//! | `reasserting` | `{"node": "node1"}`, under a lease of [`super::memory::GRACE`]: a reset was detected and nodes are putting back their blocks; no free block is claimed meanwhile |

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{config::Peer, net::Ipv4Net};

/// An address pool blocks are carved from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub cidr: Ipv4Net,
    pub block_size: u8,
    /// Calico's natOutgoing: traffic from the pool's pods to destinations outside every pool
    /// and block leaves with its node's address. Written only when set, so that a node of an
    /// earlier version (which refuses unknown fields) still reads the pools without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nat_outgoing: bool,
}

impl Pool {
    pub fn new(cidr: Ipv4Net, block_size: u8, nat_outgoing: bool) -> Self {
        Pool {
            cidr,
            block_size,
            nat_outgoing,
        }
    }

    /// The pool's rules: a block size between the pool's prefix length and /30.
    pub fn check(&self) -> Result<(), String> {
        crate::net::check_block(&self.cidr)?;
        if self.block_size < self.cidr.len || self.block_size > 30 {
            return Err(format!(
                "block_size {} must be between the pool's /{} and /30",
                self.block_size, self.cidr.len
            ));
        }
        Ok(())
    }

    /// The pool's blocks, in address order.
    pub fn blocks(&self) -> impl Iterator<Item = Ipv4Net> + use<> {
        let start = u64::from(u32::from(self.cidr.addr));
        let step = 1u64 << (32 - self.block_size);
        let count = 1u64 << (self.block_size - self.cidr.len);
        let bs = self.block_size;
        (0..count).map(move |i| Ipv4Net::new(Ipv4Addr::from((start + i * step) as u32), bs))
    }
}

/// A Calico IPPool's `ipipMode` (api/pkg/apis/projectcalico/v3/ippool.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpipMode {
    /// Every remote block of the pool is encapsulated.
    Always,
    /// Only toward nodes outside the uplink's subnets.
    CrossSubnet,
    /// Routed without encapsulation: the network between the nodes routes the pool (as
    /// with Calico's BGP to the fabric).
    Never,
}

impl IpipMode {
    pub fn name(self) -> &'static str {
        match self {
            IpipMode::Always => "Always",
            IpipMode::CrossSubnet => "CrossSubnet",
            IpipMode::Never => "Never",
        }
    }
}

/// What a Calico IPPool adds to a [`Pool`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalicoPool {
    pub name: String,
    pub ipip_mode: IpipMode,
    /// No new block or address from it; its blocks are still routed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// What Calico's datastore says beyond ipipd's own model (calico-etcd mode; empty with
/// ipipd's datastore).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalicoView {
    /// The IPPools' names and modes, by CIDR.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<Ipv4Net, CalicoPool>,
    /// The nodes' `ipv4IPIPTunnelAddr`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tunnel_addresses: BTreeMap<String, Ipv4Addr>,
    /// Pods by their WorkloadEndpoint (`namespace/name`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workloads: BTreeMap<String, Workload>,
}

impl CalicoView {
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty() && self.tunnel_addresses.is_empty() && self.workloads.is_empty()
    }

    /// The pods of node `node`, by their WorkloadEndpoint.
    pub fn workloads_of<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Workload)> + 'a {
        self.workloads.iter().filter(move |(_, w)| w.node == node)
    }
}

/// A block's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    pub cidr: Ipv4Net,
    pub node: String,
}

/// A node's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: Name,
    pub address: Ipv4Addr,
}

/// A pod as Calico's WorkloadEndpoint describes it (calico-etcd mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// The node it runs on.
    pub node: String,
    /// The host side of its veth (`cali…`).
    pub interface: String,
    pub address: Ipv4Addr,
    /// The pod side's MAC, when the endpoint says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// `namespace/pod`.
    pub pod: String,
}

/// The store's identity: written once, at the first node's first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterId {
    pub id: String,
    /// Seconds since the epoch, when it was written.
    pub created: u64,
}

impl ClusterId {
    /// A new identity: 128 random bits from the kernel, and the time.
    pub fn new() -> std::io::Result<Self> {
        let mut b = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
        Ok(ClusterId {
            id: b.iter().map(|x| format!("{x:02x}")).collect(),
            created: super::unix_now(),
        })
    }
}

/// The key of a CIDR: `a-b-c-d-len`.
pub fn cidr_key(n: &Ipv4Net) -> String {
    let [a, b, c, d] = n.addr.octets();
    format!("{a}-{b}-{c}-{d}-{}", n.len)
}

/// The CIDR of a key's last part (the inverse of [`cidr_key`]).
pub fn cidr_of_key(part: &str) -> Option<Ipv4Net> {
    let (addr, len) = part.rsplit_once('-')?;
    format!("{}/{len}", addr.replace('-', ".")).parse().ok()
}

/// The keys under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }
    pub fn pools(&self) -> String {
        format!("{}/pools/", self.prefix)
    }
    pub fn pool(&self, cidr: &Ipv4Net) -> String {
        format!("{}{}", self.pools(), cidr_key(cidr))
    }
    pub fn blocks(&self) -> String {
        format!("{}/blocks/", self.prefix)
    }
    pub fn block(&self, cidr: &Ipv4Net) -> String {
        format!("{}{}", self.blocks(), cidr_key(cidr))
    }
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }
    pub fn alive_all(&self) -> String {
        format!("{}/alive/", self.prefix)
    }
    pub fn alive(&self, name: &str) -> String {
        format!("{}{name}", self.alive_all())
    }
    pub fn removed_all(&self) -> String {
        format!("{}/removed/", self.prefix)
    }
    pub fn removed(&self, name: &str) -> String {
        format!("{}{name}", self.removed_all())
    }
    pub fn cluster(&self) -> String {
        format!("{}/cluster", self.prefix)
    }
    pub fn reasserting(&self) -> String {
        format!("{}/reasserting", self.prefix)
    }
    pub fn disputes(&self) -> String {
        format!("{}/disputes/", self.prefix)
    }
    /// A node's disputes, all of them under this prefix.
    pub fn disputes_of(&self, node: &str) -> String {
        format!("{}{node}/", self.disputes())
    }
    pub fn dispute(&self, node: &str, cidr: &Ipv4Net) -> String {
        format!("{}{}", self.disputes_of(node), cidr_key(cidr))
    }
}

/// A node's name in a view: shared, so that a copy of a view at 5,000 nodes (the datastore task
/// makes one per view it sends) allocates no string.
pub type Name = Arc<str>;

/// The cluster as the datastore has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub pools: BTreeMap<Ipv4Net, Pool>,
    pub blocks: BTreeMap<Ipv4Net, Name>,
    pub nodes: BTreeMap<Name, NodeRecord>,
    /// Nodes whose daemon holds its liveness key.
    pub alive: BTreeSet<Name>,
    /// The store's identity, once a node wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterId>,
    /// Blocks that nodes other than the store's owner hold: block → those nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disputes: BTreeMap<Ipv4Net, BTreeSet<String>>,
    /// Nodes are re-asserting their blocks after a reset (the node that found it): no free
    /// block is claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasserting: Option<String>,
    /// Nodes `ipipd node remove` removed (and that did not register again).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed: BTreeSet<String>,
    /// calico-etcd mode: the pools' modes, the tunnel addresses, the pods.
    #[serde(default, skip_serializing_if = "CalicoView::is_empty")]
    pub calico: CalicoView,
    /// Values that did not parse: (key, error), for the log.
    #[serde(skip)]
    pub bad: Vec<(String, String)>,
}

impl View {
    /// Applies one key's value (None: deleted).
    pub fn apply(&mut self, keys: &Keys, key: &str, value: Option<&[u8]>) {
        fn parse<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
            serde_json::from_slice(v).map_err(|e| e.to_string())
        }
        let r: Result<(), String> = (|| {
            if let Some(part) = key.strip_prefix(&keys.pools()) {
                let cidr = cidr_of_key(part).ok_or("not a pool's key")?;
                match value {
                    Some(v) => {
                        let p: Pool = parse(v)?;
                        p.check()?;
                        if p.cidr != cidr {
                            return Err(format!("holds {} under another key", p.cidr));
                        }
                        self.pools.insert(p.cidr, p);
                    }
                    None => {
                        self.pools.remove(&cidr);
                    }
                }
            } else if let Some(part) = key.strip_prefix(&keys.blocks()) {
                let cidr = cidr_of_key(part).ok_or("not a block's key")?;
                match value {
                    Some(v) => {
                        let b: Block = parse(v)?;
                        if b.cidr != cidr {
                            return Err(format!("holds {} under another key", b.cidr));
                        }
                        self.blocks.insert(b.cidr, b.node.into());
                    }
                    None => {
                        self.blocks.remove(&cidr);
                    }
                }
            } else if let Some(name) = key.strip_prefix(&keys.nodes()) {
                match value {
                    Some(v) => {
                        let n: NodeRecord = parse(v)?;
                        if &*n.name != name {
                            return Err(format!("names node {:?}", n.name));
                        }
                        self.nodes.insert(n.name.clone(), n);
                    }
                    None => {
                        self.nodes.remove(name);
                    }
                }
            } else if let Some(name) = key.strip_prefix(&keys.alive_all()) {
                match value {
                    Some(_) => {
                        self.alive.insert(name.into());
                    }
                    None => {
                        self.alive.remove(name);
                    }
                }
            } else if let Some(name) = key.strip_prefix(&keys.removed_all()) {
                match value {
                    Some(_) => self.removed.insert(name.to_string()),
                    None => self.removed.remove(name),
                };
            } else if key == keys.cluster() {
                self.cluster = value.map(parse).transpose()?;
            } else if key == keys.reasserting() {
                #[derive(Deserialize)]
                struct Marker {
                    node: String,
                }
                self.reasserting = value.map(parse::<Marker>).transpose()?.map(|m| m.node);
            } else if let Some(rest) = key.strip_prefix(&keys.disputes()) {
                let (node, part) = rest.rsplit_once('/').ok_or("not a dispute's key")?;
                let cidr = cidr_of_key(part).ok_or("not a dispute's key")?;
                match value {
                    Some(v) => {
                        let b: Block = parse(v)?;
                        if b.cidr != cidr || b.node != node {
                            return Err(format!(
                                "holds {} of {} under another key",
                                b.cidr, b.node
                            ));
                        }
                        self.disputes.entry(cidr).or_default().insert(b.node);
                    }
                    None => {
                        if let Some(n) = self.disputes.get_mut(&cidr) {
                            n.remove(node);
                            if n.is_empty() {
                                self.disputes.remove(&cidr);
                            }
                        }
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            self.bad.push((key.to_string(), e));
        }
    }

    /// The blocks `node` owns.
    pub fn blocks_of(&self, node: &str) -> Vec<Ipv4Net> {
        self.blocks
            .iter()
            .filter(|&(_, n)| &**n == node)
            .map(|(b, _)| *b)
            .collect()
    }

    /// Every other registered node as a peer (in name order; see [`View::peers_where`]).
    pub fn peers_for(&self, me: &str, my_address: Ipv4Addr, mine: &[Ipv4Net]) -> Vec<Peer> {
        let mut by_name = self.peers_where(my_address, mine, |n| n != me);
        self.nodes
            .keys()
            .filter_map(|n| by_name.remove(&**n))
            .collect()
    }

    /// The registered nodes `wanted` names as peers of the node at `my_address`, by name,
    /// each with the blocks it owns in address order but those overlapping `mine` (the
    /// node's own, which it keeps). A node at `my_address` (a stale registration of the node)
    /// is none.
    pub fn peers_where(
        &self,
        my_address: Ipv4Addr,
        mine: &[Ipv4Net],
        wanted: impl Fn(&str) -> bool,
    ) -> HashMap<&str, Peer> {
        // (Hashed: at 5,000 nodes a tree of their names is milliseconds of string compares
        // per view.)
        let mut out: HashMap<&str, Peer> = self
            .nodes
            .values()
            .filter(|r| r.address != my_address && wanted(&r.name))
            .map(|r| {
                let p = Peer {
                    address: r.address,
                    blocks: Vec::new(),
                };
                (&*r.name, p)
            })
            .collect();
        for (b, owner) in &self.blocks {
            if let Some(p) = out.get_mut(&**owner)
                && !mine.iter().any(|m| m.overlaps(b))
            {
                p.blocks.push(*b);
            }
        }
        out
    }

    /// The pools' blocks (in address order) that no claimed or disputed block overlaps.
    pub fn free_blocks(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.pools
            .values()
            .flat_map(Pool::blocks)
            .filter(|b| self.owner_of(b).is_none() && overlapping(&self.disputes, b).is_none())
    }

    /// Whether the view's blocks are apart from each other, and its pools (as the store's
    /// claims keep them, and as the overlap lookups here take them to be).
    pub fn cidrs_apart(&self) -> bool {
        apart(&self.blocks) && apart(&self.pools)
    }

    /// Whether the CIDR of block or pool key `key`, in a view whose other CIDRs of its kind
    /// are apart, overlaps one of them.
    pub fn overlaps_another(&self, keys: &Keys, key: &str) -> bool {
        fn other<T>(map: &BTreeMap<Ipv4Net, T>, c: Ipv4Net) -> bool {
            overlaps_of(map, &c).any(|(k, _)| *k != c)
        }
        let cidr = |prefix: String| key.strip_prefix(&prefix).and_then(cidr_of_key);
        cidr(keys.blocks()).is_some_and(|c| other(&self.blocks, c))
            || cidr(keys.pools()).is_some_and(|c| other(&self.pools, c))
    }

    /// The claimed block that overlaps `b`, and its owner.
    pub fn owner_of(&self, b: &Ipv4Net) -> Option<(&Ipv4Net, &Name)> {
        overlapping(&self.blocks, b)
    }

    /// The store's view with what `remembered` had and the store does not list (yet): its
    /// nodes, pools, and blocks that overlap none of the store's. What a node forwards on
    /// while the others put back what a store that forgot lost.
    pub fn merged_with(&self, remembered: &View) -> View {
        let mut v = self.clone();
        for (name, n) in &remembered.nodes {
            // (Looked up first: the name is copied only for a node the store lacks.)
            if !v.nodes.contains_key(name) {
                v.nodes.insert(name.clone(), n.clone());
            }
        }
        for (cidr, p) in &remembered.pools {
            if overlapping(&v.pools, cidr).is_none() {
                v.pools.insert(*cidr, p.clone());
            }
        }
        for (b, n) in &remembered.blocks {
            // (The exact block first: one search, where the overlap is two.)
            if !v.blocks.contains_key(b) && v.owner_of(b).is_none() {
                v.blocks.insert(*b, n.clone());
            }
        }
        v
    }

    /// The disputed blocks `node` takes part in, as owner or as a claimant.
    pub fn conflicts_of(&self, node: &str) -> Vec<Conflict> {
        self.disputes
            .iter()
            .map(|(b, claimants)| Conflict {
                block: *b,
                owner: self.owner_of(b).map(|(_, n)| n.to_string()),
                claimants: claimants.iter().cloned().collect(),
            })
            .filter(|c| c.owner.as_deref() == Some(node) || c.claimants.iter().any(|n| n == node))
            .collect()
    }
}

/// A block two nodes assert: the store's owner (the earlier claim, which wins) and the
/// nodes that hold it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub block: Ipv4Net,
    pub owner: Option<String>,
    pub claimants: Vec<String>,
}

/// The entry of `map` whose CIDR overlaps `b`. The CIDRs of `map` do not overlap each other,
/// so one starting inside `b`, or the last one starting before it, is the only candidate.
fn overlapping<'a, T>(map: &'a BTreeMap<Ipv4Net, T>, b: &Ipv4Net) -> Option<(&'a Ipv4Net, &'a T)> {
    overlaps_of(map, b).next()
}

/// The entries of `map` that overlap `b` when the CIDRs of `map` are apart from each other:
/// those starting inside `b`, then the last one starting before it if it holds `b`'s start.
fn overlaps_of<'a, T>(
    map: &'a BTreeMap<Ipv4Net, T>,
    b: &Ipv4Net,
) -> impl Iterator<Item = (&'a Ipv4Net, &'a T)> {
    let (start, addr) = (Ipv4Net::new(b.addr, 0), b.addr);
    // (The one before is looked up only when asked for: `overlapping` stops at the first.)
    let before = std::iter::once_with(move || {
        map.range(..start)
            .next_back()
            .filter(|(c, _)| c.contains(addr))
    })
    .flatten();
    map.range(start..=Ipv4Net::new(b.last(), 32)).chain(before)
}

/// Whether the CIDRs of `map` (in order) are apart from each other.
fn apart<T>(map: &BTreeMap<Ipv4Net, T>) -> bool {
    let mut end: Option<u32> = None;
    for c in map.keys() {
        let (first, last) = (u32::from(c.addr), u32::from(c.last()));
        if end.is_some_and(|e| first <= e) {
            return false;
        }
        end = Some(end.map_or(last, |e| e.max(last)));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_pool_is_carved_into_blocks_in_order() {
        let p = Pool::new(net("10.244.0.0/24"), 26, false);
        p.check().unwrap();
        let b: Vec<String> = p.blocks().map(|b| b.to_string()).collect();
        assert_eq!(
            b,
            [
                "10.244.0.0/26",
                "10.244.0.64/26",
                "10.244.0.128/26",
                "10.244.0.192/26"
            ]
        );
        let bad = Pool::new(net("10.244.0.0/24"), 23, false);
        assert!(bad.check().is_err());
    }

    #[test]
    fn the_view_follows_puts_and_deletes_and_names_bad_values() {
        let k = Keys::new("/ipipd/v1/");
        let mut v = View::default();
        v.apply(
            &k,
            &k.pool(&net("10.244.0.0/24")),
            Some(br#"{"cidr":"10.244.0.0/24","block_size":26}"#),
        );
        v.apply(
            &k,
            &k.node("a"),
            Some(br#"{"name":"a","address":"172.31.0.1"}"#),
        );
        v.apply(
            &k,
            &k.node("b"),
            Some(br#"{"name":"b","address":"172.31.0.2"}"#),
        );
        v.apply(
            &k,
            &k.block(&net("10.244.0.0/26")),
            Some(br#"{"cidr":"10.244.0.0/26","node":"a"}"#),
        );
        v.apply(
            &k,
            &k.block(&net("10.244.0.64/26")),
            Some(br#"{"cidr":"10.244.0.64/26","node":"b"}"#),
        );
        v.apply(&k, &k.alive("a"), Some(b"{}"));
        assert_eq!(v.blocks_of("a"), [net("10.244.0.0/26")]);
        let peers = v.peers_for("a", "172.31.0.1".parse().unwrap(), &[]);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].address, "172.31.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(peers[0].blocks, [net("10.244.0.64/26")]);
        assert_eq!(
            v.free_blocks().collect::<Vec<_>>(),
            [net("10.244.0.128/26"), net("10.244.0.192/26")]
        );
        // b goes: its registration, then its block.
        v.apply(&k, &k.node("b"), None);
        v.apply(&k, &k.block(&net("10.244.0.64/26")), None);
        assert!(
            v.peers_for("a", "172.31.0.1".parse().unwrap(), &[])
                .is_empty()
        );
        v.apply(&k, &k.alive("a"), None);
        assert!(v.alive.is_empty());
        // A value under the wrong key, and one that is not JSON, are named and ignored.
        v.apply(
            &k,
            &k.block(&net("10.244.0.128/26")),
            Some(br#"{"cidr":"10.244.0.0/26","node":"x"}"#),
        );
        v.apply(&k, &k.node("c"), Some(b"{"));
        assert_eq!(v.bad.len(), 2);
        assert_eq!(v.blocks_of("x"), []);
        assert!(!v.nodes.contains_key("c"));
    }

    #[test]
    fn a_free_block_overlaps_no_claimed_block_of_any_size() {
        let mut v = View::default();
        v.pools
            .insert(net("10.0.0.0/24"), Pool::new(net("10.0.0.0/24"), 26, false));
        // A /25 covering the first two /26s, and a /28 inside the last one.
        v.blocks.insert(net("10.0.0.0/25"), "a".into());
        v.blocks.insert(net("10.0.0.224/28"), "b".into());
        assert_eq!(v.free_blocks().collect::<Vec<_>>(), [net("10.0.0.128/26")]);
    }

    #[test]
    fn a_merged_view_adds_what_the_store_lacks_and_takes_the_stores_word_where_both_speak() {
        let k = Keys::new("/p");
        let mut last = View::default();
        last.blocks.insert(net("10.0.0.0/26"), "a".into());
        last.blocks.insert(net("10.0.0.64/26"), "b".into());
        last.blocks.insert(net("10.0.0.128/26"), "c".into());
        for (n, a) in [
            ("a", "172.31.0.1"),
            ("b", "172.31.0.2"),
            ("c", "172.31.0.3"),
        ] {
            last.nodes.insert(
                n.into(),
                NodeRecord {
                    name: n.into(),
                    address: a.parse().unwrap(),
                },
            );
        }
        // The store came back with a's block only, and d holding a /25 over c's old block.
        let mut store = View::default();
        store.blocks.insert(net("10.0.0.0/26"), "a".into());
        store.blocks.insert(net("10.0.0.128/25"), "d".into());
        store.apply(
            &k,
            &k.node("d"),
            Some(br#"{"name":"d","address":"172.31.0.4"}"#),
        );
        let m = store.merged_with(&last);
        assert_eq!(m.blocks_of("b"), [net("10.0.0.64/26")]);
        assert_eq!(m.blocks_of("c"), []);
        assert_eq!(m.blocks_of("d"), [net("10.0.0.128/25")]);
        assert_eq!(m.nodes.len(), 4);
        assert!(m.alive.is_empty());
    }

    #[test]
    fn disputes_tombstones_the_identity_and_the_marker_are_read_from_their_keys() {
        let k = Keys::new("/p");
        let mut v = View::default();
        let b = net("10.0.0.0/26");
        v.blocks.insert(b, "w".into());
        v.apply(
            &k,
            &k.dispute("l", &b),
            Some(br#"{"cidr":"10.0.0.0/26","node":"l"}"#),
        );
        let c = Conflict {
            block: b,
            owner: Some("w".into()),
            claimants: vec!["l".into()],
        };
        assert_eq!(v.conflicts_of("w"), std::slice::from_ref(&c));
        assert_eq!(v.conflicts_of("l"), [c]);
        assert_eq!(v.conflicts_of("x"), []);
        // A disputed block is not free, even once its owner lets it go.
        v.pools
            .insert(net("10.0.0.0/25"), Pool::new(net("10.0.0.0/25"), 26, false));
        v.blocks.clear();
        assert_eq!(v.free_blocks().collect::<Vec<_>>(), [net("10.0.0.64/26")]);
        v.apply(&k, &k.dispute("l", &b), None);
        assert!(v.disputes.is_empty());
        // A dispute under another node's key is refused.
        v.apply(
            &k,
            &k.dispute("m", &b),
            Some(br#"{"cidr":"10.0.0.0/26","node":"l"}"#),
        );
        assert!(v.disputes.is_empty() && v.bad.len() == 1);
        v.apply(&k, &k.removed("n"), Some(br#"{"at":1}"#));
        v.apply(&k, &k.reasserting(), Some(br#"{"node":"a"}"#));
        v.apply(&k, &k.cluster(), Some(br#"{"id":"x","created":1}"#));
        assert!(v.removed.contains("n"));
        assert_eq!(v.reasserting.as_deref(), Some("a"));
        assert_eq!(v.cluster.as_ref().map(|c| c.id.as_str()), Some("x"));
        v.apply(&k, &k.reasserting(), None);
        v.apply(&k, &k.cluster(), None);
        assert_eq!((v.reasserting, v.cluster), (None, None));
    }

    #[test]
    fn keys_live_under_the_prefix() {
        let k = Keys::new("/ipipd/v1");
        assert_eq!(
            k.block(&net("10.244.3.0/26")),
            "/ipipd/v1/blocks/10-244-3-0-26"
        );
        assert_eq!(k.node("n1"), "/ipipd/v1/nodes/n1");
        assert_eq!(cidr_of_key("10-244-3-0-26"), Some(net("10.244.3.0/26")));
        assert_eq!(cidr_of_key("10-244-3-1-26"), None);
        assert_eq!(cidr_of_key("junk"), None);
        assert_eq!(k.alive("n1"), "/ipipd/v1/alive/n1");
    }
}
