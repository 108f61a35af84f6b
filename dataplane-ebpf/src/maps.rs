//! The maps, declared under the names dataplane-common lists (they carry the layout version),
//! and the lookups every hook shares: the node's config, the routes with their cache, the
//! source check and the counters.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};
use dataplane_common::{
    CounterKey, CounterRow, CounterValue, EVENTS_BYTES, Endpoint, FlowKey, FlowValue, HOT_ROWS,
    Hook, KERNEL_FLOWS as KERNEL_FLOWS_MAX, MAX_COUNTERS, MAX_ENDPOINTS, MAX_ROUTES, NoFlowCache,
    NodeConfig, ROUTE_CACHE_SLOTS, Reason, RouteCache, RouteValue, hot_column, hot_row_index,
    route_cache_slot,
};

/// One map's declaration under the name dataplane-common's [`dataplane_common::map_list!`]
/// gives it (an arm per map: a listed map without an arm here fails the build).
macro_rules! declare_maps {
    (@one ROUTES $name:tt) => {
        /// Prefix → what it is (local endpoint, remote block, own block, peer node).
        #[map(name = $name)]
        pub static ROUTES: LpmTrie<[u8; 4], RouteValue> = LpmTrie::with_max_entries(MAX_ROUTES, 0);
    };
    (@one ROUTE_CACHE $name:tt) => {
        /// The trie's recent answers, per CPU, direct-mapped by address (see [`route`]): one
        /// entry, the CPU's whole cache.
        #[map(name = $name)]
        pub static ROUTE_CACHE: PerCpuArray<RouteCache> = PerCpuArray::with_max_entries(1, 0);
    };
    (@one ENDPOINTS $name:tt) => {
        /// Host-side veth ifindex → the pod behind it.
        #[map(name = $name)]
        pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);
    };
    (@one CONFIG $name:tt) => {
        /// The node's own settings, at index 0.
        #[map(name = $name)]
        pub static CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);
    };
    (@one COUNTERS $name:tt) => {
        /// (ifindex, hook, reason) → packets, bytes; per CPU.
        #[map(name = $name)]
        pub static COUNTERS: PerCpuHashMap<CounterKey, CounterValue> =
            PerCpuHashMap::with_max_entries(MAX_COUNTERS, 0);
    };
    (@one HOT_COUNTERS $name:tt) => {
        /// The forwarding decisions' counters, per CPU, a row per interface (see
        /// dataplane-common).
        #[map(name = $name)]
        pub static HOT_COUNTERS: PerCpuArray<CounterRow> = PerCpuArray::with_max_entries(HOT_ROWS, 0);
    };
    (@one IP_ID $name:tt) => {
        /// Per-CPU IPv4 Identification counter for outer headers with DF clear.
        #[map(name = $name)]
        pub static IP_ID: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
    };
    (@one KERNEL_FLOWS $name:tt) => {
        /// The ends that replies of flows the kernel handles are addressed to (see
        /// [`crate::act::kernel_flow`]).
        #[map(name = $name)]
        pub static KERNEL_FLOWS: LruHashMap<FlowKey, FlowValue> =
            LruHashMap::with_max_entries(KERNEL_FLOWS_MAX, 0);
    };
    (@one KERNEL_FLOWS_RECORDED $name:tt) => {
        /// Flows recorded in the kernel-flows map, in all, per CPU.
        #[map(name = $name)]
        pub static KERNEL_FLOWS_RECORDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
    };
    (@one KERNEL_FLOWS_GEN $name:tt) => {
        /// The kernel-flows map's generation (see [`dataplane_common::NoFlowCache`]).
        #[map(name = $name)]
        pub static KERNEL_FLOWS_GEN: Array<u64> = Array::with_max_entries(1, 0);
    };
    (@one NO_FLOW_CACHE $name:tt) => {
        /// Ends the kernel-flows map did not hold, per CPU (see
        /// [`crate::act::kernel_flow::is_kernel_flow`]).
        #[map(name = $name)]
        pub static NO_FLOW_CACHE: PerCpuArray<NoFlowCache> = PerCpuArray::with_max_entries(1, 0);
    };
    (@one EVENTS $name:tt) => {
        /// The monitor's ring buffer (`ipipd monitor`); written only while the config's monitor
        /// mode is on.
        #[map(name = $name)]
        pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
    };
    ($( $(#[$doc:meta])* $id:ident = $name:tt, )*) => {
        $( declare_maps!(@one $id $name); )*
    };
}
dataplane_common::map_list!(declare_maps);

/// The node's settings, once user space has written them.
#[inline(always)]
pub fn config() -> Option<&'static NodeConfig> {
    crate::cost::note(crate::cost::Item::Config);
    match CONFIG.get(0) {
        Some(c) if c.ready != 0 => Some(c),
        _ => None,
    }
}

/// The route of an IPv4 address (network order): the longest prefix of the routes trie that
/// holds it, as of the config's route generation.
///
/// The trie's answers are cached per CPU, one slot per address hash, tagged with the
/// generation they were read under: a hit costs one cache line instead of a walk through the
/// trie's nodes. User space raises the generation after it changes the trie, and the
/// generation is read before the trie, so an answer is never used under a later generation
/// than the one it was read under. A slot that two busy addresses share makes both walk the
/// trie; nothing else changes.
///
/// The answer is the slot's own route, read in place (a copy would cost the hook a load and a
/// spill per field): it stays this address's until the hook's next route lookup, which may
/// reuse the slot, so no caller keeps it past another lookup. No other program rewrites it
/// meanwhile: only this CPU's programs write its slots, and none of ipipd's hooks runs nested
/// in another on one CPU (each runs with bottom halves off, or in the softirq itself).
#[inline(always)]
pub fn route(cfg: &NodeConfig, addr: [u8; 4]) -> Option<&'static RouteValue> {
    route_as_of(route_gen(cfg), addr)
}

