//! Calico's datastore on etcd, as libcalico-go's etcdv3 backend keeps it, read only: what a
//! node of a Calico cluster forwards on, made into ipipd's [`View`]. Pure: keys, values, and
//! the view they make. The formats are libcalico-go's:
//!
//! | key (under the prefix, default `/calico`) | value | source |
//! |---|---|---|
//! | `resources/v3/projectcalico.org/nodes/<name>` | a Node: `spec.bgp.ipv4Address` (a CIDR: the node's address and its subnet), `spec.bgp.ipv4IPIPTunnelAddr` | `lib/backend/model/resource.go`, `lib/apis/internalapi/node.go` |
//! | `resources/v3/projectcalico.org/ippools/<name>` | an IPPool: `spec.cidr`, `spec.blockSize` (26 when absent), `spec.ipipMode` (`Always`, `CrossSubnet`, `Never`; absent or empty is `Never`), `spec.natOutgoing`, `spec.disabled` | `api/pkg/apis/projectcalico/v3/ippool.go` |
//! | `ipam/v2/host/<node>/ipv4/block/<a.b.c.d-len>` | `{"state": "confirmed", "deleted": false}`: the node's affinity to the block; only `confirmed` counts (and an empty value or state, which older versions wrote and Calico's IPAM takes as confirmed) | `lib/backend/model/block_affinity.go`, `lib/ipam/ipam.go` |
//! | `ipam/v2/assignment/ipv4/block/<a.b.c.d-len>` | an AllocationBlock: `cidr`, `affinity` (`"host:<node>"`); the owner of a block no affinity key names, as Calico's route source `CalicoIPAM` takes it | `lib/backend/model/block.go` |
//! | `resources/v3/projectcalico.org/workloadendpoints/<namespace>/<name>` | a WorkloadEndpoint: `spec.node`, `spec.interfaceName`, `spec.ipNetworks`, `spec.mac`, `spec.pod` | `lib/apis/internalapi/workloadendpoint.go` |
//!
//! Unknown fields are ignored; a value that does not parse is named in [`Calico::bad`] (for
//! the log) and leaves what the key held before; IPv6 pools, blocks and addresses are not
//! ipipd's and are passed over without a word.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::Deserialize;

use super::model::{CalicoPool, IpipMode, Name, NodeRecord, Pool, View, Workload};
use crate::{
    config::{Config, EndpointCfg},
    net::{Ipv4Net, check_ifname, parse_mac},
};

/// The prefix libcalico-go's etcdv3 backend writes under.
pub const DEFAULT_PREFIX: &str = "/calico";

/// The key prefixes ipipd reads, under the store's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalicoKeys {
    pub nodes: String,
    pub pools: String,
    pub workloads: String,
    pub affinities: String,
    pub blocks: String,
}

impl CalicoKeys {
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_end_matches('/');
        let res = format!("{p}/resources/v3/projectcalico.org");
        CalicoKeys {
            nodes: format!("{res}/nodes/"),
            pools: format!("{res}/ippools/"),
            workloads: format!("{res}/workloadendpoints/"),
            affinities: format!("{p}/ipam/v2/host/"),
            blocks: format!("{p}/ipam/v2/assignment/ipv4/block/"),
        }
    }

    /// Every prefix, for the list.
    pub fn all(&self) -> [&str; 5] {
        [
            &self.nodes,
            &self.pools,
            &self.workloads,
            &self.affinities,
            &self.blocks,
        ]
    }
}

/// A Calico node as ipipd reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CalicoNode {
    /// `spec.bgp.ipv4Address`; None: the node has no IPv4 address (not a peer).
    address: Option<Ipv4Addr>,
    tunnel: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RawPool {
    cidr: Ipv4Net,
    block_size: u8,
    ipip: IpipMode,
    nat: bool,
    disabled: bool,
}

