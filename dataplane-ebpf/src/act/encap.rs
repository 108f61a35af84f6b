//! Encapsulation: `<block> via <node> dev tunl0` — an outer IPv4 header (RFC 2003) toward the
//! owning node, sent out the uplink to its next hop.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_ADJ_ROOM_NO_CSUM_RESET,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_get_smp_processor_id,
    programs::TcContext,
};
use dataplane_common::{Hook, NodeConfig, Reason, RouteValue, csum};

use super::{
    next_hop::{Forwarding, next_hop, send},
    verdict::{Verdict, record},
};
use crate::{
    maps::IP_ID,
    packet::{
        ETH_LEN, IP_DF, IP_LEN, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, dec_ttl,
        ensure_linear, frag_field, gso_size, ifindex, ihl_bytes, ip_words, ptr_at, tot_len,
    },
};

/// The outer header's TTL.
const OUTER_TTL: u8 = 64;
/// `bpf_skb_adjust_room`'s answer for an skb already marked encapsulated.
const EALREADY: i64 = -114;

/// Whether the packet needs the kernel's fragmentation-needed / fragmentation before it can be
/// encapsulated: a non-GSO packet whose outer length would exceed the underlay MTU.
#[inline(always)]
pub fn too_big_for_tunnel(ctx: &TcContext, cfg: &NodeConfig, ip: &Ipv4Hdr) -> bool {
    gso_size(ctx) == 0 && tot_len(ip) + IP_LEN > cfg.mtu as usize
}

/// Encapsulates the IPv4 packet at ETH_LEN in IP-in-IP toward the node of route `rt` and sends
/// it out the uplink, as `how` says (see [`Forwarding`]). The caller has checked TTL and size.
#[inline(always)]
pub fn encap_and_send(
    ctx: &TcContext,
    cfg: &NodeConfig,
    hook: Hook,
    ip: &Ipv4Hdr,
    rt: &RouteValue,
    how: Forwarding,
) -> Verdict {
    let node_ip = rt.node_ip;
    let len = ctx.len();
    // What the outer header copies, read before the packet changes (`ip` is invalid after).
    let (inner_tot, tos, frags, ihl, proto) =
        (tot_len(ip), ip.tos, frag_field(ip), ihl_bytes(ip), ip.proto);

    // L2 toward the peer node first: a node without a route to its peer (or, by `how`'s
    // policy, without its MAC yet) drops the packet unmodified instead of sending it half-built.
    let nh = next_hop(ctx, cfg, rt, how.unresolved)?;

    // FIXED_GSO only when the segments still fit once the outer header is added; otherwise the
    // kernel lowers gso_size by 20.
    let gso = gso_size(ctx) as usize;
    let mut flags = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;
    if gso != 0 && gso + inner_headers_len(ctx, ihl, proto) + IP_LEN <= cfg.mtu as usize {
        flags |= BPF_F_ADJ_ROOM_FIXED_GSO as u64;
    }
    crate::cost::note(crate::cost::Item::AdjustRoom);
    let made = match ctx.adjust_room(IP_LEN as i32, BPF_ADJ_ROOM_MAC, flags) {
        // An skb still marked encapsulated by the decapsulation that brought it to this node
        // (the kernel routes a decapsulated packet back into the tunnel device: a NodePort's
        // backend on a third node). The mark's inner header offsets point at its IPv4 header,
        // which is the inner one again once the outer is in front: the room is made without
        // marking it anew.
        Err(EALREADY) => {
            crate::cost::note(crate::cost::Item::AdjustRoom);
            ctx.adjust_room(
                IP_LEN as i32,
                BPF_ADJ_ROOM_MAC,
                flags & !(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64),
            )
        }
        other => other,
    };
    if let Err(e) = made {
        // Rare (a GSO skb the kernel cannot take, say): worth a line in the daemon's log.
        aya_log_ebpf::warn!(ctx, "encap: bpf_skb_adjust_room refused: {}", e);
        return Err(Reason::DropEncapFailed);
    }

    // From here on the packet is modified: every failure is a drop.
    if !ensure_linear(ctx, ETH_LEN + IP_LEN + IP_LEN) {
        return Err(Reason::DropHelperFailed);
    }
    let (Some(outer), Some(inner)) = (
        ptr_at::<Ipv4Hdr>(ctx, ETH_LEN),
        ptr_at::<Ipv4Hdr>(ctx, ETH_LEN + IP_LEN),
    ) else {
        return Err(Reason::DropHelperFailed);
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
        if how.dec_ttl {
            dec_ttl(&mut *inner);
        }
    }
    record(ctx, ifindex(ctx), hook, Reason::Encap, len);
    send(ctx, rt, &nh)
}

/// The next outer IPv4 Identification for a DF-clear packet: a per-CPU counter with the CPU
/// number, bit-reversed, in the high bits, so CPUs do not share IDs until a counter wraps into
/// another CPU's range.
#[inline(always)]
fn next_ip_id() -> u16 {
    crate::cost::note(crate::cost::Item::SmpProcessorId);
    // SAFETY: helper call without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u16;
    crate::cost::note(crate::cost::Item::IpId);
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
            let copied = || {
                crate::cost::note(crate::cost::Item::LoadBytes);
                ctx.load::<u8>(ETH_LEN + ihl + 12).ok()
            };
            match direct.or_else(copied) {
                Some(doff) => ihl + (((doff >> 4) as usize) << 2),
                None => ihl + 60,
            }
        }
        IPPROTO_UDP => ihl + 8,
        _ => ihl,
    }
}
