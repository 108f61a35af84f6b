//! to_uplink — tc egress on the uplink.
//!
//! Packets the kernel itself sends toward a remote block: host-originated traffic to pods on
//! other nodes, and what the slow path forwards (fragments of DF-clear packets that were too big
//! for the tunnel, TTL-expired answers). Calico sends these into `tunl0`; here they leave the
//! uplink encapsulated, with L2 set for the outer destination. The inner header is unchanged.

use aya_ebpf::programs::TcContext;
use dataplane_common::{Hook, ROUTE_F_ENCAP, Reason, RouteKind};

use crate::{
    act::{self, drop, pass},
    maps::{config, route},
    packet::{ETH_LEN, IPPROTO_IPIP, L3, TC_OK, ipv4_sane, parse_l3},
};

const HOOK: Hook = Hook::ToUplink;

pub fn run(ctx: &TcContext) -> i32 {
    let ip = match parse_l3(ctx) {
        L3::Ipv4(ip) => ip,
        L3::Truncated => return drop(ctx, HOOK, Reason::DropTruncated),
        L3::Arp | L3::Other => return pass(ctx, HOOK, Reason::PassNotIpv4),
    };
    // Already a tunnel packet (ours, from from_pod, on its second pass here; or the host's
    // own): never encapsulated twice. Decided before anything else is read.
    if ip.proto == IPPROTO_IPIP {
        return pass(ctx, HOOK, Reason::PassIpip);
    }
    let Some(cfg) = config() else {
        return TC_OK;
    };
    let Some(rt) = route(cfg, ip.dst_addr) else {
        return pass(ctx, HOOK, Reason::PassToKernel);
    };
    // A peer node's own address is tunnelled only for pod sources (so pod addresses never appear
    // bare on the underlay); the node's own traffic to its peers stays plain.
    let tunnelled = rt.kind == RouteKind::RemoteBlock as u8
        || (rt.kind == RouteKind::PeerNode as u8 && ip.src_addr != cfg.node_ip);
    if !tunnelled || rt.flags & ROUTE_F_ENCAP == 0 {
        return pass(ctx, HOOK, Reason::PassToKernel);
    }
    if !ipv4_sane(ip, ctx.len() as usize - ETH_LEN) {
        return drop(ctx, HOOK, Reason::DropBadIpHeader);
    }
    if act::too_big_for_tunnel(ctx, cfg, ip) {
        return drop(ctx, HOOK, Reason::DropTooBigEgress);
    }
    act::encap_and_send(ctx, cfg, HOOK, ip, &rt, false)
}