/// Calico's objects as listed and watched (only those ipipd reads).
#[derive(Debug, Clone, Default)]
pub struct Calico {
    nodes: BTreeMap<String, CalicoNode>,
    pools: BTreeMap<String, RawPool>,
    /// (block, node) → whether the affinity counts (confirmed).
    affinities: BTreeMap<(Ipv4Net, String), bool>,
    /// Allocation blocks → the node of their `affinity`, if a host's.
    blocks: BTreeMap<Ipv4Net, Option<String>>,
    workloads: BTreeMap<String, Workload>,
    /// Values that did not parse: (key, why), for the log.
    pub bad: Vec<(String, String)>,
}

// ---- the values as libcalico-go writes them (only the fields ipipd reads)

#[derive(Deserialize)]
struct Resource<S> {
    spec: Option<S>,
}

#[derive(Deserialize, Default)]
struct NodeSpec {
    #[serde(default)]
    bgp: Option<NodeBgp>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NodeBgp {
    #[serde(default)]
    ipv4_address: Option<String>,
    #[serde(default, rename = "ipv4IPIPTunnelAddr")]
    ipv4_ipip_tunnel_addr: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolSpec {
    cidr: String,
    #[serde(default)]
    block_size: Option<u8>,
    #[serde(default)]
    ipip_mode: Option<String>,
    #[serde(default)]
    nat_outgoing: bool,
    #[serde(default)]
    disabled: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WepSpec {
    node: String,
    interface_name: String,
    #[serde(default)]
    ip_networks: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    pod: Option<String>,
}

#[derive(Deserialize, Default)]
struct Affinity {
    #[serde(default)]
    state: String,
    #[serde(default)]
    deleted: bool,
}

#[derive(Deserialize)]
struct AllocationBlock {
    cidr: String,
    #[serde(default)]
    affinity: Option<String>,
    #[serde(default)]
    deleted: bool,
}

fn json<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
    serde_json::from_slice(v).map_err(|e| e.to_string())
}

fn spec<S: serde::de::DeserializeOwned>(v: &[u8]) -> Result<S, String> {
    json::<Resource<S>>(v)?.spec.ok_or_else(|| "no spec".into())
}

/// An IPv4 prefix as Calico writes it; host bits are allowed (`172.31.242.156/20` is a
/// node's address with its subnet). None for IPv6.
fn v4_cidr(s: &str) -> Result<Option<(Ipv4Addr, u8)>, String> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    if a.contains(':') {
        return Ok(None);
    }
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR"))?;
    let len: u8 = l
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?}: bad prefix length"))?;
    Ok(Some((addr, len)))
}

/// The block of a key's last part, `a.b.c.d-len` (libcalico-go puts the CIDR there with its
/// `/` made a `-`). None for IPv6.
fn block_of_key(part: &str) -> Result<Option<Ipv4Net>, String> {
    let (a, l) = part
        .rsplit_once('-')
        .ok_or_else(|| format!("{part:?} is not a block's key"))?;
    if a.contains(':') {
        return Ok(None);
    }
    format!("{a}/{l}").parse().map(Some)
}

fn ipip_mode(s: Option<&str>) -> Result<IpipMode, String> {
    Ok(match s.unwrap_or("") {
        "Always" => IpipMode::Always,
        "CrossSubnet" => IpipMode::CrossSubnet,
        "Never" | "" => IpipMode::Never,
        o => return Err(format!("ipipMode {o:?}: not Always, CrossSubnet or Never")),
    })
}

impl Calico {
    /// Applies one key's value (None: deleted); whether the key is one ipipd reads.
    pub fn apply(&mut self, keys: &CalicoKeys, key: &str, value: Option<&[u8]>) -> bool {
        let r = if let Some(name) = key.strip_prefix(&keys.nodes) {
            self.node(name, value)
        } else if let Some(name) = key.strip_prefix(&keys.pools) {
            self.pool(name, value)
        } else if let Some(rest) = key.strip_prefix(&keys.workloads) {
            self.workload(rest, value)
        } else if let Some(rest) = key.strip_prefix(&keys.affinities) {
            self.affinity(rest, value)
        } else if let Some(part) = key.strip_prefix(&keys.blocks) {
            self.block(part, value)
        } else {
            return false;
        };
        if let Err(e) = r {
            self.bad.push((key.to_string(), e));
        }
        true
    }

