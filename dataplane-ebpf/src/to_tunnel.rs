//! to_tunnel — tc egress on the tunnel device, ipipd's stand-in for `tunl0`.
//!
//! The kernel routes into it what it sends itself toward remote blocks: host-originated traffic
//! to pods on other nodes, and what the slow path forwards (fragments of DF-clear packets that
//! were too big for the tunnel, answers to pods). Pods' own packets never come here (from_pod
//! encapsulates them and sends them straight out the uplink), so the uplink's egress runs no
//! program of ipipd's. Nothing leaves the device itself: a packet is encapsulated (or sent on
//! plain) out the uplink, or dropped.
//!
//! | destination (the kernel's route)        | here                                        |
//! |-----------------------------------------|---------------------------------------------|
//! | remote block (`<block> dev <tunnel>`)   | encap, out the uplink                       |
//! | peer node, from a pod's address         | encap, out the uplink                       |
//! | peer node, from the node's own address  | plain, out the uplink (host_to_peer)        |
//! | anything else                           | drop_not_tunnelled                          |
//!
//! The peer's next hop must be resolved (its MAC in the route, or the kernel's neighbour
//! table): these packets carry the kernel's route through this device, so the neighbour's
//! queue would re-send them with this device's L2. Until the daemon has it resolved, they are
//! dropped (drop_next_hop_unresolved).

use aya_ebpf::programs::TcContext;
use dataplane_common::{Hook, ROUTE_F_ENCAP, Reason, RouteKind};

use crate::{
    act::{
        encap::{encap_and_send, too_big_for_tunnel},
        next_hop::{Forwarding, forward_plain},
        verdict::{Verdict, drop},
    },
    maps::{config, route},
    packet::{ETH_LEN, L3, ipv4_checksum_ok, ipv4_sane, parse_l3},
};

const HOOK: Hook = Hook::ToTunnel;

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
    // Parse.
    let ip = match parse_l3(ctx) {
        L3::Ipv4(ip) => ip,
        L3::Truncated => return Err(Reason::DropTruncated),
        L3::Tagged => return Err(Reason::DropVlanTagged),
        L3::Arp | L3::Other => return Err(Reason::DropNotTunnelled),
    };
    let cfg = config().ok_or(Reason::DropNotTunnelled)?;
    if !ipv4_sane(ip, len as usize - ETH_LEN) {
        return Err(Reason::DropBadIpHeader);
    }
    // The kernel's own packets carry good checksums; anything else sent past it (a raw
    // socket on the device) is not sent on with a bad one.
    if !ipv4_checksum_ok(ctx, ip, ETH_LEN) {
        return Err(Reason::DropBadIpChecksum);
    }

    // Decide: the route that sent it here, as the routes trie holds it.
    let rt = route(cfg, ip.dst_addr).ok_or(Reason::DropNotTunnelled)?;
    if rt.flags & ROUTE_F_ENCAP == 0 {
        return Err(Reason::DropNotTunnelled);
    }
    match RouteKind::from_u8(rt.kind) {
        Some(RouteKind::RemoteBlock) => {}
        // A peer node's own address is tunnelled only for pod sources (so pod addresses never
        // appear bare on the underlay); the node's own traffic to its peers stays plain.
        Some(RouteKind::PeerNode) if ip.src_addr == cfg.node_ip => {
            return forward_plain(
                ctx,
                cfg,
                HOOK,
                rt,
                Reason::HostToPeer,
                Forwarding::KERNEL_ROUTED,
            );
        }
        Some(RouteKind::PeerNode) => {}
        _ => return Err(Reason::DropNotTunnelled),
    }
    // The device's MTU is the tunnel's: only a packet sent past it (a raw socket, say) is larger.
    if too_big_for_tunnel(ctx, cfg, ip) {
        return Err(Reason::DropTooBigEgress);
    }

    // Act: the kernel already routed it (and counted the hop): the inner TTL stays.
    encap_and_send(ctx, cfg, HOOK, ip, rt, Forwarding::KERNEL_ROUTED)
}
