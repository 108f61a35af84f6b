//! Act: what the hooks do once they have decided — count and pass or drop, deliver to a local
//! pod, encapsulate toward a peer node, route to a same-subnet node. Each ends the program.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_ADJ_ROOM_NO_CSUM_RESET,
        BPF_F_INGRESS, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_smp_processor_id, bpf_redirect, bpf_redirect_neigh,
        bpf_redirect_peer,
    },
    programs::TcContext,
};
use dataplane_common::{Hook, NodeConfig, ROUTE_F_L2, Reason, RouteValue, csum};

use crate::{
    maps::{IP_ID, count},
    monitor,
    packet::{
        ETH_LEN, EthHdr, IP_DF, IP_LEN, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, TC_OK,
        TC_SHOT, dec_ttl, ensure_linear, frag_field, gso_size, ifindex, ihl_bytes, ip_words,
        ptr_at, set_mac, tot_len,
    },
};

const AF_INET: u8 = 2;
/// The outer header's TTL.
const OUTER_TTL: u8 = 64;
const PACKET_HOST: u32 = 0;

/// Records a decision: its counter, and, while someone watches, a monitor event.
#[inline(always)]
pub fn record(ctx: &TcContext, ifindex: u32, hook: Hook, reason: Reason, bytes: u32) {
    count(ifindex, hook, reason, bytes);
    monitor::tc(ctx, ifindex, hook, reason, bytes);
}

/// Counts the decision on the hook's interface and hands the packet to the kernel unchanged.
#[inline(always)]
pub fn pass(ctx: &TcContext, hook: Hook, reason: Reason) -> i32 {
    record(ctx, ifindex(ctx), hook, reason, ctx.len());
    TC_OK
}

/// Counts the drop on the hook's interface and drops the packet.
#[inline(always)]
pub fn drop(ctx: &TcContext, hook: Hook, reason: Reason) -> i32 {
    record(ctx, ifindex(ctx), hook, reason, ctx.len());
    TC_SHOT
}

/// Local delivery of the IPv4 packet at ETH_LEN to the pod of `ep` (a LocalEndpoint route):
/// TTL - 1, MACs rewritten, `bpf_redirect_peer` into the pod. The caller has checked TTL > 1
/// and that the IPv4 header is linear. Counted on the destination veth under `reason`, with the
/// packet's length as the hook received it (`bytes`).
#[inline(always)]
pub fn deliver_local(
    ctx: &TcContext,
    hook: Hook,
    reason: Reason,
    ep: &RouteValue,
    bytes: u32,
) -> i32 {
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)) else {
        return drop(ctx, hook, Reason::DropHelperFailed);
    };
    // SAFETY: both pointers were bounds-checked against data_end just above.
    unsafe {
        dec_ttl(&mut *ip);
        set_mac(&mut (*eth).dst_addr, &ep.pod_mac);
        set_mac(&mut (*eth).src_addr, &ep.host_mac);
        // Packets from a tunnel or the wire may carry PACKET_OTHERHOST; kernels before 6.15 do not
        // reset it on redirect_peer.
        if (*ctx.skb.skb).pkt_type != PACKET_HOST {
            let _ = ctx.change_type(PACKET_HOST);
        }
    }
    record(ctx, ep.ifindex, hook, reason, bytes);
    // SAFETY: helper call with valid arguments; flags must be 0.
    unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 }
}

/// The next hop toward a peer node: out of which interface, and with which L2.
struct NextHop {
    ifindex: u32,
    /// The MACs are known (cached in the route, or from the FIB): write them and redirect.
    /// Otherwise `bpf_redirect_neigh` toward `gateway` lets the kernel resolve it.
    resolved: bool,
    dmac: [u8; 6],
    smac: [u8; 6],
    gateway: u32,
}

/// The next hop of a packet from `hook` toward the node of route `rt`: its cached L2 when user
/// space has resolved it (ROUTE_F_L2), else a FIB lookup from this node out of the uplink; or
/// why it cannot go. No route: the kernel has none usable (blackhole, unreachable, forwarding
/// disabled, …). An unresolved neighbour is left to `bpf_redirect_neigh`, except for packets
/// on the tunnel device: they carry the kernel's route through it, so the neighbour would queue
/// them and, once resolved, send them by that route's L2 (the tunnel device's) out the uplink.
#[inline(always)]
fn next_hop(
    ctx: &TcContext,
    cfg: &NodeConfig,
    hook: Hook,
    rt: &RouteValue,
) -> Result<NextHop, Reason> {
    if rt.flags & ROUTE_F_L2 != 0 {
        return Ok(NextHop {
            ifindex: rt.ifindex,
            resolved: true,
            dmac: rt.pod_mac,
            smac: rt.host_mac,
            gateway: 0,
        });
    }
    // SAFETY: bpf_fib_lookup is plain data; all-zero is its documented initial state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = cfg.uplink_ifindex;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(cfg.node_ip);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(rt.node_ip);
    // SAFETY: helper call with a correctly sized params struct on the stack.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    let resolved = rc == BPF_FIB_LKUP_RET_SUCCESS as i64;
    if !resolved && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(Reason::DropNoRouteToPeer);
    }
    if !resolved && hook == Hook::ToTunnel {
        return Err(Reason::DropNextHopUnresolved);
    }
    Ok(NextHop {
        ifindex: params.ifindex,
        resolved,
        dmac: params.dmac,
        smac: params.smac,
        // SAFETY: the union member the FIB lookup filled (the gateway, or the destination).
        gateway: unsafe { params.__bindgen_anon_4.ipv4_dst },
    })
}

