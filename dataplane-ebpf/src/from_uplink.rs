//! from_uplink — tc ingress on the node's uplink.
//!
//! What `tunl0` and the /32 routes do for a packet arriving from another node:
//!
//! | packet                                            | here                                 |
//! |---------------------------------------------------|--------------------------------------|
//! | IPIP to the node IP from a peer, inner to a pod   | decap, RFC 6040 ECN, TTL-1, redirect_peer |
//! | … a reply of a flow the kernel handles            | decap, kernel via the tunnel device (conntrack) |
//! | … inner TTL <= 1                                  | decap, kernel via the tunnel device (time exceeded) |
//! | … inner to the own block, no pod                  | drop_blackhole                       |
//! | … inner to anything else (the node itself)        | decap, kernel via the tunnel device, its flow recorded |
//! | IPIP from a non-peer, outer fragment, bad headers | a drop, each with its own reason     |
//! | … an inner header with a bad checksum             | drop_bad_inner_checksum              |
//! | a VLAN-tagged frame (metadata or data)            | pass_vlan_tagged: the kernel's, untouched |
//! | plain IPv4 to a local pod (cross-subnet)          | TTL-1, redirect_peer                 |
//! | anything else                                     | the kernel, untouched (from a pod or a peer node: its flow recorded) |
//! | (`fast_path = false`)                             | decap; the kernel forwards           |

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    bindings::{BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_ADJ_ROOM_NO_CSUM_RESET},
    programs::TcContext,
};
use dataplane_common::{Hook, Mode, NODE_F_SLOW_PATH, NodeConfig, Reason, RouteKind, csum, ecn};

use crate::{
    act::{
        deliver::{to_pod, up_the_tunnel},
        kernel_flow,
        verdict::{Verdict, drop, pass, record},
    },
    maps::{config, route, source_ok},
    packet::{
        ETH_LEN, IP_LEN, IP_MF_OFFSET, IPPROTO_IPIP, Ipv4Hdr, L3, TC_OK, ensure_linear, frag_field,
        ifindex, ihl_bytes, ip_words, ipv4_checksum_ok, ipv4_sane, parse_l3, ptr_at, set_tos,
        tot_len,
    },
};

const HOOK: Hook = Hook::FromUplink;

pub fn run(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    match try_run(ctx, len) {
        Ok(action) => action,
        Err(reason) => drop(ctx, HOOK, reason, len),
    }
}

