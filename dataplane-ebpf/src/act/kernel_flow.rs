//! Flows the kernel handles. The route table ipipd replaces sends every packet through the
//! node's netfilter; the fast path does not. A pod's packet it hands to the kernel (a Service
//! VIP, a node address, the world outside) may be translated there — kube-proxy's DNAT in any
//! of its modes, a masquerade, a hostPort — and conntrack can only reverse that translation
//! if the replies pass it too. So every hook that hands a packet to the kernel records the
//! end its replies will be addressed to (its source address, port and protocol) in an LRU
//! map, and every fast path looks up the end it is sending to before it delivers,
//! encapsulates or forwards: a hit goes to the kernel instead, as the route table would
//! have sent it. A false hit (a port reused for a flow the kernel did not translate) only
//! costs that flow the fast path.
//!
//! A packet to an end the map does not hold (nearly every one the fast path sees) is
//! remembered per CPU as such, under the map's generation, which every write to the map raises
//! (see [`dataplane_common::NoFlowCache`]): the next packet to that end reads one slot instead
//! of calling into the kernel's hash-map code.
//!
//! The kernel's own flow table cannot be read from here: aya 0.14 emits no kfunc calls
//! (`bpf_skb_ct_lookup`). See the README's architecture section for the designs weighed.

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use dataplane_common::{
    FlowKey, FlowValue, Hook, NO_FLOW_SLOTS, NoFlowSlot, Reason, no_flow_slot, no_flow_tag,
};

use crate::{
    maps::{KERNEL_FLOWS, KERNEL_FLOWS_GEN, KERNEL_FLOWS_RECORDED, NO_FLOW_CACHE, count},
    packet::{IP_MF_OFFSET, Ipv4Hdr, frag_field, ihl_bytes, ptr_at},
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// Which end of a packet.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// The key of one end of the IPv4 packet whose header is `ip` at `off`: its address, and its
/// port for TCP, UDP and SCTP (read in place when linear, else with `bpf_skb_load_bytes`).
/// None for a fragment (no ports, or not in every piece) and when the ports cannot be read.
#[inline(always)]
fn key(ctx: &TcContext, ip: &Ipv4Hdr, off: usize, end: End) -> Option<FlowKey> {
    if frag_field(ip) & IP_MF_OFFSET != 0 {
        return None;
    }
    let (addr, pick) = match end {
        End::Source => (ip.src_addr, 0),
        End::Destination => (ip.dst_addr, 2),
    };
    let proto = ip.proto;
    let port = match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let at = off + ihl_bytes(ip);
            let ports = match ptr_at::<[u8; 4]>(ctx, at) {
                // SAFETY: bounds-checked against data_end.
                Some(p) => unsafe { *p },
                None => {
                    let mut p = [0u8; 4];
                    crate::cost::note(crate::cost::Item::LoadBytes);
                    // SAFETY: helper call into a 4-byte stack buffer; packet pointers stay valid.
                    let rc = unsafe {
                        bpf_skb_load_bytes(
                            ctx.skb.skb as *const _,
                            at as u32,
                            p.as_mut_ptr() as *mut _,
                            4,
                        )
                    };
                    if rc != 0 {
                        return None;
                    }
                    p
                }
            };
            [ports[pick], ports[pick + 1]]
        }
        _ => [0; 2],
    };
    Some(FlowKey {
        addr,
        port,
        proto,
        _pad: 0,
    })
}

/// Whether the packet at `off` is addressed to an end of a flow the kernel handles, so that
/// the kernel must see it. A fragment is the kernel's too: its pieces do not all carry ports,
/// and conntrack reassembles them.
#[inline(always)]
pub fn is_kernel_flow(ctx: &TcContext, ip: &Ipv4Hdr, off: usize) -> bool {
    let Some(k) = key(ctx, ip, off, End::Destination) else {
        return true;
    };
    // The generation first: an answer read from the map under it is never newer than it.
    let gen_now = flows_gen();
    let tag = no_flow_tag(&k);
    let slot = no_flow_slot_of(tag);
    if let Some(s) = &slot
        && s.tag == tag
        && s.flows_gen == gen_now
    {
        return false;
    }
    crate::cost::note(crate::cost::Item::KernelFlows);
    // SAFETY: the value is not kept.
    if unsafe { KERNEL_FLOWS.get(k) }.is_some() {
        return true;
    }
    if let Some(s) = slot {
        s.tag = tag;
        s.flows_gen = gen_now;
    }
    false
}

/// The kernel-flows map's generation. Volatile: read once, before the map.
#[inline(always)]
fn flows_gen() -> u64 {
    crate::cost::note(crate::cost::Item::KernelFlowsGen);
    match KERNEL_FLOWS_GEN.get_ptr(0) {
        // SAFETY: a live map value; writers change it atomically.
        Some(g) => unsafe { core::ptr::read_volatile(g) },
        None => 0,
    }
}

/// This CPU's no-flow cache slot of `tag`.
#[inline(always)]
fn no_flow_slot_of(tag: u64) -> Option<&'static mut NoFlowSlot> {
    crate::cost::note(crate::cost::Item::NoFlowCache);
    let cache = NO_FLOW_CACHE.get_ptr_mut(0)?;
    let i = (no_flow_slot(tag) & (NO_FLOW_SLOTS - 1)) as usize;
    // SAFETY: this CPU's cache, `i` masked into its slots; only this CPU writes it, and a
    // program is not migrated.
    Some(unsafe { (*cache).slots.get_unchecked_mut(i) })
}

/// Records the source end of the packet at `off`, which the hook hands to the kernel: its
/// replies are the kernel's. A lookup first (it refreshes the entry's LRU mark): a flow is
/// written once while it stays in the map, counted as `kernel_flow_recorded` on `ifindex`.
#[inline(always)]
pub fn remember(ctx: &TcContext, ip: &Ipv4Hdr, off: usize, hook: Hook, ifindex: u32) {
    let Some(k) = key(ctx, ip, off, End::Source) else {
        return;
    };
    crate::cost::note(crate::cost::Item::KernelFlows);
    // SAFETY: the value is not kept.
    if unsafe { KERNEL_FLOWS.get(k) }.is_some() {
        return;
    }
    let v = FlowValue {
        hook: hook as u8,
        _pad: [0; 3],
    };
    crate::cost::note(crate::cost::Item::KernelFlowsUpdate);
    if KERNEL_FLOWS.insert(k, v, 0).is_ok() {
        count(ifindex, hook, Reason::KernelFlowRecorded, 0);
        crate::cost::note(crate::cost::Item::KernelFlowsRecorded);
        if let Some(n) = KERNEL_FLOWS_RECORDED.get_ptr_mut(0) {
            // SAFETY: per-CPU value, only this CPU writes it.
            unsafe { *n += 1 };
        }
        // After the write: every CPU's "no flow" read before it is stale from here on.
        crate::cost::note(crate::cost::Item::KernelFlowsGen);
        if let Some(g) = KERNEL_FLOWS_GEN.get_ptr_mut(0) {
            // An atomic add (BPF_ATOMIC | BPF_ADD, a locked add on x86-64): core has no atomic
            // read-modify-write for the BPF target.
            // SAFETY: a live, 8-aligned map value that every CPU updates only this way.
            unsafe {
                core::arch::asm!(
                    "lock *(u64 *)({g} + 0) += {one}",
                    g = in(reg) g,
                    one = in(reg) 1u64,
                    options(nostack),
                )
            };
        }
    }
}
