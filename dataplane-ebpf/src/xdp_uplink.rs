//! xdp_uplink — optional XDP on the uplink: drop tunnel traffic from non-peers and malformed
//! outer headers before an skb is built. Reads only the linear head and passes everything else;
//! from_uplink repeats every check, so correctness never depends on this program. Only its drops
//! are counted (what it passes is counted by from_uplink).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use dataplane_common::{Hook, Reason, RouteKind};

use crate::{
    maps::{config, count, route},
    packet::{
        ETH_LEN, ETH_P_IP, EthHdr, IP_LEN, IP_MF_OFFSET, IPPROTO_IPIP, Ipv4Hdr, frag_field,
        ihl_bytes, tot_len, xdp_ptr_at,
    },
};

/// The hook's one drop exit, counted with the frame's length.
#[inline(always)]
fn drop(ctx: &XdpContext, reason: Reason, len: u32) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    count(ifindex, Hook::XdpUplink, reason, len);
    crate::monitor::xdp(ctx, ifindex, reason, len);
    xdp_action::XDP_DROP
}

pub fn run(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u32;
    match try_run(ctx) {
        Ok(action) => action,
        Err(reason) => drop(ctx, reason, len),
    }
}

/// The hook's body: the XDP action, or why the frame is dropped.
#[inline(always)]
fn try_run(ctx: &XdpContext) -> Result<u32, Reason> {
    let Some(cfg) = config() else {
        return Ok(xdp_action::XDP_PASS);
    };
    let (Some(eth), Some(ip)) = (
        xdp_ptr_at::<EthHdr>(ctx, 0),
        xdp_ptr_at::<Ipv4Hdr>(ctx, ETH_LEN),
    ) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // SAFETY: both bounds-checked above.
    let (eth, ip) = unsafe { (&*eth, &*ip) };
    if eth.ether_type != ETH_P_IP || ip.proto != IPPROTO_IPIP || ip.dst_addr != cfg.node_ip {
        return Ok(xdp_action::XDP_PASS);
    }
    if (ip.vihl >> 4) != 4 || ihl_bytes(ip) < IP_LEN {
        return Err(Reason::DropBadOuterHeader);
    }
    if tot_len(ip) < IP_LEN + IP_LEN {
        return Err(Reason::DropBadOuterLength);
    }
    if frag_field(ip) & IP_MF_OFFSET != 0 {
        return Err(Reason::DropOuterFragment);
    }
    match route(cfg, ip.src_addr) {
        Some(rt) if rt.kind == RouteKind::PeerNode as u8 => Ok(xdp_action::XDP_PASS),
        _ => Err(Reason::DropIpipUnknownPeer),
    }
}
