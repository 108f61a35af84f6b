//! The map ABI shared by ipipd's eBPF programs and its user space.
//!
//! Every type here is `#[repr(C)]` with explicit padding, so both sides agree byte for byte.
//! Addresses are stored in network byte order (as they sit in the packet), ifindexes and
//! lengths in host byte order.
//!
//! Map names carry [`LAYOUT_VERSION`]: a change to any type in this file must bump it, so that a
//! pinned map of an older layout is found under another name and never misread. (One
//! exception, said where it is made: a new [`RouteKind`] whose right handling is what every
//! program of the layout already does with a kind it does not know.)
#![cfg_attr(not(test), no_std)]

pub mod csum;
pub mod ecn;

/// Bumped whenever a key or value layout below changes. It is part of every map name.
pub const LAYOUT_VERSION: u32 = 6;

/// Every map of the object, listed once: the identifier of its static in the eBPF crate and
/// the name it is declared, pinned (`<pin_dir>/<name>`) and found by. The macro calls `$cb!`
/// with the list; [`map_names`] here and the eBPF crate's declarations are both made from it,
/// so the two sides cannot disagree on a name. The kernel keeps 15 characters of a map name;
/// each carries [`LAYOUT_VERSION`] (a unit test checks both).
#[macro_export]
macro_rules! map_list {
    ($cb:ident) => {
        $cb! {
            /// Prefix → what it is: the routes trie of [`RouteValue`]s.
            ROUTES = "ipipd_routes_v6",
            /// Host-side veth ifindex → the [`Endpoint`] behind it.
            ENDPOINTS = "ipipd_eps_v6",
            /// The node's [`NodeConfig`], at index 0.
            CONFIG = "ipipd_cfg_v6",
            /// (ifindex, hook, reason) → packets, bytes; per CPU.
            COUNTERS = "ipipd_cnt_v6",
            /// The per-CPU IPv4 Identification counter of outer headers.
            IP_ID = "ipipd_ipid_v6",
            /// The monitor's ring buffer of [`Event`]s (`ipipd monitor`).
            EVENTS = "ipipd_events_v6",
            /// The hot counters: a per-CPU array of [`CounterRow`]s.
            HOT_COUNTERS = "ipipd_hot_v6",
            /// The programs' route cache: a per-CPU array of one [`RouteCache`].
            ROUTE_CACHE = "ipipd_rcache_v6",
            /// Flows the kernel handles: an LRU hash of [`FlowKey`] → [`FlowValue`], the ends
            /// the replies of pods' packets handed to the kernel are addressed to.
            KERNEL_FLOWS = "ipipd_kflow_v6",
            /// Flows the programs recorded in the kernel-flows map, in all: a per-CPU array of
            /// one u64 (the map's entries are only ever removed by its LRU, so recorded minus
            /// entries is what the LRU evicted).
            KERNEL_FLOWS_RECORDED = "ipipd_kfrec_v6",
            /// The kernel-flows map's generation: an array of one u64, raised after every write
            /// to the kernel-flows map (see [`NoFlowCache`]).
            KERNEL_FLOWS_GEN = "ipipd_kfgen_v6",
            /// The programs' no-flow cache: a per-CPU array of one [`NoFlowCache`].
            NO_FLOW_CACHE = "ipipd_nflow_v6",
        }
    };
}

macro_rules! name_consts {
    ($( $(#[$doc:meta])* $id:ident = $name:literal, )*) => {
        /// Map names, from [`map_list!`](crate::map_list).
        pub mod map_names {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$doc])* pub const $id: &str = $name; )*
            /// Every map, in one list.
            pub const ALL: &[&str] = &[ $( $id, )* ];
        }
    };
}
map_list!(name_consts);

/// Program names (the Rust function names in the object).
pub mod program_names {
    pub const FROM_POD: &str = "from_pod";
    pub const FROM_UPLINK: &str = "from_uplink";
    pub const TO_TUNNEL: &str = "to_tunnel";
    pub const XDP_UPLINK: &str = "xdp_uplink";
    /// xdp_uplink for `xdp = "generic"`: the same program without multi-buffer support. The
    /// kernel copies a packet for a multi-buffer program in generic mode and the copy loses its
    /// MAC header length, so tc then sees the packet without its Ethernet header; a program
    /// without frags gets the packet linearized in place instead.
    pub const XDP_UPLINK_SKB: &str = "xdp_uplink_skb";
    pub const ALL: [&str; 5] = [FROM_POD, FROM_UPLINK, TO_TUNNEL, XDP_UPLINK, XDP_UPLINK_SKB];