/// Sends the (already rewritten) frame toward `nh`: with its MACs when they are known,
/// `bpf_redirect_neigh` otherwise.
#[inline(always)]
fn send(ctx: &TcContext, hook: Hook, nh: &NextHop) -> i32 {
    if nh.resolved {
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return drop(ctx, hook, Reason::DropHelperFailed);
        };
        // SAFETY: bounds-checked above.
        unsafe {
            set_mac(&mut (*eth).dst_addr, &nh.dmac);
            set_mac(&mut (*eth).src_addr, &nh.smac);
        }
        // SAFETY: helper call.
        return unsafe { bpf_redirect(nh.ifindex, 0) as i32 };
    }
    let mut neigh = bpf_redir_neigh {
        nh_family: AF_INET as u32,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: nh.gateway,
        },
    };
    // SAFETY: helper call with a correctly sized params struct.
    unsafe {
        bpf_redirect_neigh(
            nh.ifindex,
            &mut neigh,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}

/// The next outer IPv4 Identification for a DF-clear packet: a per-CPU counter with the CPU
/// number, bit-reversed, in the high bits, so CPUs do not share IDs until a counter wraps into
/// another CPU's range.
#[inline(always)]
fn next_ip_id() -> u16 {
    // SAFETY: helper call without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u16;
    let ctr = match IP_ID.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        Some(p) => unsafe {
            let v = *p;
            *p = v.wrapping_add(1);
            v as u16
        },
        None => 0,
    };
    cpu.reverse_bits() ^ ctr
}

/// Length of the inner L3 + L4 headers of a GSO packet (what each segment repeats). The TCP
/// data offset is read in place when the IPv4 header has no options and the linear data holds
/// the TCP header (a local sender's skb does), with a helper copy otherwise; unreadable, it
/// counts as the largest TCP header.
#[inline(always)]
fn inner_headers_len(ctx: &TcContext, ihl: usize, proto: u8) -> usize {
    const DOFF_AT: usize = ETH_LEN + IP_LEN + 12;
    match proto {
        IPPROTO_TCP => {
            let direct = match ptr_at::<u8>(ctx, DOFF_AT) {
                // SAFETY: bounds-checked against data_end (a constant offset, as the verifier
                // requires).
                Some(p) if ihl == IP_LEN => Some(unsafe { *p }),
                _ => None,
            };
            match direct.or_else(|| ctx.load::<u8>(ETH_LEN + ihl + 12).ok()) {
                Some(doff) => ihl + (((doff >> 4) as usize) << 2),
                None => ihl + 60,
            }
        }
        IPPROTO_UDP => ihl + 8,
        _ => ihl,
    }
}

/// Whether the packet needs the kernel's fragmentation-needed / fragmentation before it can be
/// encapsulated: a non-GSO packet whose outer length would exceed the underlay MTU.
#[inline(always)]
pub fn too_big_for_tunnel(ctx: &TcContext, cfg: &NodeConfig, ip: &Ipv4Hdr) -> bool {
    gso_size(ctx) == 0 && tot_len(ip) + IP_LEN > cfg.mtu as usize
}

