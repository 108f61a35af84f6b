//! from_pod — tc ingress on a local pod's host-side veth.
//!
//! The route table it replaces, for a packet a pod sends:
//!
//! | destination                    | kernel route                         | here                                   |
//! |--------------------------------|--------------------------------------|----------------------------------------|
//! | ARP for any address but its own | proxy_arp on cali*                  | ARP reply with the host veth's MAC     |
//! | source not the pod's own       | (rp_filter / Calico iptables)        | drop_spoofed_source                    |
//! | a VLAN-tagged frame            | (not forwarded)                      | drop_vlan_tagged                       |
//! | a bad IPv4 header or checksum  | (ip_rcv drops it)                    | drop_bad_ip_header / _checksum         |
//! | (a veth without an endpoint)   |                                      | drop_unknown_endpoint                  |
//! | a pod on this node             | `<pod>/32 dev cali…`                 | TTL-1, MACs, redirect_peer             |
//! | own block, no pod              | `blackhole <block>`                  | drop_blackhole                         |
//! | remote block / peer node IP    | `<block> via <node> dev tunl0`       | encap, out the uplink                  |
//! | same-subnet node (cross-subnet)| `<block> via <node> dev eth0`        | TTL-1, routed to the node              |
//! | a reply of a flow the kernel handles (a Service, a NAT) | netfilter, then the routes | pass_kernel_flow          |
//! | anything else                  | the host's routes                    | pass_to_kernel, its flow recorded      |
//! | (`fast_path = false`)          | the route table, FORWARD             | pass_slow_path                         |

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use dataplane_common::{
    Endpoint, Hook, Mode, NODE_F_SLOW_PATH, ROUTE_F_ENCAP, ROUTE_F_SAME_SUBNET, Reason, RouteKind,
};

use crate::{
    act::{
        deliver,
        encap::{encap_and_send, too_big_for_tunnel},
        kernel_flow,
        next_hop::{Forwarding, forward_plain},
        verdict::{Verdict, drop, pass, record},
    },
    maps::{ENDPOINTS, config, route, source_ok},
    packet::{
        ArpIpv4, ETH_LEN, EthHdr, L3, TC_OK, ensure_linear, ifindex, ipv4_checksum_ok, ipv4_sane,
        parse_l3, ptr_at, set_mac,
    },
};

const HOOK: Hook = Hook::FromPod;

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
    let Some(cfg) = config() else {
        return Ok(TC_OK);
    };
    let veth = ifindex(ctx);
    let ip = match parse_l3(ctx) {
        L3::Ipv4(ip) => ip,
        other => {
            // The rarer kinds need the endpoint entry itself (or its absence).
            let ep = endpoint(veth).ok_or(Reason::DropUnknownEndpoint)?;
            return match other {
                L3::Arp => arp(ctx, &ep),
                L3::Truncated => Err(Reason::DropTruncated),
                L3::Tagged => Err(Reason::DropVlanTagged),
                _ => pass(ctx, HOOK, Reason::PassNotIpv4),
            };
        }
    };
    // The source must be this veth's pod. Its /32 route says so (LocalEndpoint on this veth),
    // found through the route cache like the destination's, and remembered in the veth's
    // counter row until the routes change; only when it does not is the endpoint entry read,
    // to tell an unknown veth from a spoofed source (or to accept a pod whose route is not
    // written yet).
    if !source_ok(cfg, veth, ip.src_addr, |rt| {
        rt.kind == RouteKind::LocalEndpoint as u8 && rt.ifindex == veth
    }) {
        let ep = endpoint(veth).ok_or(Reason::DropUnknownEndpoint)?;
        if ep.pod_ip != ip.src_addr {
            return Err(Reason::DropSpoofedSource);
        }
    }
    if !ipv4_sane(ip, len as usize - ETH_LEN) {
        return Err(Reason::DropBadIpHeader);
    }
    if !ipv4_checksum_ok(ctx, ip, ETH_LEN) {
        return Err(Reason::DropBadIpChecksum);
    }
    if cfg.flags & NODE_F_SLOW_PATH != 0 {
        return pass(ctx, HOOK, Reason::PassSlowPath);
    }

    // Decide: the longest prefix that holds the destination, as the route table would.
    let Some(rt) = route(cfg, ip.dst_addr) else {
        return to_kernel(ctx, ip, veth);
    };
    let next = match RouteKind::from_u8(rt.kind) {
        Some(RouteKind::LocalEndpoint) => Next::Deliver,
        Some(RouteKind::OwnBlock) => return Err(Reason::DropBlackhole),
        Some(RouteKind::RemoteBlock | RouteKind::PeerNode) if rt.flags & ROUTE_F_ENCAP != 0 => {
            Next::Encap
        }
        Some(RouteKind::RemoteBlock | RouteKind::PeerNode)
            if rt.flags & ROUTE_F_SAME_SUBNET != 0 && cfg.mode == Mode::CrossSubnet as u8 =>
        {
            Next::Forward
        }
        _ => return to_kernel(ctx, ip, veth),
    };
    // Every forwarding decision costs a hop: an expiring packet is the kernel's (time exceeded).
    if ip.ttl <= 1 {
        return pass(ctx, HOOK, Reason::PassTtlExpired);
    }
    // A reply of a flow the kernel handles: its conntrack entry must see it.
    if kernel_flow::is_kernel_flow(ctx, ip, ETH_LEN) {
        return pass(ctx, HOOK, Reason::PassKernelFlow);
    }

    // Act.
    match next {
        Next::Deliver => deliver::to_pod(ctx, HOOK, Reason::DeliverPodToPod, rt, len),
        Next::Encap if too_big_for_tunnel(ctx, cfg, ip) => pass(ctx, HOOK, Reason::PassTooBig),
        Next::Encap => encap_and_send(ctx, cfg, HOOK, ip, rt, Forwarding::FOR_POD),
        Next::Forward => forward_plain(
            ctx,
            cfg,
            HOOK,
            rt,
            Reason::ForwardSameSubnet,
            Forwarding::FOR_POD,
        ),
    }
}