    /// Whether the program is one of the XDP ones.
    pub fn is_xdp(name: &str) -> bool {
        name == XDP_UPLINK || name == XDP_UPLINK_SKB
    }
}

/// What a packet costs the programs, counted by the bench's build of them (dataplane-ebpf's
/// `cost` feature; ipipd's own build counts nothing): each map lookup or update, by map, and
/// each helper call, by helper. The index of an item in the per-CPU `ipipd_cost` array.
pub mod cost {
    /// The items, listed once: the map accesses, then the helper calls, each with its name.
    macro_rules! items {
        (lookups { $($l:ident = $ln:literal,)* } helpers { $($h:ident = $hn:literal,)* }) => {
            /// One item; `NAMES[item as usize]` names it.
            #[derive(Clone, Copy, PartialEq, Eq, Debug)]
            #[repr(u32)]
            pub enum Item { $($l,)* $($h,)* }
            /// The items' names, in order; the first [`LOOKUPS`] are map accesses, the rest
            /// helpers.
            pub const NAMES: &[&str] = &[$($ln,)* $($hn,)*];
            pub const LOOKUPS: usize = [$($ln,)*].len();
        };
    }
    items! {
        lookups {
            Config = "config",
            RouteCache = "route_cache",
            RouteTrie = "routes_trie",
            Endpoints = "endpoints",
            HotCounters = "hot_counters",
            Counters = "counters",
            IpId = "ip_id",
            KernelFlows = "kernel_flows",
            KernelFlowsUpdate = "kernel_flows_update",
            KernelFlowsRecorded = "kernel_flows_recorded",
            KernelFlowsGen = "kernel_flows_gen",
            NoFlowCache = "no_flow_cache",
            Events = "events",
        }
        helpers {
            AdjustRoom = "bpf_skb_adjust_room",
            PullData = "bpf_skb_pull_data",
            LoadBytes = "bpf_skb_load_bytes",
            ChangeType = "bpf_skb_change_type",
            Redirect = "bpf_redirect",
            RedirectPeer = "bpf_redirect_peer",
            RedirectNeigh = "bpf_redirect_neigh",
            FibLookup = "bpf_fib_lookup",
            SmpProcessorId = "bpf_get_smp_processor_id",
        }
    }
    /// The cost map's name (only in the bench's build; dataplane-ebpf's `cost.rs` declares it
    /// under this literal).
    pub const MAP: &str = "ipipd_cost";
}

/// Capacities of the maps.
pub const MAX_ROUTES: u32 = 65_536;
pub const MAX_ENDPOINTS: u32 = 16_384;
pub const MAX_COUNTERS: u32 = 65_536;
/// Bytes of the monitor's ring buffer (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Entries of the kernel-flows map as the object declares it; user space sizes it from the
/// node's conntrack limit when it creates it.
pub const KERNEL_FLOWS: u32 = 262_144;

/// One end of a flow the kernel handles: the address, port and protocol its replies are
/// addressed to. The key of the kernel-flows map.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Network order.
    pub addr: [u8; 4],
    /// Network order; 0 for protocols without ports (ICMP, …).
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// Slots of the programs' no-flow cache, per CPU (a power of two).
pub const NO_FLOW_SLOTS: u32 = 256;

/// What the programs' no-flow cache remembers: ends that the kernel-flows map did not hold,
/// so that the next packet to the same end reads one slot instead of the LRU hash (a call into
/// the kernel's hash-map code). An answer is valid while the kernel-flows generation (its own
/// map, [`map_names::KERNEL_FLOWS_GEN`]) is the one it was read under; every writer of the
/// kernel-flows map raises the generation after its write (the programs by one, atomically;
/// user space past any value a program could have raised it to meanwhile, see
/// [`KERNEL_FLOWS_GEN_USER_STEP`]), and a program reads the generation before the map, so a
/// "no flow" is never used once a flow of that end has been written. The LRU only ever removes
/// entries, which leaves every "no flow" true. Per CPU, direct-mapped by a hash of the end.
/// Added in layout 6 without a new one: these maps are new names that no earlier program of
/// the layout reads, and a start raises the generation once every attachment runs its
/// programs (earlier ones wrote the kernel-flows map without raising it).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NoFlowCache {
    pub slots: [NoFlowSlot; NO_FLOW_SLOTS as usize],
}

/// One slot of the [`NoFlowCache`]: an end's [`no_flow_tag`] (0: empty), and the generation
/// its "no flow" was read under.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NoFlowSlot {
    pub tag: u64,
    pub flows_gen: u64,
}