    fn node(&mut self, name: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(v) = value else {
            self.nodes.remove(name);
            return Ok(());
        };
        let bgp = spec::<NodeSpec>(v)?.bgp.unwrap_or_default();
        let address = match bgp.ipv4_address.as_deref() {
            Some(a) => v4_cidr(a)
                .map_err(|e| format!("spec.bgp.ipv4Address: {e}"))?
                .map(|(a, _)| a),
            None => None,
        };
        let tunnel = match bgp.ipv4_ipip_tunnel_addr.as_deref() {
            Some(t) if !t.is_empty() => Some(
                t.parse::<Ipv4Addr>()
                    .map_err(|_| format!("spec.bgp.ipv4IPIPTunnelAddr: {t:?} is not IPv4"))?,
            ),
            _ => None,
        };
        self.nodes
            .insert(name.to_string(), CalicoNode { address, tunnel });
        Ok(())
    }

    fn pool(&mut self, name: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(v) = value else {
            self.pools.remove(name);
            return Ok(());
        };
        let s = spec::<PoolSpec>(v)?;
        let Some((addr, len)) = v4_cidr(&s.cidr).map_err(|e| format!("spec.cidr: {e}"))? else {
            self.pools.remove(name);
            return Ok(());
        };
        let block_size = s.block_size.unwrap_or(26);
        if block_size < len || block_size > 32 {
            return Err(format!(
                "spec.blockSize {block_size}: must be between the pool's /{len} and /32"
            ));
        }
        self.pools.insert(
            name.to_string(),
            RawPool {
                cidr: Ipv4Net::containing(addr, len),
                block_size,
                ipip: ipip_mode(s.ipip_mode.as_deref())?,
                nat: s.nat_outgoing,
                disabled: s.disabled,
            },
        );
        Ok(())
    }