/// Encapsulates the IPv4 packet at ETH_LEN in IP-in-IP toward the node of route `rt` and sends
/// it out the uplink. `dec_ttl_inner` is set when the packet is forwarded on the pod's behalf
/// (from_pod), clear for packets the kernel already routed (to_tunnel). The caller has checked
/// TTL and size.
#[inline(always)]
pub fn encap_and_send(
    ctx: &TcContext,
    cfg: &NodeConfig,
    hook: Hook,
    ip: &Ipv4Hdr,
    rt: &RouteValue,
    dec_ttl_inner: bool,
) -> i32 {
    let node_ip = rt.node_ip;
    let len = ctx.len();
    // What the outer header copies, read before the packet changes (`ip` is invalid after).
    let (inner_tot, tos, frags, ihl, proto) =
        (tot_len(ip), ip.tos, frag_field(ip), ihl_bytes(ip), ip.proto);

    // L2 toward the peer node first: a node without a route to its peer (or, from the tunnel
    // device, without its MAC yet) drops the packet unmodified instead of sending it half-built.
    let nh = match next_hop(ctx, cfg, hook, rt) {
        Ok(nh) => nh,
        Err(reason) => return drop(ctx, hook, reason),
    };

    // FIXED_GSO only when the segments still fit once the outer header is added; otherwise the
    // kernel lowers gso_size by 20.
    let gso = gso_size(ctx) as usize;
    let mut flags = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;
    if gso != 0 && gso + inner_headers_len(ctx, ihl, proto) + IP_LEN <= cfg.mtu as usize {
        flags |= BPF_F_ADJ_ROOM_FIXED_GSO as u64;
    }
    if let Err(e) = ctx.adjust_room(IP_LEN as i32, BPF_ADJ_ROOM_MAC, flags) {
        // Rare (an skb that is already encapsulated, say): worth a line in the daemon's log.
        aya_log_ebpf::warn!(ctx, "encap: bpf_skb_adjust_room refused: {}", e);
        record(ctx, ifindex(ctx), hook, Reason::DropEncapFailed, len);
        return TC_SHOT;
    }

    // From here on the packet is modified: every failure is TC_ACT_SHOT.
    if !ensure_linear(ctx, ETH_LEN + IP_LEN + IP_LEN) {
        return drop(ctx, hook, Reason::DropHelperFailed);
    }
    let (Some(outer), Some(inner)) = (
        ptr_at::<Ipv4Hdr>(ctx, ETH_LEN),
        ptr_at::<Ipv4Hdr>(ctx, ETH_LEN + IP_LEN),
    ) else {
        return drop(ctx, hook, Reason::DropHelperFailed);
    };
    let df = frags & IP_DF;
    let id = if df != 0 { 0 } else { next_ip_id() };
    // SAFETY: both headers were bounds-checked above.
    unsafe {
        let o = &mut *outer;
        o.vihl = 0x45;
        o.tos = tos;
        o.tot_len = ((inner_tot + IP_LEN) as u16).to_be_bytes();
        o.id = id.to_be_bytes();
        o.frags = df.to_be_bytes();
        o.ttl = OUTER_TTL;
        o.proto = IPPROTO_IPIP;
        o.check = [0; 2];
        o.src_addr = cfg.node_ip;
        o.dst_addr = node_ip;
        o.check = csum::ipv4_header(&ip_words(o)).to_ne_bytes();
        if dec_ttl_inner {
            dec_ttl(&mut *inner);
        }
    }
    record(ctx, ifindex(ctx), hook, Reason::Encap, len);
    send(ctx, hook, &nh)
}

/// Sends the packet without encapsulation toward the node of route `rt` (that node, or the
/// kernel's gateway to it, as the next hop), counted under `reason`: from_pod's cross-subnet
/// forward to a same-subnet node (`dec_ttl`: forwarded on the pod's behalf; the caller has
/// checked TTL > 1), or to_tunnel's `host_to_peer` (the node's own packet, already routed).
#[inline(always)]
pub fn send_plain(
    ctx: &TcContext,
    cfg: &NodeConfig,
    hook: Hook,
    rt: &RouteValue,
    reason: Reason,
    dec_ttl_ip: bool,
) -> i32 {
    let len = ctx.len();
    let nh = match next_hop(ctx, cfg, hook, rt) {
        Ok(nh) => nh,
        Err(reason) => return drop(ctx, hook, reason),
    };
    if dec_ttl_ip {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return drop(ctx, hook, Reason::DropHelperFailed);
        };
        // SAFETY: bounds-checked above.
        unsafe { dec_ttl(&mut *ip) };
    }
    record(ctx, ifindex(ctx), hook, reason, len);
    send(ctx, hook, &nh)
}

/// Hands a decapsulated packet to the kernel the way `tunl0` would: as received on the tunnel
/// device (its destination MAC the device's, so that the kernel takes it as addressed to this
/// host), where the routes back to remote pods point, so that reverse-path filtering and
/// firewall rules see it on the interface its replies leave by. Without a tunnel device yet,
/// on the uplink as it is. Counted under `reason` with the length the hook received (`bytes`).
#[inline(always)]
pub fn up_the_tunnel(
    ctx: &TcContext,
    cfg: &NodeConfig,
    hook: Hook,
    reason: Reason,
    bytes: u32,
) -> i32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop(ctx, hook, Reason::DropHelperFailed);
    };
    record(ctx, ifindex(ctx), hook, reason, bytes);
    let tunnel = cfg.tunnel_ifindex;
    if tunnel == 0 {
        return TC_OK;
    }
    // SAFETY: bounds-checked above.
    unsafe { set_mac(&mut (*eth).dst_addr, &cfg.tunnel_mac) };
    // SAFETY: helper call.
    unsafe { bpf_redirect(tunnel, BPF_F_INGRESS as u64) as i32 }
}