/// User space's step of the kernel-flows generation: it cannot add atomically, so it reads the
/// generation and writes it back this much higher, past anything the programs' increments
/// (one per flow recorded) reach between its read and its write.
pub const KERNEL_FLOWS_GEN_USER_STEP: u64 = 1 << 32;

/// A flow end as one word for the [`NoFlowCache`]: its address, port and protocol, each read
/// as the number its bytes make natively (words, not bytes, for the programs: the address is
/// one load from the packet), and a bit set above them, so that no end is 0 (an empty slot).
#[inline(always)]
pub const fn no_flow_tag(k: &FlowKey) -> u64 {
    u32::from_ne_bytes(k.addr) as u64
        | (u16::from_ne_bytes(k.port) as u64) << 32
        | (k.proto as u64) << 48
        | 1 << 56
}

/// The [`NoFlowCache`] slot of an end's tag: Fibonacci hashing of its bits.
#[inline(always)]
pub const fn no_flow_slot(tag: u64) -> u32 {
    (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - NO_FLOW_SLOTS.trailing_zeros())) as u32
}

/// What the kernel-flows map keeps of a flow: the hook that recorded it (a [`Hook`] as u8).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub hook: u8,
    pub _pad: [u8; 3],
}

/// Route flag: traffic to this prefix is encapsulated (IP-in-IP) toward `node_ip`.
pub const ROUTE_F_ENCAP: u8 = 1 << 0;
/// Route flag (cross-subnet mode): the owning node is on the uplink's subnet; traffic is routed
/// to it with `node_ip` as the next hop, without encapsulation.
pub const ROUTE_F_SAME_SUBNET: u8 = 1 << 1;
/// Route flag (RemoteBlock / PeerNode): the next hop's L2 is known. `ifindex` is the output
/// interface (the uplink), `dst_mac` the next hop's MAC and `src_mac` the uplink's, as user
/// space read them from the kernel's neighbour table; without the flag the programs ask the
/// FIB per packet.
pub const ROUTE_F_L2: u8 = 1 << 2;

/// Value of the routes LPM trie, whose key is `Key<[u8; 4]>`: a prefix length and an IPv4
/// address in network order.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RouteValue {
    /// A [`RouteKind`] as u8.
    pub kind: u8,
    /// `ROUTE_F_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// LocalEndpoint: the host-side veth. RemoteBlock / PeerNode with [`ROUTE_F_L2`]: the
    /// output interface. Others: 0.
    pub ifindex: u32,
    /// RemoteBlock / PeerNode: the owning node's underlay address (network order).
    pub node_ip: [u8; 4],
    /// The destination MAC a forwarded frame gets. LocalEndpoint: the pod side's. With
    /// [`ROUTE_F_L2`]: the next hop's.
    pub dst_mac: [u8; 6],
    /// The source MAC a forwarded frame gets. LocalEndpoint: the host side's. With
    /// [`ROUTE_F_L2`]: the output interface's.
    pub src_mac: [u8; 6],
}

// The programs copy a route's two MACs into a frame as one 12-byte run (destination, then
// source, as in the frame).
const _: () = assert!(
    core::mem::offset_of!(RouteValue, src_mac) == core::mem::offset_of!(RouteValue, dst_mac) + 6
);

/// Value of the endpoints map, keyed by the host-side veth's ifindex (u32).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's address (network order): the only source address it may send from.
    pub pod_ip: [u8; 4],
    /// The pod side's MAC.
    pub pod_mac: [u8; 6],
    /// The host side's MAC: what ARP replies announce, and the source MAC of delivered frames.
    pub host_mac: [u8; 6],
}

/// The bytes IPIP adds to a packet: the outer IPv4 header.
pub const OUTER_HEADER_LEN: u32 = 20;

/// The tunnel's MTU (the tunnel device's and the pods') over an underlay of `mtu`.
pub const fn tunnel_mtu(mtu: u32) -> u32 {
    mtu - OUTER_HEADER_LEN
}

/// The node's own settings: the single entry (index 0) of the config array.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's underlay address (network order): the outer source, and the only outer
    /// destination that is decapsulated.
    pub node_ip: [u8; 4],
    /// The uplink's ifindex.
    pub uplink_ifindex: u32,
    /// The underlay MTU outer packets must fit (tunnel MTU = mtu - 20).
    pub mtu: u32,
    /// A [`Mode`] as u8.
    pub mode: u8,
    /// 1 once user space has written this entry; the programs pass everything while it is 0.
    pub ready: u8,
    /// A [`MonitorMode`] as u8: whether decisions go to the monitor's ring buffer. Checked
    /// first, so that nothing is paid while nobody watches.
    pub monitor: u8,
    /// `NODE_F_*`.
    pub flags: u8,
    /// The routes' generation: user space raises it after every change to the routes trie, so
    /// that the programs' route cache entries of earlier generations are never used again.
    /// Starts at 1 (the cache's empty slots carry 0). Written only by the daemon.
    pub route_gen: u32,
    /// The tunnel device (ipipd's stand-in for tunl0): its ifindex and MAC. Decapsulated
    /// packets for the node itself enter the kernel through it, as they would through tunl0.
    pub tunnel_ifindex: u32,
    pub tunnel_mac: [u8; 6],
    pub _pad2: [u8; 2],
}