    fn workload(&mut self, rest: &str, value: Option<&[u8]>) -> Result<(), String> {
        let (namespace, _) = rest
            .split_once('/')
            .ok_or("not a workload endpoint's key (namespace/name)")?;
        let Some(v) = value else {
            self.workloads.remove(rest);
            return Ok(());
        };
        let s = spec::<WepSpec>(v)?;
        check_ifname(&s.interface_name).map_err(|e| format!("spec.interfaceName: {e}"))?;
        let mut v4 = Vec::new();
        for n in &s.ip_networks {
            if let Some((a, l)) = v4_cidr(n).map_err(|e| format!("spec.ipNetworks: {e}"))? {
                if l != 32 {
                    return Err(format!("spec.ipNetworks: {n:?} is not a /32"));
                }
                v4.push(a);
            }
        }
        let Some(&address) = v4.first() else {
            // An IPv6-only pod: nothing of ipipd's.
            self.workloads.remove(rest);
            return Ok(());
        };
        if v4.len() > 1 {
            return Err(format!(
                "spec.ipNetworks: {} IPv4 addresses; ipipd gives a pod one",
                v4.len()
            ));
        }
        let mac = match s.mac.as_deref() {
            Some(m) if !m.is_empty() => Some(parse_mac(m).map_err(|e| format!("spec.mac: {e}"))?),
            _ => None,
        };
        let pod = s
            .pod
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| rest.split_once('/').map_or(rest, |(_, n)| n).to_string());
        self.workloads.insert(
            rest.to_string(),
            Workload {
                node: s.node,
                interface: s.interface_name,
                address,
                mac,
                pod: format!("{namespace}/{pod}"),
            },
        );
        Ok(())
    }

    fn affinity(&mut self, rest: &str, value: Option<&[u8]>) -> Result<(), String> {
        // <node>/ipv4/block/<a.b.c.d-len>
        let (node, part) = rest
            .split_once('/')
            .and_then(|(n, r)| Some((n, r.strip_prefix("ipv4/block/")?)))
            .ok_or("not an IPv4 block affinity's key")?;
        let Some(block) = block_of_key(part)? else {
            return Ok(());
        };
        let key = (block, node.to_string());
        let Some(v) = value else {
            self.affinities.remove(&key);
            return Ok(());
        };
        // Older versions wrote no value: Calico reads it as `{}`, an empty state.
        let a: Affinity = if v.is_empty() {
            Affinity::default()
        } else {
            json(v)?
        };
        let counts = !a.deleted && matches!(a.state.as_str(), "confirmed" | "");
        self.affinities.insert(key, counts);
        Ok(())
    }

    fn block(&mut self, part: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(block) = block_of_key(part)? else {
            return Ok(());
        };
        let Some(v) = value else {
            self.blocks.remove(&block);
            return Ok(());
        };
        let b: AllocationBlock = json(v)?;
        match v4_cidr(&b.cidr)? {
            Some((a, l)) if Ipv4Net::new(a, l) == block => {}
            _ => return Err(format!("cidr {:?} under another key", b.cidr)),
        }
        if b.deleted {
            self.blocks.remove(&block);
            return Ok(());
        }
        let host = b
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
            .map(str::to_string);
        self.blocks.insert(block, host);
        Ok(())
    }

    /// ipipd's view of the cluster: the IPv4 pools (with their Calico modes), every node with
    /// an IPv4 address, each block's node (its confirmed affinity; an allocation block's
    /// affinity where no affinity key names the block), the tunnel addresses, the pods.
    pub fn view(&self) -> View {
        let mut v = View::default();
        for (name, p) in &self.pools {
            if v.pools.contains_key(&p.cidr) {
                continue; // Two IPPools of one CIDR: the first by name.
            }
            v.pools
                .insert(p.cidr, Pool::new(p.cidr, p.block_size, p.nat));
            v.calico.pools.insert(
                p.cidr,
                CalicoPool {
                    name: name.clone(),
                    ipip_mode: p.ipip,
                    disabled: p.disabled,
                },
            );
        }
        for (name, n) in &self.nodes {
            if let Some(address) = n.address {
                let name = Name::from(name.as_str());
                v.nodes.insert(name.clone(), NodeRecord { name, address });
            }
            if let Some(t) = n.tunnel {
                v.calico.tunnel_addresses.insert(name.clone(), t);
            }
        }
        let named: BTreeSet<Ipv4Net> = self.affinities.keys().map(|(b, _)| *b).collect();
        for ((b, node), counts) in &self.affinities {
            // Two confirmed affinities of one block: the one its allocation block names.
            let theirs = self.blocks.get(b).and_then(|h| h.as_deref()) == Some(node.as_str());
            if *counts && (theirs || !v.blocks.contains_key(b)) {
                v.blocks.insert(*b, node.as_str().into());
            }
        }
        for (b, host) in &self.blocks {
            if let Some(h) = host
                && !named.contains(b)
            {
                v.blocks.insert(*b, h.as_str().into());
            }
        }
        v.calico.workloads = self.workloads.clone();
        v
    }
}

