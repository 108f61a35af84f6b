//! Read a running node's state from its pinned maps (read-only): `status`, `routes`,
//! `endpoints`, `stats`.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap};
use dataplane_common::{
    CounterKey, CounterRow, CounterValue, Endpoint, FlowKey, FlowValue, Hook, Mode, NodeConfig,
    ROUTE_F_ENCAP, ROUTE_F_L2, ROUTE_F_SAME_SUBNET, Reason, RouteKind, RouteValue, map_names,
};
use serde::Serialize;

use crate::net::fmt_mac;

fn open(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is ipipd running with this pin_dir?)",
            path.display()
        )
    })
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub node_ip: Ipv4Addr,
    pub uplink_ifindex: u32,
    pub uplink: String,
    /// The tunnel device (ifindex 0 until the daemon has made it).
    pub tunnel_ifindex: u32,
    pub tunnel: String,
    pub mtu: u32,
    pub tunnel_mtu: u32,
    pub mode: &'static str,
    pub attachments: Vec<String>,
    pub routes: usize,
    pub endpoints: usize,
}

#[derive(Debug, Serialize)]
pub struct RouteRow {
    pub prefix: String,
    pub kind: &'static str,
    pub flags: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Ipv4Addr>,
    /// The next hop's MAC, when the route carries it (flag `l2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_hop_mac: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EndpointRow {
    pub ifindex: u32,
    /// The host-side veth's name (`#<ifindex>` when it is gone).
    pub interface: String,
    pub address: Ipv4Addr,
    pub pod_mac: String,
    pub host_mac: String,
    /// `namespace/name` of the pod, from its CNI ADD (known when the state directory is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatRow {
    pub ifindex: u32,
    pub interface: String,
    pub hook: &'static str,
    pub reason: &'static str,
    pub drop: bool,
    /// [`Reason::verdict`]: drop, pass, forward or note.
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// (map, entries, capacity) of the maps that fill up.
pub fn occupancy(pin_dir: &Path) -> Result<Vec<(&'static str, u64, u64)>> {
    let routes: LpmTrie<MapData, [u8; 4], RouteValue> =
        LpmTrie::try_from(Map::LpmTrie(open(pin_dir, map_names::ROUTES)?))?;
    let eps: HashMap<MapData, u32, Endpoint> =
        HashMap::try_from(Map::HashMap(open(pin_dir, map_names::ENDPOINTS)?))?;
    let cnt: PerCpuHashMap<MapData, CounterKey, CounterValue> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(open(pin_dir, map_names::COUNTERS)?))?;
    Ok(vec![
        (
            map_names::ROUTES,
            routes.keys().count() as u64,
            dataplane_common::MAX_ROUTES as u64,
        ),
        (
            map_names::ENDPOINTS,
            eps.keys().count() as u64,
            dataplane_common::MAX_ENDPOINTS as u64,
        ),
        (
            map_names::COUNTERS,
            cnt.keys().count() as u64,
            dataplane_common::MAX_COUNTERS as u64,
        ),
    ])
}

pub fn routes(pin_dir: &Path) -> Result<Vec<RouteRow>> {
    let trie: LpmTrie<MapData, [u8; 4], RouteValue> =
        LpmTrie::try_from(Map::LpmTrie(open(pin_dir, map_names::ROUTES)?))?;
    let mut rows = Vec::new();
    for e in trie.iter() {
        let (k, v) = e?;
        let kind = RouteKind::from_u8(v.kind);
        let mut flags = Vec::new();
        if v.flags & ROUTE_F_ENCAP != 0 {
            flags.push("encap");
        }
        if v.flags & ROUTE_F_SAME_SUBNET != 0 {
            flags.push("same-subnet");
        }
        if v.flags & ROUTE_F_L2 != 0 {
            flags.push("l2");
        }
        rows.push(RouteRow {
            prefix: format!("{}/{}", Ipv4Addr::from(k.data()), k.prefix_len()),
            kind: kind.map_or("?", RouteKind::name),
            flags,
            ifindex: (kind == Some(RouteKind::LocalEndpoint)).then_some(v.ifindex),
            node: matches!(kind, Some(RouteKind::RemoteBlock | RouteKind::PeerNode))
                .then(|| Ipv4Addr::from(v.node_ip)),
            next_hop_mac: (v.flags & ROUTE_F_L2 != 0).then(|| fmt_mac(&v.dst_mac)),
        });
    }
    rows.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    Ok(rows)
}