/// Node flag: `fast_path = false`: the kernel forwards every pod packet (its FORWARD chain
/// sees them all); the programs still encapsulate what it routes into the tunnel device,
/// decapsulate, answer ARP and drop spoofed sources.
pub const NODE_F_SLOW_PATH: u8 = 1 << 0;

/// Slots of the route cache per CPU (a power of two). At 32 bytes each they make 32 KiB, the
/// largest per-CPU value the kernel allocates.
pub const ROUTE_CACHE_SLOTS: u32 = 1024;

/// One slot of the programs' route cache: the trie's answer for one address (a [`RouteValue`]
/// with kind 0 for "no route"), valid while `generation` is the config's `route_gen`. Per CPU,
/// direct-mapped by a hash of the address; written only by the programs, on a miss.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RouteCacheSlot {
    /// The address (network order).
    pub addr: [u8; 4],
    pub generation: u32,
    pub route: RouteValue,
}

/// One CPU's whole route cache: the route cache map's single per-CPU value. One value rather
/// than an entry per slot: finding an entry of a per-CPU array reads its pointer from the map,
/// a cache line per 8 entries that traffic evicts; this way every lookup reads the same one.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RouteCache {
    pub slots: [RouteCacheSlot; ROUTE_CACHE_SLOTS as usize],
}

/// The route cache slot of an address (network order): Fibonacci hashing of its bits.
#[inline(always)]
pub const fn route_cache_slot(addr: [u8; 4]) -> u32 {
    u32::from_ne_bytes(addr).wrapping_mul(0x9e37_79b1) >> (32 - ROUTE_CACHE_SLOTS.trailing_zeros())
}

/// What the programs send to the monitor's ring buffer.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MonitorMode {
    Off = 0,
    /// Every decision.
    All = 1,
    /// Drops only.
    Drops = 2,
}

/// An IPv4 header's addresses and protocol, with the L4 ports when there are any.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    /// Network order.
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Network order; 0 without TCP/UDP.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    /// 1 when the header was read (0: not IPv4, or cut short).
    pub valid: u8,
    pub _pad: [u8; 2],
}

/// One packet decision, as the monitor sees it: where, what, and the packet's headers at that
/// moment (for an encapsulated packet, `outer` is the tunnel header and `inner` the pod's).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub ifindex: u32,
    /// The packet's length as the hook saw it.
    pub len: u32,
    /// A [`Hook`] as u8.
    pub hook: u8,
    /// A [`Reason`] as u8.
    pub reason: u8,
    /// The EtherType's high and low byte (0x0806 for ARP).
    pub ethertype: [u8; 2],
    pub outer: Tuple,
    pub inner: Tuple,
}

/// What a prefix in the routes trie stands for: the route table ipipd replaces.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `<pod>/32 dev cali…`: a pod on this node, reached through its host-side veth.
    LocalEndpoint = 1,
    /// `<block>/26 via <node> dev tunl0`: a block owned by a peer node.
    RemoteBlock = 2,
    /// `blackhole <block>/26`: this node's own block (addresses without an endpoint).
    OwnBlock = 3,
    /// `<node>/32`: a peer node's own address. Also the allow-list of tunnel sources.
    PeerNode = 4,
    /// `local <address> dev tunl0`: this node's tunnel address (Calico's
    /// `ipv4IPIPTunnelAddr`), inside its own block, on ipipd's tunnel device: for the node
    /// itself. Added in layout 6 without a new one: a program of layout 6 that does not know
    /// the kind hands the packet to the kernel, as this kind wants.
    TunnelAddress = 5,
}

impl RouteKind {
    pub const ALL: [RouteKind; 5] = [
        RouteKind::LocalEndpoint,
        RouteKind::RemoteBlock,
        RouteKind::OwnBlock,
        RouteKind::PeerNode,
        RouteKind::TunnelAddress,
    ];
    /// The snake_case name the CLI, the fixtures and the docs use.
    pub const fn name(self) -> &'static str {
        match self {
            RouteKind::LocalEndpoint => "local_endpoint",
            RouteKind::RemoteBlock => "remote_block",
            RouteKind::OwnBlock => "own_block",
            RouteKind::PeerNode => "peer_node",
            RouteKind::TunnelAddress => "tunnel_address",
        }
    }
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::LocalEndpoint),
            2 => Some(Self::RemoteBlock),
            3 => Some(Self::OwnBlock),
            4 => Some(Self::PeerNode),
            5 => Some(Self::TunnelAddress),
            _ => None,
        }
    }
}

