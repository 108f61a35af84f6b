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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

use crate::config::{Ipv4Net, Peer};

/// An address pool blocks are carved from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub cidr: Ipv4Net,
    pub block_size: u8,
}

impl Pool {
    /// The pool's rules: a block size between the pool's prefix length and /30.
    pub fn check(&self) -> Result<(), String> {
        crate::config::check_block(&self.cidr)?;
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
    pub name: String,
    pub address: Ipv4Addr,
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
}

/// The cluster as the datastore has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub pools: BTreeMap<Ipv4Net, Pool>,
    pub blocks: BTreeMap<Ipv4Net, String>,
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Nodes whose daemon holds its liveness key.
    pub alive: BTreeSet<String>,
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
                        self.blocks.insert(b.cidr, b.node);
                    }
                    None => {
                        self.blocks.remove(&cidr);
                    }
                }
            } else if let Some(name) = key.strip_prefix(&keys.nodes()) {
                match value {
                    Some(v) => {
                        let n: NodeRecord = parse(v)?;
                        if n.name != name {
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
                        self.alive.insert(name.to_string());
                    }
                    None => {
                        self.alive.remove(name);
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
            .filter(|(_, n)| n.as_str() == node)
            .map(|(b, _)| *b)
            .collect()
    }

    /// Every other registered node as a peer, with the blocks it owns; a node whose address
    /// is `me`'s own (a stale registration) is left out.
    pub fn peers_for(&self, me: &str, my_address: Ipv4Addr) -> Vec<Peer> {
        let mut by_owner: BTreeMap<&str, Vec<Ipv4Net>> = BTreeMap::new();
        for (b, n) in &self.blocks {
            by_owner.entry(n.as_str()).or_default().push(*b);
        }
        self.nodes
            .values()
            .filter(|n| n.name != me && n.address != my_address)
            .map(|n| Peer {
                address: n.address,
                blocks: by_owner.remove(n.name.as_str()).unwrap_or_default(),
            })
            .collect()
    }

    /// The pools' blocks (in address order) that no claimed block overlaps.
    pub fn free_blocks(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.pools
            .values()
            .flat_map(Pool::blocks)
            .filter(|b| !self.overlaps_a_block(b))
    }

    /// Whether a claimed block overlaps `b`. Claimed blocks do not overlap each other, so
    /// one starting inside `b`, or the last one starting before it, is the only candidate.
    fn overlaps_a_block(&self, b: &Ipv4Net) -> bool {
        let start = Ipv4Net::new(b.addr, 0);
        let last = Ipv4Addr::from(u32::from(b.addr) | !mask(b.len));
        self.blocks
            .range(start..=Ipv4Net::new(last, 32))
            .next()
            .is_some()
            || self
                .blocks
                .range(..start)
                .next_back()
                .is_some_and(|(c, _)| c.contains(b.addr))
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_pool_is_carved_into_blocks_in_order() {
        let p = Pool {
            cidr: net("10.244.0.0/24"),
            block_size: 26,
        };
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
        let bad = Pool {
            cidr: net("10.244.0.0/24"),
            block_size: 23,
        };
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
        let peers = v.peers_for("a", "172.31.0.1".parse().unwrap());
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
        assert!(v.peers_for("a", "172.31.0.1".parse().unwrap()).is_empty());
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
        v.pools.insert(
            net("10.0.0.0/24"),
            Pool {
                cidr: net("10.0.0.0/24"),
                block_size: 26,
            },
        );
        // A /25 covering the first two /26s, and a /28 inside the last one.
        v.blocks.insert(net("10.0.0.0/25"), "a".into());
        v.blocks.insert(net("10.0.0.224/28"), "b".into());
        assert_eq!(v.free_blocks().collect::<Vec<_>>(), [net("10.0.0.128/26")]);
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
