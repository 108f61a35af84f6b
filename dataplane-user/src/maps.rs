//! Typed access to the data plane's maps (names and layouts from dataplane-common).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, lpm_trie::Key,
    },
};
use dataplane_common::{
    CounterKey, CounterRow, CounterValue, Endpoint, FlowKey, FlowValue, HOT,
    KERNEL_FLOWS_GEN_USER_STEP, NodeConfig, RouteValue, hot_row_index, map_names,
};

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

/// The flows the kernel handles (an LRU hash; the programs write it).
pub fn kernel_flows(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, FlowKey, FlowValue>> {
    Ok(HashMap::try_from(map_mut(ebpf, map_names::KERNEL_FLOWS)?)?)
}

/// Records one end of a flow the kernel handles, as the programs do: the entry, then the
/// kernel-flows generation raised, so that no CPU's "no flow" for it stays valid.
pub fn record_kernel_flow(ebpf: &mut Ebpf, key: FlowKey, value: FlowValue) -> Result<()> {
    kernel_flows(ebpf)?
        .insert(key, value, 0)
        .context("kernel flows: inserting")?;
    raise_kernel_flows_gen(ebpf)
}

/// Raises the kernel-flows generation: every CPU's cached "no flow" is stale after it. User
/// space cannot add atomically, so it writes the value it read plus
/// [`KERNEL_FLOWS_GEN_USER_STEP`], past whatever the programs raised it to meanwhile: the
/// generation never goes back to a value an answer was read under.
pub fn raise_kernel_flows_gen(ebpf: &mut Ebpf) -> Result<()> {
    let mut g: Array<&mut MapData, u64> =
        Array::try_from(map_mut(ebpf, map_names::KERNEL_FLOWS_GEN)?)?;
    let now = g.get(&0, 0).context("kernel flows generation: reading")?;
    g.set(0, now.wrapping_add(KERNEL_FLOWS_GEN_USER_STEP), 0)
        .context("kernel flows generation: writing")
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
    let hot = ebpf
        .map(map_names::HOT_COUNTERS)
        .ok_or_else(|| anyhow!("the object has no map {}", map_names::HOT_COUNTERS))?;
    sum_counters(
        &PerCpuHashMap::try_from(map)?,
        Some(&PerCpuArray::try_from(hot)?),
    )
}

/// The counters hash and the hot rows (see [`dataplane_common::HOT`]), summed over the CPUs,
/// zero entries left out.
pub fn sum_counters<H, A>(
    hash: &PerCpuHashMap<H, CounterKey, CounterValue>,
    hot: Option<&PerCpuArray<A, CounterRow>>,
) -> Result<BTreeMap<CounterKey, CounterValue>>
where
    H: std::borrow::Borrow<MapData>,
    A: std::borrow::Borrow<MapData>,
{
    let mut out: BTreeMap<CounterKey, CounterValue> = BTreeMap::new();
    let mut add = |key: CounterKey, v: &CounterValue| {
        if v.packets != 0 || v.bytes != 0 {
            let e = out.entry(key).or_default();
            e.packets += v.packets;
            e.bytes += v.bytes;
        }
    };
    for entry in hash.iter() {
        let (key, per_cpu) = entry.context("counters: reading")?;
        for v in per_cpu.iter() {
            add(key, v);
        }
    }
    if let Some(hot) = hot {
        for i in 0..hot.len() {
            let per_cpu = hot.get(&i, 0).context("hot counters: reading")?;
            for row in per_cpu.iter().filter(|r| r.ifindex != 0) {
                for ((hook, reason), v) in HOT.iter().zip(&row.cells) {
                    let key = CounterKey {
                        ifindex: row.ifindex,
                        hook: *hook as u8,
                        reason: *reason as u8,
                        _pad: [0; 2],
                    };
                    add(key, v);
                }
            }
        }
    }
    Ok(out)
}

/// Forgets the counters of a removed interface: its hot row (on every CPU that holds it for
/// that interface, so that another interface can take it) and its entries in the hash.
pub fn forget_counters(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    let mut hot: PerCpuArray<&mut MapData, CounterRow> =
        PerCpuArray::try_from(map_mut(ebpf, map_names::HOT_COUNTERS)?)?;
    let i = hot_row_index(ifindex);
    let rows = hot.get(&i, 0).context("hot counters: reading")?;
    if rows.iter().any(|r| r.ifindex == ifindex) {
        let cleared: Vec<CounterRow> = rows
            .iter()
            .map(|r| {
                if r.ifindex == ifindex {
                    CounterRow::default()
                } else {
                    *r
                }
            })
            .collect();
        hot.set(i, PerCpuValues::try_from(cleared)?, 0)
            .context("hot counters: clearing a row")?;
    }
    let mut hash: PerCpuHashMap<&mut MapData, CounterKey, CounterValue> =
        PerCpuHashMap::try_from(map_mut(ebpf, map_names::COUNTERS)?)?;
    let keys: Vec<CounterKey> = hash
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.ifindex == ifindex)
        .collect();
    for k in keys {
        let _ = hash.remove(&k);
    }
    Ok(())
}