/// Tunnel modes, as Calico names them.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every remote block is encapsulated.
    Always = 0,
    /// Blocks of nodes on the uplink's own subnet are routed without encapsulation.
    CrossSubnet = 1,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Always, Mode::CrossSubnet];
    /// The name the config file and the CLI use (Calico's `ipipMode`, in kebab case).
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Always => "always",
            Mode::CrossSubnet => "cross-subnet",
        }
    }
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Mode::Always),
            1 => Some(Mode::CrossSubnet),
            _ => None,
        }
    }
}

/// Where a program runs: part of each counter's key.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    FromPod = 1,
    FromUplink = 2,
    /// tc egress of the tunnel device: what the kernel itself routes to remote blocks.
    ToTunnel = 3,
    XdpUplink = 4,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::FromPod,
        Hook::FromUplink,
        Hook::ToTunnel,
        Hook::XdpUplink,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            Hook::FromPod => "from_pod",
            Hook::FromUplink => "from_uplink",
            Hook::ToTunnel => "to_tunnel",
            Hook::XdpUplink => "xdp_uplink",
        }
    }
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Hook::FromPod),
            2 => Some(Hook::FromUplink),
            3 => Some(Hook::ToTunnel),
            4 => Some(Hook::XdpUplink),
            _ => None,
        }
    }
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $name:ident = $val:expr, $text:literal, $drop:expr; )*) => {
        /// Why a program took its decision: one reason per decision and per drop.
        #[repr(u8)]
        #[derive(Copy, Clone, Debug, PartialEq, Eq)]
        pub enum Reason { $( $(#[$doc])* $name = $val, )* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[ $( Reason::$name, )* ];
            /// The stable snake_case name used in the CLI, metrics and fixtures.
            pub const fn name(self) -> &'static str {
                match self { $( Reason::$name => $text, )* }
            }
            /// Whether the packet was dropped.
            pub const fn is_drop(self) -> bool {
                match self { $( Reason::$name => $drop, )* }
            }
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v { $( $val => Some(Reason::$name), )* _ => None }
            }
            /// What became of the packet: "drop", "pass" (to the kernel), "forward" (ipipd
            /// sent it on: delivered, encapsulated, routed, answered), or "note" (counted beside
            /// the decision it goes with).
            pub const fn verdict(self) -> &'static str {
                if self.is_drop() {
                    return "drop";
                }
                match self {
                    Reason::PassToKernel
                    | Reason::PassTtlExpired
                    | Reason::PassTooBig
                    | Reason::PassNotIpv4
                    | Reason::PassIpip
                    | Reason::DecapToKernel
                    | Reason::DecapTtlExpired
                    | Reason::ArpPass
                    | Reason::PassVlanTagged
                    | Reason::PassKernelFlow
                    | Reason::DecapKernelFlow
                    | Reason::PassSlowPath
                    | Reason::DecapSlowPath => "pass",
                    Reason::EcnUnusedCombination | Reason::KernelFlowRecorded => "note",
                    _ => "forward",
                }
            }
        }
    };
}