/// The hook's body; `len` is the packet's length as it arrived.
#[inline(always)]
fn try_run(ctx: &TcContext, len: u32) -> Verdict {
    let Some(cfg) = config() else {
        return Ok(TC_OK);
    };
    let outer = match parse_l3(ctx) {
        L3::Ipv4(ip) => ip,
        L3::Truncated => return Err(Reason::DropTruncated),
        L3::Tagged => return pass(ctx, HOOK, Reason::PassVlanTagged),
        L3::Arp | L3::Other => return pass(ctx, HOOK, Reason::PassNotIpv4),
    };
    if outer.proto != IPPROTO_IPIP {
        return plain(ctx, cfg, outer, len);
    }
    if outer.dst_addr != cfg.node_ip {
        return pass(ctx, HOOK, Reason::PassIpip);
    }

    // Parse and validate the outer header as ip_rcv would. Version 4 with 20 bytes of header
    // is the one byte 0x45; anything else is told apart only when it is dropped.
    if outer.vihl != 0x45 {
        if (outer.vihl >> 4) != 4 || ihl_bytes(outer) < IP_LEN {
            return Err(Reason::DropBadOuterHeader);
        }
        return Err(Reason::DropOuterOptions);
    }
    let outer_tot = tot_len(outer);
    if outer_tot < IP_LEN + IP_LEN || outer_tot > len as usize - ETH_LEN {
        return Err(Reason::DropBadOuterLength);
    }
    if csum::ipv4_header(&ip_words(outer)) != 0 {
        return Err(Reason::DropBadOuterChecksum);
    }
    if frag_field(outer) & IP_MF_OFFSET != 0 {
        return Err(Reason::DropOuterFragment);
    }
    let uplink = ifindex(ctx);
    if !source_ok(cfg, uplink, outer.src_addr, |rt| {
        rt.kind == RouteKind::PeerNode as u8
    }) {
        return Err(Reason::DropIpipUnknownPeer);
    }
    let outer_ecn = outer.tos & 3;

    // The inner header.
    if !ensure_linear(ctx, ETH_LEN + IP_LEN + IP_LEN) {
        return Err(Reason::DropBadInnerLength);
    }
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN + IP_LEN) else {
        return Err(Reason::DropBadInnerLength);
    };
    // SAFETY: bounds-checked above.
    let inner = unsafe { &*inner };
    if (inner.vihl >> 4) != 4 || ihl_bytes(inner) < IP_LEN {
        return Err(Reason::DropBadInnerHeader);
    }
    if !ipv4_sane(inner, outer_tot - IP_LEN) {
        return Err(Reason::DropBadInnerLength);
    }
    if !ipv4_checksum_ok(ctx, inner, ETH_LEN + IP_LEN) {
        return Err(Reason::DropBadInnerChecksum);
    }
    let code = ecn::decap_code(inner.tos, outer_ecn);
    if code & ecn::DECAP_DROP != 0 {
        return Err(Reason::DropEcnCeNotEct);
    }
    let unused = code & ecn::DECAP_UNUSED != 0;
    let new_tos = (inner.tos & !3) | (code & 3);
    let ttl = inner.ttl;

    // Decide on the inner destination.
    let rt = route(cfg, inner.dst_addr);
    let kind = match rt {
        Some(rt) => RouteKind::from_u8(rt.kind),
        None => None,
    };
    if kind == Some(RouteKind::OwnBlock) {
        return Err(Reason::DropBlackhole);
    }

    // Act: decapsulate, then deliver or hand to the kernel.
    if unused {
        record(ctx, uplink, HOOK, Reason::EcnUnusedCombination, len);
    }
    let flags = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;
    crate::cost::note(crate::cost::Item::AdjustRoom);
    if let Err(e) = ctx.adjust_room(-(IP_LEN as i32), BPF_ADJ_ROOM_MAC, flags) {
        aya_log_ebpf::warn!(ctx, "decap: bpf_skb_adjust_room refused: {}", e);
        return Err(Reason::DropDecapFailed);
    }
    if !ensure_linear(ctx, ETH_LEN + IP_LEN) {
        return Err(Reason::DropHelperFailed);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Err(Reason::DropHelperFailed);
    };
    // SAFETY: bounds-checked above.
    let ip = unsafe {
        if (*ip).tos != new_tos {
            set_tos(&mut *ip, new_tos);
        }
        &*ip
    };
    match (kind, rt) {
        (Some(RouteKind::LocalEndpoint), Some(_)) if ttl <= 1 => {
            up_the_tunnel(ctx, cfg, HOOK, Reason::DecapTtlExpired, len)
        }
        (Some(RouteKind::LocalEndpoint), Some(_)) if cfg.flags & NODE_F_SLOW_PATH != 0 => {
            up_the_tunnel(ctx, cfg, HOOK, Reason::DecapSlowPath, len)
        }
        (Some(RouteKind::LocalEndpoint), Some(_))
            if kernel_flow::is_kernel_flow(ctx, ip, ETH_LEN) =>
        {
            up_the_tunnel(ctx, cfg, HOOK, Reason::DecapKernelFlow, len)
        }
        (Some(RouteKind::LocalEndpoint), Some(rt)) => {
            to_pod(ctx, HOOK, Reason::DecapDeliver, rt, len)
        }
        _ => {
            // For the node itself (a NodePort, a hostPort): the kernel may translate it to a
            // local pod, whose replies must come back through it.
            kernel_flow::remember(ctx, ip, ETH_LEN, HOOK, uplink);
            up_the_tunnel(ctx, cfg, HOOK, Reason::DecapToKernel, len)
        }
    }
}

/// Plain IPv4 from the wire. In cross-subnet mode, same-subnet nodes send pod traffic
/// unencapsulated: deliver it to the local pod directly.
#[inline(always)]
fn plain(ctx: &TcContext, cfg: &NodeConfig, ip: &Ipv4Hdr, len: u32) -> Verdict {
    if cfg.mode == Mode::CrossSubnet as u8
        && let Some(rt) = route(cfg, ip.dst_addr)
    {
        match RouteKind::from_u8(rt.kind) {
            Some(RouteKind::LocalEndpoint) => {
                if !ipv4_sane(ip, len as usize - ETH_LEN) {
                    return Err(Reason::DropBadIpHeader);
                }
                if !ipv4_checksum_ok(ctx, ip, ETH_LEN) {
                    return Err(Reason::DropBadIpChecksum);
                }
                if ip.ttl <= 1 {
                    return pass(ctx, HOOK, Reason::PassTtlExpired);
                }
                if cfg.flags & NODE_F_SLOW_PATH != 0 {
                    return pass(ctx, HOOK, Reason::PassSlowPath);
                }
                if kernel_flow::is_kernel_flow(ctx, ip, ETH_LEN) {
                    return pass(ctx, HOOK, Reason::PassKernelFlow);
                }
                return to_pod(ctx, HOOK, Reason::DeliverFromUplink, rt, len);
            }
            Some(RouteKind::OwnBlock) => return Err(Reason::DropBlackhole),
            _ => {}
        }
    }
    // The node's own traffic. From a pod or a peer node it may be translated to a local pod
    // (a NodePort, a hostPort), whose replies would otherwise take the fast path back.
    if matches!(
        route(cfg, ip.src_addr).and_then(|r| RouteKind::from_u8(r.kind)),
        Some(RouteKind::RemoteBlock | RouteKind::PeerNode)
    ) {
        kernel_flow::remember(ctx, ip, ETH_LEN, HOOK, ifindex(ctx));
    }
    pass(ctx, HOOK, Reason::PassToKernel)
}
