//! The decision monitor (`ipipd monitor`): one [`Event`] per decision into a ring buffer, only
//! while someone watches. The mode byte of the config entry is checked first: with the monitor
//! off, a decision costs one load and one compare more.

use aya_ebpf::programs::{TcContext, XdpContext};
use dataplane_common::{Event, Hook, MonitorMode, Reason, Tuple};

use crate::{
    maps::{CONFIG, EVENTS},
    packet::{ETH_LEN, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, xdp_ptr_at},
};

#[inline(always)]
fn wanted(reason: Reason) -> bool {
    crate::cost::note(crate::cost::Item::Config);
    match CONFIG.get(0) {
        Some(c) if c.monitor == MonitorMode::All as u8 => true,
        Some(c) if c.monitor == MonitorMode::Drops as u8 => reason.is_drop(),
        _ => false,
    }
}

/// Bytes copied off the packet onto the stack, 8-byte aligned: the programs are built with
/// misaligned loads allowed (packet and map memory), and the verifier rejects any misaligned
/// stack access, which LLVM would otherwise make of a byte array's wider reads.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Bytes<const N: usize>([u8; N]);

/// The addresses, protocol and ports of the IPv4 header `h` (20 bytes read), with `ports`
/// reading 4 bytes at an offset past the header.
#[inline(always)]
fn tuple(h: &Bytes<20>, ports: impl Fn(usize) -> Option<Bytes<4>>) -> Tuple {
    let h = &h.0;
    let mut t = Tuple::default();
    if h[0] >> 4 != 4 {
        return t;
    }
    t.src = [h[12], h[13], h[14], h[15]];
    t.dst = [h[16], h[17], h[18], h[19]];
    t.proto = h[9];
    t.valid = 1;
    let first_fragment = (h[6] & 0x1f) == 0 && h[7] == 0;
    if first_fragment && (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP) {
        let ihl = ((h[0] & 0x0f) as usize) << 2;
        if let Some(Bytes(p)) = ports(ihl & 0x3c) {
            t.sport = [p[0], p[1]];
            t.dport = [p[2], p[3]];
        }
    }
    t
}

/// Sends one event: the decision, and the frame's EtherType and IPv4 headers (outer, and inner
/// for IPIP) read through `read20` / `read4`, which return the bytes at an offset when the
/// frame has them.
#[inline(always)]
fn emit(
    ifindex: u32,
    hook: Hook,
    reason: Reason,
    len: u32,
    read2: impl Fn(usize) -> Option<Bytes<2>>,
    read20: impl Fn(usize) -> Option<Bytes<20>>,
    read4: impl Fn(usize) -> Option<Bytes<4>>,
) {
    let mut ev = Event {
        ifindex,
        len,
        hook: hook as u8,
        reason: reason as u8,
        ..Default::default()
    };
    if let Some(Bytes(et)) = read2(12) {
        ev.ethertype = et;
        if et == [0x08, 0x00] {
            let at = |base: usize| read20(base).map(|h| tuple(&h, |off| read4(base + off)));
            if let Some(o) = at(ETH_LEN) {
                ev.outer = o;
                if o.proto == IPPROTO_IPIP {
                    ev.inner = at(ETH_LEN + 20).unwrap_or_default();
                }
            }
        }
    }
    crate::cost::note(crate::cost::Item::Events);
    let _ = EVENTS.output::<Event>(&ev, 0);
}

/// A tc hook's decision (the packet as it is when the decision is counted). The check is
/// inlined at each decision; the event itself is one out-of-line subprogram, so that the dozens
/// of decision sites do not each carry a copy of it.
#[inline(always)]
pub fn tc(ctx: &TcContext, ifindex: u32, hook: Hook, reason: Reason, len: u32) {
    if wanted(reason) {
        tc_event(ctx, ifindex, hook, reason, len);
    }
}

#[inline(never)]
fn tc_event(ctx: &TcContext, ifindex: u32, hook: Hook, reason: Reason, len: u32) {
    emit(
        ifindex,
        hook,
        reason,
        len,
        |off| ctx.load(off).ok(),
        |off| ctx.load(off).ok(),
        |off| ctx.load(off).ok(),
    );
}

/// XDP's drops (it passes everything else on to from_uplink). Inline: XDP has few decision
/// sites, and its packet pointers do not survive a subprogram boundary.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, ifindex: u32, reason: Reason, len: u32) {
    if !wanted(reason) {
        return;
    }
    // SAFETY (each read): xdp_ptr_at bounds-checked the bytes against data_end.
    emit(
        ifindex,
        Hook::XdpUplink,
        reason,
        len,
        |off| xdp_ptr_at::<[u8; 2]>(ctx, off).map(|p| Bytes(unsafe { *p })),
        |off| xdp_ptr_at::<[u8; 20]>(ctx, off).map(|p| Bytes(unsafe { *p })),
        |off| xdp_ptr_at::<[u8; 4]>(ctx, off).map(|p| Bytes(unsafe { *p })),
    );
}