reasons! {
    /// Pod to a pod on this node: TTL - 1, MACs rewritten, `bpf_redirect_peer`.
    /// Counted on the destination pod's veth.
    DeliverPodToPod = 1, "deliver_pod_to_pod", false;
    /// Encapsulated toward the owning node and sent out the uplink.
    Encap = 2, "encap", false;
    /// Decapsulated and delivered to a local pod with `bpf_redirect_peer`.
    /// Counted on the destination pod's veth.
    DecapDeliver = 3, "decap_deliver", false;
    /// Decapsulated; the inner destination is not a local pod, so the kernel takes it, as
    /// received on the tunnel device.
    DecapToKernel = 4, "decap_to_kernel", false;
    /// Cross-subnet: routed to a same-subnet node without encapsulation.
    ForwardSameSubnet = 5, "forward_same_subnet", false;
    /// Cross-subnet: plain IPv4 from the uplink delivered to a local pod.
    /// Counted on the destination pod's veth.
    DeliverFromUplink = 6, "deliver_from_uplink", false;
    /// An ARP request from a pod answered with the host-side veth's MAC.
    ArpReply = 7, "arp_reply", false;
    /// Not ipipd's traffic (host, outside world, services): the kernel takes it unchanged.
    PassToKernel = 8, "pass_to_kernel", false;
    /// TTL <= 1: the kernel takes it and answers time exceeded.
    PassTtlExpired = 9, "pass_ttl_expired", false;
    /// Larger than the tunnel MTU (not GSO): the kernel answers fragmentation-needed or fragments.
    PassTooBig = 10, "pass_too_big", false;
    /// Not IPv4 (IPv6, ARP on the uplink, …): the kernel takes it unchanged.
    PassNotIpv4 = 11, "pass_not_ipv4", false;
    /// IP-in-IP on the uplink that is not addressed to this node: the kernel takes it unchanged.
    PassIpip = 12, "pass_ipip", false;
    /// Decapsulated, inner TTL <= 1: the kernel takes the inner packet and answers time exceeded.
    DecapTtlExpired = 13, "decap_ttl_expired", false;
    /// RFC 6040 "currently unused" ECN combination on decapsulation: forwarded, and counted here too.
    EcnUnusedCombination = 14, "ecn_unused_combination", false;
    /// ARP that needs no answer from ipipd (a pod probing its own address, replies): the kernel takes it.
    ArpPass = 15, "arp_pass", false;
    /// The node's own packet to a peer node's address, which the peer's /32 route sends into
    /// the tunnel device (so that pods' packets to it are encapsulated): sent on plain.
    HostToPeer = 16, "host_to_peer", false;
    /// A VLAN-tagged frame on the uplink (in the skb's metadata or in the data): the kernel
    /// takes it unchanged (a VLAN device's, if any); never decapsulated or delivered to a pod.
    PassVlanTagged = 17, "pass_vlan_tagged", false;
    /// A packet of a flow the kernel handles (its first packet was handed to the kernel, which
    /// may have translated it: a Service's DNAT, a masquerade): handed to the kernel too, so
    /// that its conntrack entry sees it.
    PassKernelFlow = 18, "pass_kernel_flow", false;
    /// Decapsulated; a packet of a flow the kernel handles: to the kernel as received on the
    /// tunnel device.
    DecapKernelFlow = 19, "decap_kernel_flow", false;
    /// `fast_path = false`: the kernel forwards the pod's packet.
    PassSlowPath = 20, "pass_slow_path", false;
    /// `fast_path = false`: decapsulated, to the kernel as received on the tunnel device.
    DecapSlowPath = 21, "decap_slow_path", false;
    /// A flow handed to the kernel, recorded (once per flow while it lives in the map): its
    /// replies go to the kernel too.
    KernelFlowRecorded = 22, "kernel_flow_recorded", false;
    /// The pod sent from an address that is not its own (anti-spoofing).
    DropSpoofedSource = 32, "drop_spoofed_source", true;
    /// Destination in this node's own block without an endpoint (the blackhole route).
    DropBlackhole = 33, "drop_blackhole", true;
    /// A packet on an interface ipipd has no endpoint for.
    DropUnknownEndpoint = 34, "drop_unknown_endpoint", true;
    /// The (inner) IPv4 header is malformed: version, IHL < 5, or lengths beyond the packet.
    DropBadIpHeader = 35, "drop_bad_ip_header", true;
    /// IP-in-IP from a source that is not a known peer node.
    DropIpipUnknownPeer = 36, "drop_ipip_unknown_peer", true;
    /// An outer IPv4 fragment.
    DropOuterFragment = 37, "drop_outer_fragment", true;
    /// Outer header: not version 4, or IHL < 5.
    DropBadOuterHeader = 38, "drop_bad_outer_header", true;
    /// Outer total length below the headers or beyond the frame.
    DropBadOuterLength = 39, "drop_bad_outer_length", true;
    /// Outer header with IP options.
    DropOuterOptions = 40, "drop_outer_options", true;
    /// Outer header checksum does not verify.
    DropBadOuterChecksum = 41, "drop_bad_outer_checksum", true;
    /// Inner header of a tunnelled packet: not version 4, or IHL < 5.
    DropBadInnerHeader = 42, "drop_bad_inner_header", true;
    /// Inner packet truncated: its total length exceeds what the outer carries.
    DropBadInnerLength = 43, "drop_bad_inner_length", true;
    /// RFC 6040: outer CE over a Not-ECT inner packet cannot be passed on.
    DropEcnCeNotEct = 44, "drop_ecn_ce_not_ect", true;
    /// `bpf_skb_adjust_room` refused to encapsulate (for example -EALREADY).
    DropEncapFailed = 45, "drop_encap_failed", true;
    /// `bpf_skb_adjust_room` refused to decapsulate.
    DropDecapFailed = 46, "drop_decap_failed", true;
    /// No usable route to the peer node on the uplink (FIB lookup failed).
    DropNoRouteToPeer = 47, "drop_no_route_to_peer", true;
    /// A helper failed after the packet was modified: never sent half-built.
    DropHelperFailed = 48, "drop_helper_failed", true;
    /// A pod's ARP request claims a sender address that is not its own.
    DropArpSpoofed = 49, "drop_arp_spoofed", true;
    /// Routed into the tunnel device, but the outer packet would exceed the MTU (not GSO).
    DropTooBigEgress = 50, "drop_too_big_egress", true;
    /// Frame too short for the headers its type announces.
    DropTruncated = 51, "drop_truncated", true;
    /// Routed into the tunnel device but nothing ipipd tunnels: not IPv4, or a destination
    /// without a tunnelled route (a route left pointing at the device).
    DropNotTunnelled = 52, "drop_not_tunnelled", true;
    /// Routed into the tunnel device while the peer's next hop on the uplink is unresolved.
    /// `bpf_redirect_neigh` would queue it under the tunnel device's route, and the kernel
    /// would send the queue out the uplink addressed for the tunnel device once the MAC
    /// arrives: dropped instead, while the daemon resolves the next hop.
    DropNextHopUnresolved = 53, "drop_next_hop_unresolved", true;
    /// A VLAN-tagged frame from a pod (or routed into the tunnel device): pods' traffic is
    /// untagged, and a tag would otherwise travel on with the frame.
    DropVlanTagged = 54, "drop_vlan_tagged", true;
    /// An IPv4 header whose checksum does not verify, from a pod or plain from the uplink (the
    /// kernel's forwarding would drop it too).
    DropBadIpChecksum = 55, "drop_bad_ip_checksum", true;
    /// The inner header of a tunnelled packet: its checksum does not verify.
    DropBadInnerChecksum = 56, "drop_bad_inner_checksum", true;
}