/// The config's route generation. Volatile: read once, before any trie lookup made under it.
#[inline(always)]
fn route_gen(cfg: &NodeConfig) -> u32 {
    // SAFETY: a field of a live map value.
    unsafe { core::ptr::read_volatile(&cfg.route_gen) }
}

/// [`route`] under generation `gen_now`, read by the caller before this lookup.
#[inline(always)]
fn route_as_of(gen_now: u32, addr: [u8; 4]) -> Option<&'static RouteValue> {
    crate::cost::note(crate::cost::Item::RouteCache);
    let Some(cache) = ROUTE_CACHE.get_ptr_mut(0) else {
        return trie(addr);
    };
    let i = (route_cache_slot(addr) & (ROUTE_CACHE_SLOTS - 1)) as usize;
    // SAFETY: this CPU's cache, and `i` is masked into its slots; only this CPU writes it, and
    // a program is not migrated.
    let slot = unsafe { (*cache).slots.get_unchecked_mut(i) };
    if slot.generation != gen_now || slot.addr != addr {
        slot.route = trie(addr).copied().unwrap_or(NO_ROUTE);
        slot.addr = addr;
        slot.generation = gen_now;
    }
    (slot.route.kind != 0).then_some(&slot.route)
}

/// A cached "no route" (kind 0 is no [`dataplane_common::RouteKind`]).
const NO_ROUTE: RouteValue = RouteValue {
    kind: 0,
    flags: 0,
    _pad: [0; 2],
    ifindex: 0,
    node_ip: [0; 4],
    dst_mac: [0; 6],
    src_mac: [0; 6],
};

/// Longest-prefix match in the routes trie itself.
#[inline(always)]
fn trie(addr: [u8; 4]) -> Option<&'static RouteValue> {
    crate::cost::note(crate::cost::Item::RouteTrie);
    ROUTES.get(Key::new(32, addr))
}

/// Whether `src` is a source that interface `ifindex` accepts, which `accepts` tells from the
/// address's route: from_pod's anti-spoofing check (the veth's own pod) and from_uplink's peer
/// check. A source that passed is remembered in the interface's hot-counter row on this CPU,
/// tagged with the routes' generation, so that the next packet from it reads no route: the row
/// is the line its counter updates anyway.
#[inline(always)]
pub fn source_ok(
    cfg: &NodeConfig,
    ifindex: u32,
    src: [u8; 4],
    accepts: impl Fn(&RouteValue) -> bool,
) -> bool {
    let gen_now = route_gen(cfg);
    let row = hot_row(ifindex);
    if let Some(row) = &row
        // Generation 0 is a row's "nothing remembered" (the daemon starts at 1).
        && gen_now != 0
        && row.ifindex == ifindex
        && row.src_gen == gen_now
        && row.src_addr == src
    {
        return true;
    }
    let ok = matches!(route_as_of(gen_now, src), Some(rt) if accepts(rt));
    if ok && let Some(row) = row {
        row.ifindex = ifindex;
        row.src_gen = gen_now;
        row.src_addr = src;
    }
    ok
}

/// This CPU's hot-counter row for interface `ifindex`: the row of its index when the
/// interface holds it or nobody does yet (a writer then claims it by writing `ifindex`); None
/// when another interface holds it.
#[inline(always)]
fn hot_row(ifindex: u32) -> Option<&'static mut CounterRow> {
    crate::cost::note(crate::cost::Item::HotCounters);
    let row = HOT_COUNTERS.get_ptr_mut(hot_row_index(ifindex))?;
    // SAFETY: per-CPU value, only this CPU writes it (user space only clears rows).
    let row = unsafe { &mut *row };
    (row.ifindex == ifindex || row.ifindex == 0).then_some(row)
}

/// Counts one packet of `bytes` under (ifindex, hook, reason).
#[inline(always)]
pub fn count(ifindex: u32, hook: Hook, reason: Reason, bytes: u32) {
    // A forwarding decision: its cell in this interface's row, when the row is (or becomes) the
    // interface's on this CPU.
    if let Some(col) = hot_column(hook, reason)
        && let Some(row) = hot_row(ifindex)
    {
        row.ifindex = ifindex;
        if let Some(c) = row.cells.get_mut(col) {
            c.packets += 1;
            c.bytes += bytes as u64;
            return;
        }
    }
    count_hashed(ifindex, hook, reason, bytes);
}

/// The per-CPU hash's counter: every decision that has no cell of its own in the hot array.
/// Out of line: one copy for the many decision sites.
#[inline(never)]
fn count_hashed(ifindex: u32, hook: Hook, reason: Reason, bytes: u32) {
    let key = CounterKey {
        ifindex,
        hook: hook as u8,
        reason: reason as u8,
        _pad: [0; 2],
    };
    crate::cost::note(crate::cost::Item::Counters);
    if COUNTERS.get_ptr_mut(key).is_none() {
        crate::cost::note(crate::cost::Item::Counters);
        // First packet of this key on any CPU. A concurrent insert from another CPU (EEXIST) is
        // fine; a full map means this packet goes uncounted.
        let _ = COUNTERS.insert(key, CounterValue::default(), BPF_NOEXIST as u64);
    }
    crate::cost::note(crate::cost::Item::Counters);
    if let Some(v) = COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe {
            (*v).packets += 1;
            (*v).bytes += bytes as u64;
        }
    }
}