pub fn endpoints(pin_dir: &Path) -> Result<Vec<EndpointRow>> {
    let map: HashMap<MapData, u32, Endpoint> =
        HashMap::try_from(Map::HashMap(open(pin_dir, map_names::ENDPOINTS)?))?;
    let mut rows = Vec::new();
    for e in map.iter() {
        let (i, ep) = e?;
        rows.push(EndpointRow {
            ifindex: i,
            interface: ifname(i),
            pod: None,
            address: Ipv4Addr::from(ep.pod_ip),
            pod_mac: fmt_mac(&ep.pod_mac),
            host_mac: fmt_mac(&ep.host_mac),
        });
    }
    rows.sort_by_key(|r| r.address);
    Ok(rows)
}

pub fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE as required.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{index}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Counters summed over the CPUs: the hash and the hot rows.
pub fn counters(pin_dir: &Path) -> Result<BTreeMap<CounterKey, CounterValue>> {
    let map: PerCpuHashMap<MapData, CounterKey, CounterValue> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(open(pin_dir, map_names::COUNTERS)?))?;
    // A daemon from before the hot counters has no such pin: its hash holds everything.
    let hot: Option<PerCpuArray<MapData, CounterRow>> = open(pin_dir, map_names::HOT_COUNTERS)
        .ok()
        .map(|m| PerCpuArray::try_from(Map::PerCpuArray(m)))
        .transpose()?;
    crate::maps::sum_counters(&map, hot.as_ref())
}

pub fn stats(pin_dir: &Path) -> Result<Vec<StatRow>> {
    let mut rows: Vec<StatRow> = counters(pin_dir)?
        .into_iter()
        .filter(|(_, v)| v.packets != 0)
        .map(|(k, v)| {
            let reason = Reason::from_u8(k.reason);
            StatRow {
                ifindex: k.ifindex,
                interface: ifname(k.ifindex),
                hook: Hook::from_u8(k.hook).map_or("?", Hook::name),
                reason: reason.map_or("?", Reason::name),
                drop: reason.is_some_and(Reason::is_drop),
                verdict: reason.map_or("?", Reason::verdict),
                packets: v.packets,
                bytes: v.bytes,
            }
        })
        .collect();
    rows.sort();
    Ok(rows)
}

/// The kernel-flows map: how full it is, what the programs recorded in all, what its LRU
/// evicted (entries are only removed by it), and the replies handed to the kernel by it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelFlows {
    pub entries: u64,
    pub capacity: u64,
    pub recorded: u64,
    pub evicted: u64,
    pub replies: u64,
}

pub fn kernel_flows(pin_dir: &Path, stats: &[StatRow]) -> Result<KernelFlows> {
    let data = open(pin_dir, map_names::KERNEL_FLOWS)?;
    let capacity =
        aya::maps::MapInfo::from_pin(pin_dir.join(map_names::KERNEL_FLOWS))?.max_entries() as u64;
    let map: HashMap<MapData, FlowKey, FlowValue> = HashMap::try_from(Map::LruHashMap(data))?;
    let entries = map.keys().count() as u64;
    let rec: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(open(
        pin_dir,
        map_names::KERNEL_FLOWS_RECORDED,
    )?))?;
    let recorded: u64 = rec.get(&0, 0)?.iter().sum();
    let replies = stats
        .iter()
        .filter(|r| {
            r.reason == Reason::PassKernelFlow.name() || r.reason == Reason::DecapKernelFlow.name()
        })
        .map(|r| r.packets)
        .sum();
    Ok(KernelFlows {
        entries,
        capacity,
        recorded,
        evicted: recorded.saturating_sub(entries),
        replies,
    })
}

pub fn status(pin_dir: &Path) -> Result<Status> {
    let arr: Array<MapData, NodeConfig> =
        Array::try_from(Map::Array(open(pin_dir, map_names::CONFIG)?))?;
    let cfg = arr.get(&0, 0)?;
    if cfg.ready == 0 {
        return Err(anyhow!("the node's config map is not programmed yet"));
    }
    let mut attachments: Vec<String> = std::fs::read_dir(pin_dir.join("links"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let (idx, hook) = n.split_once('-')?;
                    Some(format!("{}:{hook}", ifname(idx.parse().ok()?)))
                })
                .collect()
        })
        .unwrap_or_default();
    attachments.sort();
    Ok(Status {
        node_ip: Ipv4Addr::from(cfg.node_ip),
        uplink_ifindex: cfg.uplink_ifindex,
        uplink: ifname(cfg.uplink_ifindex),
        tunnel_ifindex: cfg.tunnel_ifindex,
        tunnel: ifname(cfg.tunnel_ifindex),
        mtu: cfg.mtu,
        tunnel_mtu: dataplane_common::tunnel_mtu(cfg.mtu),
        mode: Mode::from_u8(cfg.mode).map_or("?", Mode::name),
        attachments,
        routes: routes(pin_dir)?.len(),
        endpoints: endpoints(pin_dir)?.len(),
    })
}