/// What the route table leaves to the host's routes (a Service VIP, the node, the outside):
/// the kernel takes it, and its flow is recorded, so that its replies reach the kernel too.
#[inline(always)]
fn to_kernel(ctx: &TcContext, ip: &crate::packet::Ipv4Hdr, veth: u32) -> Verdict {
    kernel_flow::remember(ctx, ip, ETH_LEN, HOOK, veth);
    pass(ctx, HOOK, Reason::PassToKernel)
}

/// The endpoint entry of host-side veth `veth`.
#[inline(always)]
fn endpoint(veth: u32) -> Option<Endpoint> {
    crate::cost::note(crate::cost::Item::Endpoints);
    // SAFETY: the value is copied out at once; user space replaces entries whole.
    unsafe { ENDPOINTS.get(veth) }.copied()
}

/// Where a pod's packet goes, once its route is known.
enum Next {
    /// To a pod on this node.
    Deliver,
    /// Over IPIP to the owning node.
    Encap,
    /// Routed to a same-subnet node (cross-subnet mode).
    Forward,
}

const ARP_REQUEST: [u8; 2] = 1u16.to_be_bytes();
const ARP_REPLY: [u8; 2] = 2u16.to_be_bytes();
const ARP_HTYPE_ETHER: [u8; 2] = 1u16.to_be_bytes();
const ARP_PTYPE_IPV4: [u8; 2] = 0x0800u16.to_be_bytes();

/// A pod's ARP: requests for any address but the pod's own are answered with the host-side
/// veth's MAC (the pods' gateway 169.254.1.1 included), sent straight back into the pod.
fn arp(ctx: &TcContext, ep: &Endpoint) -> Verdict {
    if !ensure_linear(ctx, ETH_LEN + core::mem::size_of::<ArpIpv4>()) {
        return Err(Reason::DropTruncated);
    }
    let (Some(eth), Some(arp)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<ArpIpv4>(ctx, ETH_LEN)) else {
        return Err(Reason::DropTruncated);
    };
    // SAFETY: both bounds-checked above.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };
    if arp.htype != ARP_HTYPE_ETHER
        || arp.ptype != ARP_PTYPE_IPV4
        || arp.hlen != 6
        || arp.plen != 4
        || arp.oper != ARP_REQUEST
        || arp.tpa == ep.pod_ip
    {
        return pass(ctx, HOOK, Reason::ArpPass);
    }
    // A probe (sender 0.0.0.0) is fine; any other sender address must be the pod's.
    if arp.spa != ep.pod_ip && arp.spa != [0; 4] {
        return Err(Reason::DropArpSpoofed);
    }
    let asker_mac = arp.sha;
    let asker_ip = arp.spa;
    let wanted = arp.tpa;
    arp.oper = ARP_REPLY;
    set_mac(&mut arp.sha, &ep.host_mac);
    arp.spa = wanted;
    arp.tha = asker_mac;
    arp.tpa = asker_ip;
    eth.dst_addr = asker_mac;
    set_mac(&mut eth.src_addr, &ep.host_mac);
    let ifindex = ifindex(ctx);
    record(ctx, ifindex, HOOK, Reason::ArpReply, ctx.len());
    // Out of the host-side veth's egress, that is, into the pod.
    crate::cost::note(crate::cost::Item::Redirect);
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) as i32 })
}