/// What Calico's view adds to a node's config `c` (its blocks already the node's): the
/// pools' modes, the node's tunnel address, and its pods as endpoints — those the node can
/// take: inside its blocks, no address or interface twice, none the file has (the file's
/// win). The pods and the tunnel address left out come back, with why.
pub fn overlay(c: &mut Config, view: &View) -> Vec<(String, String)> {
    let mut skipped = Vec::new();
    c.pool_modes = view
        .calico
        .pools
        .iter()
        .map(|(cidr, p)| (*cidr, p.ipip_mode))
        .collect();
    let me = c.node.name.clone();
    let in_blocks = |a: Ipv4Addr, c: &Config| c.blocks.iter().any(|b| b.contains(a));
    let mut addresses: BTreeSet<Ipv4Addr> = c.endpoints.iter().map(|e| e.address).collect();
    let mut interfaces: BTreeSet<String> =
        c.endpoints.iter().map(|e| e.interface.clone()).collect();
    for (key, w) in view.calico.workloads_of(&me) {
        let e = EndpointCfg {
            address: w.address,
            interface: w.interface.clone(),
            mac: w.mac,
            pod: Some(w.pod.clone()),
            attachment: None,
        };
        let why = if let Err((f, m)) = e.check(&c.node) {
            Some(format!("{f}: {m}"))
        } else if !in_blocks(w.address, c) {
            Some(format!(
                "{} is in no block of this node (an address Calico's IPAM borrowed from another node's block is not supported)",
                w.address
            ))
        } else if addresses.contains(&w.address) {
            Some(format!("{} is another endpoint's too", w.address))
        } else if interfaces.contains(&w.interface) {
            Some(format!("{} is another endpoint's too", w.interface))
        } else {
            None
        };
        match why {
            Some(why) => skipped.push((key.clone(), why)),
            None => {
                addresses.insert(e.address);
                interfaces.insert(e.interface.clone());
                c.endpoints.push(e);
            }
        }
    }
    c.tunnel_address = None;
    if let Some(&t) = view.calico.tunnel_addresses.get(&me) {
        if !in_blocks(t, c) {
            skipped.push((
                format!("tunnel address {t}"),
                "in no block of this node".into(),
            ));
        } else if addresses.contains(&t) {
            skipped.push((
                format!("tunnel address {t}"),
                "an endpoint's address".into(),
            ));
        } else {
            c.tunnel_address = Some(t);
        }
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    const WORKER: &str = "izj6c3cqwumhn5jov661z7z";
    const MASTER: &str = "izj6cg11g0cdegoowj058ez";

    /// A Node as libcalico-go writes it (lib/apis/internalapi/node.go: spec.bgp).
    fn node(address: &str, tunnel: &str) -> String {
        format!(
            r#"{{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{{"name":"x","creationTimestamp":null}},"spec":{{"bgp":{{"ipv4Address":"{address}","ipv4IPIPTunnelAddr":"{tunnel}"}},"orchRefs":[{{"nodeName":"x","orchestrator":"k8s"}}]}},"status":{{}}}}"#
        )
    }

    /// The seed's cluster as Calico keeps it.
    fn seed() -> (CalicoKeys, Calico) {
        let k = CalicoKeys::new("/calico");
        let mut c = Calico::default();
        let put =
            |c: &mut Calico, key: String, v: &str| assert!(c.apply(&k, &key, Some(v.as_bytes())));
        put(
            &mut c,
            format!("{}{WORKER}", k.nodes),
            &node("172.31.242.156/20", "192.168.83.128"),
        );
        put(
            &mut c,
            format!("{}{MASTER}", k.nodes),
            &node("172.31.242.157/20", "192.168.179.0"),
        );
        // api/pkg/apis/projectcalico/v3/ippool.go
        put(
            &mut c,
            format!("{}default-ipv4-ippool", k.pools),
            r#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool"},"spec":{"cidr":"192.168.0.0/16","ipipMode":"Always","natOutgoing":true,"nodeSelector":"all()","blockSize":26}}"#,
        );
        // lib/backend/model/block_affinity.go
        put(
            &mut c,
            format!("{}{WORKER}/ipv4/block/192.168.83.128-26", k.affinities),
            r#"{"state":"confirmed","deleted":false}"#,
        );
        put(
            &mut c,
            format!("{}{MASTER}/ipv4/block/192.168.179.0-26", k.affinities),
            r#"{"state":"confirmed","deleted":false}"#,
        );
        // lib/apis/internalapi/workloadendpoint.go
        put(
            &mut c,
            format!(
                "{}kube-system/{WORKER}-k8s-kube--dns--545bc4bfd4--c9vsc-eth0",
                k.workloads
            ),
            &format!(
                r#"{{"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3","metadata":{{"name":"n","namespace":"kube-system"}},"spec":{{"orchestrator":"k8s","node":"{WORKER}","containerID":"c","pod":"kube-dns-545bc4bfd4-c9vsc","endpoint":"eth0","ipNetworks":["192.168.83.129/32"],"profiles":["kns.kube-system"],"interfaceName":"cali513e7f6c556","mac":"ee:a1:b2:c3:d4:e5"}}}}"#
            ),
        );
        (k, c)
    }

    #[test]
    fn the_seeds_store_makes_its_route_table() {
        let (_, c) = seed();
        assert!(c.bad.is_empty(), "{:?}", c.bad);
        let v = c.view();
        assert_eq!(v.blocks_of(WORKER), [net("192.168.83.128/26")]);
        assert_eq!(v.blocks_of(MASTER), [net("192.168.179.0/26")]);
        let peers = v.peers_for(WORKER, "172.31.242.156".parse().unwrap(), &[]);
        assert_eq!(peers.len(), 1);
        assert_eq!(
            peers[0].address,
            "172.31.242.157".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(peers[0].blocks, [net("192.168.179.0/26")]);
        let pool = &v.pools[&net("192.168.0.0/16")];
        assert_eq!((pool.block_size, pool.nat_outgoing), (26, true));
        let cp = &v.calico.pools[&net("192.168.0.0/16")];
        assert_eq!(
            (cp.name.as_str(), cp.ipip_mode),
            ("default-ipv4-ippool", IpipMode::Always)
        );
        assert_eq!(
            v.calico.tunnel_addresses[WORKER],
            "192.168.83.128".parse::<Ipv4Addr>().unwrap()
        );
        let w: Vec<&Workload> = v.calico.workloads.values().collect();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].node, WORKER);
        assert_eq!(w[0].interface, "cali513e7f6c556");
        assert_eq!(w[0].address, "192.168.83.129".parse::<Ipv4Addr>().unwrap());
        assert_eq!(w[0].mac, Some([0xee, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5]));
        assert_eq!(w[0].pod, "kube-system/kube-dns-545bc4bfd4-c9vsc");
    }

    #[test]
    fn only_a_confirmed_affinity_counts_and_an_allocation_block_speaks_where_none_does() {
        let (k, mut c) = seed();
        let aff = |n: &str, b: &str| format!("{}{n}/ipv4/block/{b}", k.affinities);
        c.apply(
            &k,
            &aff("n3", "192.168.7.0-26"),
            Some(br#"{"state":"pending"}"#),
        );
        c.apply(
            &k,
            &aff("n3", "192.168.8.0-26"),
            Some(br#"{"state":"pendingDeletion"}"#),
        );
        c.apply(&k, &aff("n3", "192.168.9.0-26"), Some(b""));
        c.apply(
            &k,
            &aff("n3", "192.168.10.0-26"),
            Some(br#"{"state":"confirmed","deleted":true}"#),
        );
        // lib/backend/model/block.go: the pending block's allocation block names n3 already;
        // a block with no affinity key at all is n4's by its allocation block.
        let blk = |b: &str| format!("{}{b}", k.blocks);
        let ab = |cidr: &str, aff: &str| {
            format!(
                r#"{{"cidr":"{cidr}","affinity":{aff},"allocations":[null],"unallocated":[0],"attributes":[],"sequenceNumber":0,"deleted":false}}"#
            )
        };
        c.apply(
            &k,
            &blk("192.168.7.0-26"),
            Some(ab("192.168.7.0/26", r#""host:n3""#).as_bytes()),
        );
        c.apply(
            &k,
            &blk("192.168.11.0-26"),
            Some(ab("192.168.11.0/26", r#""host:n4""#).as_bytes()),
        );
        c.apply(
            &k,
            &blk("192.168.12.0-26"),
            Some(ab("192.168.12.0/26", "null").as_bytes()),
        );
        assert!(c.bad.is_empty(), "{:?}", c.bad);
        let v = c.view();
        assert_eq!(v.blocks_of("n3"), [net("192.168.9.0/26")]);
        assert_eq!(v.blocks_of("n4"), [net("192.168.11.0/26")]);
        assert!(!v.blocks.contains_key(&net("192.168.12.0/26")));
        // Confirmed at last; then released.
        c.apply(
            &k,
            &aff("n3", "192.168.7.0-26"),
            Some(br#"{"state":"confirmed"}"#),
        );
        assert!(c.view().blocks_of("n3").contains(&net("192.168.7.0/26")));
        c.apply(&k, &aff("n3", "192.168.7.0-26"), None);
        c.apply(&k, &blk("192.168.7.0-26"), None);
        assert!(!c.view().blocks.contains_key(&net("192.168.7.0/26")));
    }

    #[test]
    fn modes_and_pools_follow_the_store() {
        let (k, mut c) = seed();
        let key = format!("{}default-ipv4-ippool", k.pools);
        for (mode, want) in [
            (r#""CrossSubnet""#, IpipMode::CrossSubnet),
            (r#""Never""#, IpipMode::Never),
            (r#""""#, IpipMode::Never),
            ("null", IpipMode::Never),
        ] {
            let v = format!(
                r#"{{"spec":{{"cidr":"192.168.0.0/16","ipipMode":{mode},"vxlanMode":"Never"}}}}"#
            );
            c.apply(&k, &key, Some(v.as_bytes()));
            let view = c.view();
            assert_eq!(
                view.calico.pools[&net("192.168.0.0/16")].ipip_mode,
                want,
                "{mode}"
            );
            assert_eq!(view.pools[&net("192.168.0.0/16")].block_size, 26);
        }
        // An IPv6 pool is passed over; deleting the pool takes it away.
        c.apply(
            &k,
            &format!("{}default-ipv6-ippool", k.pools),
            Some(br#"{"spec":{"cidr":"fd00::/48"}}"#),
        );
        assert_eq!(c.view().pools.len(), 1);
        c.apply(&k, &key, None);
        assert!(c.view().pools.is_empty());
        assert!(c.bad.is_empty(), "{:?}", c.bad);
    }

    #[test]
    fn a_malformed_value_is_named_and_leaves_what_was_there() {
        let (k, mut c) = seed();
        let before = c.view();
        let wep = c.workloads.keys().next().unwrap().clone();
        for (key, v) in [
            (
                format!("{}{WORKER}", k.nodes),
                r#"{"spec":{"bgp":{"ipv4Address":"not-an-ip/20"}}}"#,
            ),
            (format!("{}{WORKER}", k.nodes), "{"),
            (
                format!("{}default-ipv4-ippool", k.pools),
                r#"{"spec":{"cidr":"192.168.0.0/16","ipipMode":"Sometimes"}}"#,
            ),
            (
                format!("{}default-ipv4-ippool", k.pools),
                r#"{"spec":{"cidr":"192.168.0.0/16","blockSize":12}}"#,
            ),
            (
                format!("{}{wep}", k.workloads),
                r#"{"spec":{"node":"x","interfaceName":"bad name!","ipNetworks":["192.168.83.129/32"]}}"#,
            ),
            (
                format!("{}{wep}", k.workloads),
                r#"{"spec":{"node":"x","interfaceName":"cali1","ipNetworks":["192.168.83.0/26"]}}"#,
            ),
            (
                format!("{}{wep}", k.workloads),
                r#"{"spec":{"node":"x","interfaceName":"cali1","ipNetworks":["192.168.83.1/32"],"mac":"zz"}}"#,
            ),
            (
                format!("{}{WORKER}/ipv4/block/192.168.83.128-26", k.affinities),
                r#"{"state":5}"#,
            ),
            (
                format!("{}192.168.83.128-26", k.blocks),
                r#"{"cidr":"10.0.0.0/26","affinity":"host:x"}"#,
            ),
            (format!("{}junk", k.blocks), "{}"),
            (format!("{}no-namespace", k.workloads), "{}"),
        ] {
            let n = c.bad.len();
            assert!(c.apply(&k, &key, Some(v.as_bytes())));
            assert_eq!(c.bad.len(), n + 1, "{key} = {v}");
        }
        assert_eq!(c.view(), before);
        // Keys ipipd does not read are not its business.
        assert!(!c.apply(
            &k,
            "/calico/resources/v3/projectcalico.org/profiles/kns.default",
            Some(b"{")
        ));
        assert!(!c.apply(&k, "/calico/ipam/v2/handle/k8s-pod-network.abc", Some(b"{")));
    }

    #[test]
    fn a_node_takes_its_pods_and_tunnel_address_and_leaves_out_what_it_cannot() {
        let (k, mut c) = seed();
        let wep = |c: &mut Calico, name: &str, node: &str, ifc: &str, addr: &str| {
            let v = format!(
                r#"{{"spec":{{"node":"{node}","interfaceName":"{ifc}","ipNetworks":["{addr}/32"],"pod":"{name}"}}}}"#
            );
            assert!(c.apply(
                &k,
                &format!("{}default/{name}", k.workloads),
                Some(v.as_bytes())
            ));
        };
        wep(&mut c, "a", WORKER, "cali000000000a", "192.168.83.130");
        wep(
            &mut c,
            "b-borrowed",
            WORKER,
            "cali000000000b",
            "192.168.179.9",
        );
        wep(
            &mut c,
            "c-same-address",
            WORKER,
            "cali000000000c",
            "192.168.83.130",
        );
        wep(
            &mut c,
            "d-same-veth",
            WORKER,
            "cali000000000a",
            "192.168.83.131",
        );
        wep(&mut c, "e-uplink", WORKER, "eth0", "192.168.83.132");
        wep(
            &mut c,
            "f-master",
            MASTER,
            "cali000000000f",
            "192.168.179.2",
        );
        wep(
            &mut c,
            "g-files",
            WORKER,
            "cali000000000g",
            "192.168.83.140",
        );
        let file = Config::parse(&format!(
            "[node]\nname = \"{WORKER}\"\nuplink = \"eth0\"\naddress = \"172.31.242.156\"\n             [[endpoint]]\naddress = \"192.168.83.140\"\ninterface = \"califile\"\n             [datastore]\nkind = \"calico-etcd\"\netcd = [\"http://127.0.0.1:2379\"]\n"
        ))
        .unwrap();
        assert_eq!(file.datastore.as_ref().unwrap().prefix, "/calico");
        let mem = crate::datastore::memory::Memory {
            view: c.view().into(),
            ..Default::default()
        };
        let (cfg, skipped) = super::super::sync::overlay_noting(&file, &mem);
        let eps: Vec<(String, Option<String>)> = cfg
            .endpoints
            .iter()
            .map(|e| (format!("{} {}", e.address, e.interface), e.pod.clone()))
            .collect();
        assert_eq!(
            eps,
            [
                ("192.168.83.140 califile".to_string(), None),
                (
                    "192.168.83.130 cali000000000a".into(),
                    Some("default/a".into())
                ),
                (
                    "192.168.83.129 cali513e7f6c556".into(),
                    Some("kube-system/kube-dns-545bc4bfd4-c9vsc".into())
                ),
            ]
        );
        let why: Vec<&str> = skipped
            .iter()
            .map(|(k, _)| k.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(
            why,
            [
                "b-borrowed",
                "c-same-address",
                "d-same-veth",
                "e-uplink",
                "g-files"
            ]
        );
        assert_eq!(cfg.tunnel_address, Some("192.168.83.128".parse().unwrap()));
        assert_eq!(
            cfg.pool_modes,
            [(net("192.168.0.0/16"), IpipMode::Always)].into()
        );
        crate::rules::validate(&cfg).unwrap();
        // A tunnel address outside the node's blocks is left out too.
        c.apply(
            &k,
            &format!("{}{WORKER}", k.nodes),
            Some(node("172.31.242.156/20", "192.168.179.3").as_bytes()),
        );
        let mem = crate::datastore::memory::Memory {
            view: c.view().into(),
            ..Default::default()
        };
        let (cfg, skipped) = super::super::sync::overlay_noting(&file, &mem);
        assert_eq!(cfg.tunnel_address, None);
        assert!(
            skipped
                .iter()
                .any(|(k, _)| k == "tunnel address 192.168.179.3")
        );
    }

    #[test]
    fn keys_live_under_the_prefix() {
        let k = CalicoKeys::new("/calico/");
        assert_eq!(k.nodes, "/calico/resources/v3/projectcalico.org/nodes/");
        assert_eq!(k.affinities, "/calico/ipam/v2/host/");
        assert_eq!(k.blocks, "/calico/ipam/v2/assignment/ipv4/block/");
        assert_eq!(
            block_of_key("192.168.83.128-26").unwrap(),
            Some(net("192.168.83.128/26"))
        );
        assert_eq!(block_of_key("fd00::-122").unwrap(), None);
        assert!(block_of_key("192.168.83.129-26").is_err());
    }
}
