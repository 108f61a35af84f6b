//! Delivery on this node: to a local pod through its veth (`<pod>/32 dev cali…`), or to the
//! kernel as received on the tunnel device (what `tunl0` does with a decapsulated packet).

use aya_ebpf::{
    bindings::BPF_F_INGRESS,
    helpers::{bpf_redirect, bpf_redirect_peer},
    programs::TcContext,
};
use dataplane_common::{Hook, NodeConfig, Reason, RouteValue};

use super::verdict::{Verdict, record};
use crate::packet::{ETH_LEN, EthHdr, Ipv4Hdr, TC_OK, dec_ttl, ifindex, ptr_at, set_mac, set_macs};

const PACKET_HOST: u32 = 0;

/// Local delivery of the IPv4 packet at ETH_LEN to the pod of `ep` (a LocalEndpoint route):
/// TTL - 1, MACs rewritten, `bpf_redirect_peer` into the pod. The caller has checked TTL > 1
/// and that the IPv4 header is linear. Counted on the destination veth under `reason`, with the
/// packet's length as the hook received it (`bytes`).
#[inline(always)]
pub fn to_pod(ctx: &TcContext, hook: Hook, reason: Reason, ep: &RouteValue, bytes: u32) -> Verdict {
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)) else {
        return Err(Reason::DropHelperFailed);
    };
    // SAFETY: both pointers were bounds-checked against data_end just above.
    unsafe {
        dec_ttl(&mut *ip);
        set_macs(&mut *eth, ep);
        // Packets from a tunnel or the wire may carry PACKET_OTHERHOST; kernels before 6.15 do not
        // reset it on redirect_peer.
        if (*ctx.skb.skb).pkt_type != PACKET_HOST {
            crate::cost::note(crate::cost::Item::ChangeType);
            let _ = ctx.change_type(PACKET_HOST);
        }
    }
    record(ctx, ep.ifindex, hook, reason, bytes);
    crate::cost::note(crate::cost::Item::RedirectPeer);
    // SAFETY: helper call with valid arguments; flags must be 0.
    Ok(unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 })
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
) -> Verdict {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Err(Reason::DropHelperFailed);
    };
    record(ctx, ifindex(ctx), hook, reason, bytes);
    let tunnel = cfg.tunnel_ifindex;
    if tunnel == 0 {
        return Ok(TC_OK);
    }
    // SAFETY: bounds-checked above.
    unsafe { set_mac(&mut (*eth).dst_addr, &cfg.tunnel_mac) };
    crate::cost::note(crate::cost::Item::Redirect);
    // SAFETY: helper call.
    Ok(unsafe { bpf_redirect(tunnel, BPF_F_INGRESS as u64) as i32 })
}