/// Key of the per-CPU counters.
///
/// `ifindex` is the interface the hook runs on, except for the local-delivery reasons
/// (`deliver_pod_to_pod`, `decap_deliver`, `deliver_from_uplink`), where it is the pod veth the
/// packet was delivered to (the target of `bpf_redirect_peer`). The target of every other
/// redirect (encap, forward) is the configured uplink.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub ifindex: u32,
    /// A [`Hook`] as u8.
    pub hook: u8,
    /// A [`Reason`] as u8.
    pub reason: u8,
    pub _pad: [u8; 2],
}

/// Value of the per-CPU counters: packets, and bytes as the program saw them (skb->len, or the
/// XDP frame length; a GSO skb counts once with all its bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// The decisions of the forwarding paths, counted without a hash lookup: in a per-CPU array of
/// [`CounterRow`]s indexed by `ifindex % HOT_ROWS`, whose row a CPU claims for the first
/// ifindex it counts there. A decision that is not among these, or whose row another interface
/// holds, goes to the counters hash. Readers add both; a counter lives in exactly one place per
/// CPU at a time.
///
/// The busiest cells come first: a row's tag and its first cells share a cache line more often
/// (a row starts wherever the per-CPU allocator puts it). The hot path's cells lead, those a
/// pod veth's row counts (encap, decap delivery, local delivery); the uplink's and the tunnel
/// device's (host traffic) follow. Eleven cells make a row of 192 bytes, three cache lines.
pub const HOT: [(Hook, Reason); 11] = [
    (Hook::FromPod, Reason::Encap),
    (Hook::FromUplink, Reason::DecapDeliver),
    (Hook::FromPod, Reason::DeliverPodToPod),
    (Hook::FromUplink, Reason::DeliverFromUplink),
    (Hook::FromPod, Reason::ForwardSameSubnet),
    (Hook::FromUplink, Reason::PassToKernel),
    (Hook::FromUplink, Reason::DecapToKernel),
    (Hook::ToTunnel, Reason::Encap),
    (Hook::ToTunnel, Reason::HostToPeer),
    (Hook::FromPod, Reason::ArpReply),
    (Hook::FromPod, Reason::PassToKernel),
];

/// Rows of the hot counters (a power of two).
pub const HOT_ROWS: u32 = 1024;

/// The hot-counter row of interface `ifindex` (shared with any other ifindex of the same
/// residue; the first to count on a CPU holds it there).
#[inline(always)]
pub const fn hot_row_index(ifindex: u32) -> u32 {
    ifindex & (HOT_ROWS - 1)
}

