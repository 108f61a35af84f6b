//! The next hop toward a peer node — `<block> via <node>`'s "via" — and sending a frame to it:
//! with the MACs cached in the route, or the FIB's, or through `bpf_redirect_neigh` when the
//! neighbour is not resolved yet and the hook's policy allows it. Also the plain forward to a
//! same-subnet node (cross-subnet mode) and the node's own packets to a peer.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use dataplane_common::{Hook, NodeConfig, ROUTE_F_L2, Reason, RouteValue};

use super::verdict::{Verdict, record};
use crate::packet::{ETH_LEN, EthHdr, Ipv4Hdr, dec_ttl, ifindex, ptr_at, set_mac, set_macs};

const AF_INET: u8 = 2;

/// What a hook's forwarding does on the hook's behalf: the policy the shared actions follow
/// instead of asking which hook called them.
#[derive(Copy, Clone)]
pub struct Forwarding {
    /// The packet is forwarded on a pod's behalf: its TTL is decremented here. Clear for a
    /// packet the kernel routed, which counted the hop already.
    pub dec_ttl: bool,
    /// What to do when the peer's next hop has no MAC yet.
    pub unresolved: Unresolved,
}

/// A next hop without a known MAC.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// `bpf_redirect_neigh`: the kernel resolves it and sends the packet.
    Resolve,
    /// Dropped (drop_next_hop_unresolved) while the daemon resolves it: the packet carries the
    /// kernel's route through the tunnel device, so the neighbour would queue it and, once
    /// resolved, send it with that route's L2 (the tunnel device's) out the uplink.
    Drop,
}

impl Forwarding {
    /// A pod's packet (from_pod): a hop taken on its behalf, the next hop left to the kernel
    /// when it is not known yet.
    pub const FOR_POD: Forwarding = Forwarding {
        dec_ttl: true,
        unresolved: Unresolved::Resolve,
    };
    /// A packet the kernel routed into the tunnel device (to_tunnel).
    pub const KERNEL_ROUTED: Forwarding = Forwarding {
        dec_ttl: false,
        unresolved: Unresolved::Drop,
    };
}

/// The FIB's next hop toward a peer node: out of which interface, and with which L2. Unused
/// when the route caches its L2 (ROUTE_F_L2): [`send`] then writes the route's own MACs and
/// interface, read in place. (Not an enum holding the route: a pointer sharing a stack slot
/// with the FIB's MACs is more than older verifiers, 6.1's, can follow.)
pub struct NextHop {
    ifindex: u32,
    /// The MACs are known: write them and redirect. Otherwise `bpf_redirect_neigh` toward
    /// `gateway` lets the kernel resolve it.
    resolved: bool,
    dmac: [u8; 6],
    smac: [u8; 6],
    gateway: u32,
}

/// The next hop toward the node of route `rt`: its cached L2 when user space has resolved it
/// (ROUTE_F_L2), else a FIB lookup from this node out of the uplink; or why it cannot go. No
/// route: the kernel has none usable (blackhole, unreachable, forwarding disabled, …). An
/// unresolved neighbour is handled as `unresolved` says.
#[inline(always)]
pub fn next_hop(
    ctx: &TcContext,
    cfg: &NodeConfig,
    rt: &RouteValue,
    unresolved: Unresolved,
) -> Result<NextHop, Reason> {
    if rt.flags & ROUTE_F_L2 != 0 {
        return Ok(NextHop {
            ifindex: 0,
            resolved: true,
            dmac: [0; 6],
            smac: [0; 6],
            gateway: 0,
        });
    }
    // SAFETY: bpf_fib_lookup is plain data; all-zero is its documented initial state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = cfg.uplink_ifindex;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(cfg.node_ip);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(rt.node_ip);
    crate::cost::note(crate::cost::Item::FibLookup);
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
    if !resolved && unresolved == Unresolved::Drop {
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

/// Sends the (already rewritten) frame toward `nh`, the next hop of route `rt`: with its MACs
/// when they are known, `bpf_redirect_neigh` otherwise.
#[inline(always)]
pub fn send(ctx: &TcContext, rt: &RouteValue, nh: &NextHop) -> Verdict {
    let cached = rt.flags & ROUTE_F_L2 != 0;
    if cached || nh.resolved {
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return Err(Reason::DropHelperFailed);
        };
        if cached {
            // SAFETY: bounds-checked above.
            unsafe { set_macs(&mut *eth, rt) };
            return redirect(rt.ifindex);
        }
        // SAFETY: bounds-checked above.
        unsafe {
            set_mac(&mut (*eth).dst_addr, &nh.dmac);
            set_mac(&mut (*eth).src_addr, &nh.smac);
        }
        return redirect(nh.ifindex);
    }
    let mut neigh = bpf_redir_neigh {
        nh_family: AF_INET as u32,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: nh.gateway,
        },
    };
    crate::cost::note(crate::cost::Item::RedirectNeigh);
    // SAFETY: helper call with a correctly sized params struct.
    Ok(unsafe {
        bpf_redirect_neigh(
            nh.ifindex,
            &mut neigh,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    })
}

/// Out of interface `ifindex`, the frame's L2 written.
#[inline(always)]
fn redirect(ifindex: u32) -> Verdict {
    crate::cost::note(crate::cost::Item::Redirect);
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) as i32 })
}

/// Sends the packet without encapsulation toward the node of route `rt` (that node, or the
/// kernel's gateway to it, as the next hop), counted under `reason` with `bytes`: from_pod's
/// cross-subnet forward to a same-subnet node (the caller has checked TTL > 1), or to_tunnel's
/// `host_to_peer` (the node's own packet, already routed).
#[inline(always)]
pub fn forward_plain(
    ctx: &TcContext,
    cfg: &NodeConfig,
    hook: Hook,
    rt: &RouteValue,
    reason: Reason,
    how: Forwarding,
) -> Verdict {
    let bytes = ctx.len();
    let nh = next_hop(ctx, cfg, rt, how.unresolved)?;
    if how.dec_ttl {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
            return Err(Reason::DropHelperFailed);
        };
        // SAFETY: bounds-checked above.
        unsafe { dec_ttl(&mut *ip) };
    }
    record(ctx, ifindex(ctx), hook, reason, bytes);
    send(ctx, rt, &nh)
}
