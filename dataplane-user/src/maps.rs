//! Typed access to the data plane's maps (names and layouts from dataplane-common).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuHashMap, lpm_trie::Key},
};
use dataplane_common::{CounterKey, CounterValue, Endpoint, NodeConfig, RouteValue, map_names};

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("the object has no map {name}"))
}

/// The routes trie: prefix → route.
pub fn routes(ebpf: &mut Ebpf) -> Result<LpmTrie<&mut MapData, [u8; 4], RouteValue>> {
    Ok(LpmTrie::try_from(map_mut(ebpf, map_names::ROUTES)?)?)
}

/// Inserts or replaces one prefix.
pub fn put_route(
    ebpf: &mut Ebpf,
    addr: [u8; 4],
    prefix_len: u32,
    value: &RouteValue,
) -> Result<()> {
    routes(ebpf)?
        .insert(&Key::new(prefix_len, addr), value, 0)
        .with_context(|| {
            format!(
                "routes: inserting {}/{prefix_len}",
                std::net::Ipv4Addr::from(addr)
            )
        })
}

/// Removes one prefix.
pub fn remove_route(ebpf: &mut Ebpf, addr: [u8; 4], prefix_len: u32) -> Result<()> {
    routes(ebpf)?
        .remove(&Key::new(prefix_len, addr))
        .with_context(|| {
            format!(
                "routes: removing {}/{prefix_len}",
                std::net::Ipv4Addr::from(addr)
            )
        })
}

/// Endpoints by host-side ifindex.
pub fn endpoints(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, u32, Endpoint>> {
    Ok(HashMap::try_from(map_mut(ebpf, map_names::ENDPOINTS)?)?)
}

pub fn put_endpoint(ebpf: &mut Ebpf, ifindex: u32, ep: &Endpoint) -> Result<()> {
    endpoints(ebpf)?
        .insert(ifindex, ep, 0)
        .with_context(|| format!("endpoints: inserting ifindex {ifindex}"))
}

/// The node's settings as written (index 0 of the config array).
pub fn config(ebpf: &Ebpf) -> Result<NodeConfig> {
    let m: Array<&MapData, NodeConfig> =
        Array::try_from(ebpf.map(map_names::CONFIG).context("no config map")?)?;
    Ok(m.get(&0, 0)?)
}

/// Writes the node's settings (index 0 of the config array).
pub fn set_config(ebpf: &mut Ebpf, cfg: &NodeConfig) -> Result<()> {
    let mut arr: Array<&mut MapData, NodeConfig> =
        Array::try_from(map_mut(ebpf, map_names::CONFIG)?)?;
    arr.set(0, cfg, 0).context("config: writing index 0")
}

/// Every counter, summed over the CPUs. Entries that are zero on every CPU are left out.
pub fn counters(ebpf: &Ebpf) -> Result<BTreeMap<CounterKey, CounterValue>> {
    let map = ebpf
        .map(map_names::COUNTERS)
        .ok_or_else(|| anyhow!("the object has no map {}", map_names::COUNTERS))?;
    let map: PerCpuHashMap<&MapData, CounterKey, CounterValue> = PerCpuHashMap::try_from(map)?;
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (key, per_cpu) = entry.context("counters: reading")?;
        let sum = per_cpu
            .iter()
            .fold(CounterValue::default(), |a, v| CounterValue {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
            });
        if sum.packets != 0 || sum.bytes != 0 {
            out.insert(key, sum);
        }
    }
    Ok(out)
}