/// The column of (hook, reason) in a [`CounterRow`], when it is a hot decision.
#[inline(always)]
pub const fn hot_column(hook: Hook, reason: Reason) -> Option<usize> {
    let mut i = 0;
    while i < HOT.len() {
        if HOT[i].0 as u8 == hook as u8 && HOT[i].1 as u8 == reason as u8 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// One row of the hot counters: the interface it counts for (0: unclaimed on this CPU), the
/// source address the interface's last packet was checked for, and a cell per [`HOT`] decision.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterRow {
    pub ifindex: u32,
    /// The programs' source check, remembered where the packet's counter is anyway: `src_addr`
    /// (network order) passed it on this interface under routes generation `src_gen` (the
    /// config's `route_gen`; 0: nothing remembered). A pod veth's row holds its pod's address,
    /// the uplink's the last peer node that sent a tunnel packet.
    pub src_gen: u32,
    pub src_addr: [u8; 4],
    pub _pad: u32,
    pub cells: [CounterValue; HOT.len()],
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C) plain data with explicit padding and no pointers.
    unsafe impl aya::Pod for RouteValue {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for NodeConfig {}
    unsafe impl aya::Pod for CounterKey {}
    unsafe impl aya::Pod for CounterValue {}
    unsafe impl aya::Pod for CounterRow {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
}

// The layouts are part of the ABI: fail the build if one changes without LAYOUT_VERSION (the
// history of the layouts is in CHANGELOG.md).
const _: () = {
    assert!(core::mem::size_of::<RouteValue>() == 24);
    assert!(core::mem::size_of::<Endpoint>() == 16);
    assert!(core::mem::size_of::<NodeConfig>() == 32);
    assert!(core::mem::size_of::<RouteCacheSlot>() == 32);
    assert!(core::mem::size_of::<RouteCache>() == 32 * ROUTE_CACHE_SLOTS as usize);
    assert!(core::mem::size_of::<CounterKey>() == 8);
    assert!(core::mem::size_of::<CounterValue>() == 16);
    assert!(core::mem::size_of::<CounterRow>() == 16 + 16 * HOT.len());
    assert!(core::mem::size_of::<FlowKey>() == 8);
    assert!(core::mem::size_of::<FlowValue>() == 4);
    assert!(core::mem::size_of::<NoFlowCache>() == 16 * NO_FLOW_SLOTS as usize);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_fit_the_kernel_and_carry_the_layout_version() {
        let suffix = format!("_v{LAYOUT_VERSION}");
        assert_eq!(map_names::ALL.len(), 12);
        for name in map_names::ALL {
            assert!(name.len() <= 15, "{name}: the kernel keeps 15 characters");
            assert!(
                name.starts_with("ipipd_") && name.ends_with(&suffix),
                "{name}"
            );
        }
        let mut sorted = map_names::ALL.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), map_names::ALL.len(), "a name twice");
    }

    #[test]
    fn no_flow_tags_are_never_an_empty_slot_and_tell_ends_apart() {
        let end = |addr: [u8; 4], port: u16, proto: u8| FlowKey {
            addr,
            port: port.to_be_bytes(),
            proto,
            _pad: 0,
        };
        let ends = [
            end([0; 4], 0, 0),
            end([10, 0, 0, 1], 53, 17),
            end([10, 0, 0, 1], 53, 6),
            end([10, 0, 0, 1], 54, 17),
            end([10, 0, 0, 2], 53, 17),
            end([255; 4], 65535, 255),
        ];
        let mut tags: Vec<u64> = ends.iter().map(no_flow_tag).collect();
        assert!(
            tags.iter().all(|&t| t != 0),
            "an end tagged as an empty slot"
        );
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), ends.len(), "two ends with one tag");
        // The slots of many ends spread over the whole cache.
        let mut used = vec![false; NO_FLOW_SLOTS as usize];
        for port in 0..4096u16 {
            let slot = no_flow_slot(no_flow_tag(&end([10, 0, 0, 1], port, 6)));
            used[slot as usize] = true;
        }
        assert!(used.iter().all(|&u| u), "a slot no end reaches");
    }

    #[test]
    fn names_round_trip() {
        for k in RouteKind::ALL {
            assert_eq!(RouteKind::from_u8(k as u8), Some(k));
        }
        for m in Mode::ALL {
            assert_eq!(Mode::from_u8(m as u8), Some(m));
        }
        for h in Hook::ALL {
            assert_eq!(Hook::from_u8(h as u8), Some(h));
        }
        for r in Reason::ALL {
            assert_eq!(Reason::from_u8(*r as u8), Some(*r));
        }
        assert_eq!(RouteKind::from_u8(0), None);
        assert_eq!(Mode::from_u8(2), None);
    }
}
