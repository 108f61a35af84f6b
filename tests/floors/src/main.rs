//! Floors for `cargo xtask bench`: programs that do only what a path cannot avoid (its helper
//! calls and the header bytes it must write, no lookups, checks or counters), measured with the
//! same method as the path itself: under BPF_PROG_TEST_RUN, and in situ in front of ipipd's
//! programs for one flow. Never loaded by ipipd; embedded in the `ipipd-bench` tool only.
#![no_std]
#![no_main]

// The Internet checksum, shared with ipipd's programs.
use dataplane_common::csum;

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_ADJ_ROOM_NO_CSUM_RESET,
        TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action::XDP_PASS,
    },
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

// What the floors would otherwise look up, set at load time by `ipipd-bench floors` for one
// flow in situ (BPF_PROG_TEST_RUN leaves them 0: the packet goes back where it came from).
#[unsafe(no_mangle)]
static FLOOR_OUT_IFINDEX: u32 = 0;
#[unsafe(no_mangle)]
static FLOOR_SRC_IP: [u8; 4] = [0; 4];
#[unsafe(no_mangle)]
static FLOOR_DST_IP: [u8; 4] = [0; 4];
#[unsafe(no_mangle)]
static FLOOR_SMAC: [u8; 6] = [0; 6];
#[unsafe(no_mangle)]
static FLOOR_DMAC: [u8; 6] = [0; 6];

/// A load-time constant (the verifier sees it as a known scalar).
#[inline(always)]
fn global<T: Copy>(v: &'static T) -> T {
    // SAFETY: reading a static; volatile so that the compiler keeps the load.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn out_ifindex(ctx: &TcContext) -> u32 {
    match global(&FLOOR_OUT_IFINDEX) {
        0 => ifindex(ctx),
        i => i,
    }
}

/// TCX: on to the next program of the chain (ipipd's own, in situ).
const TCX_NEXT: i32 = -1;
const ETH: usize = 14;
const IP: usize = 20;

/// The do-nothing tc program every changed-input path's time is measured against; in situ,
/// what a hook costs that must be passed but has nothing to do (the uplink's egress for packets
/// that are already encapsulated).
#[classifier]
pub fn noop_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// The do-nothing XDP program.
#[xdp]
pub fn noop_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Encapsulation: room for the outer header, the header itself (from load-time constants and
/// the inner header), L2, and the redirect to the uplink. No lookups, checks or counters.
#[classifier]
pub fn floor_encap(ctx: TcContext) -> i32 {
    let mut flags = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;
    // SAFETY: reading a context field.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        flags |= BPF_F_ADJ_ROOM_FIXED_GSO as u64;
    }
    if ctx.adjust_room(IP as i32, BPF_ADJ_ROOM_MAC, flags).is_err() {
        return TC_ACT_SHOT;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH + 2 * IP > end {
        return TC_ACT_SHOT;
    }
    // SAFETY: bounds-checked above; headers are plain bytes.
    unsafe {
        let p = start as *mut u8;
        let inner = p.add(ETH + IP);
        let tot = u16::from_be_bytes([*inner.add(2), *inner.add(3)]).wrapping_add(IP as u16);
        let df = *inner.add(6) & 0x40;
        let (s, d) = (global(&FLOOR_SRC_IP), global(&FLOOR_DST_IP));
        let o = p.add(ETH);
        let hdr: [u8; 20] = [
            0x45,
            *inner.add(1),
            (tot >> 8) as u8,
            tot as u8,
            0,
            0,
            df,
            0,
            64,
            4,
            0,
            0,
            s[0],
            s[1],
            s[2],
            s[3],
            d[0],
            d[1],
            d[2],
            d[3],
        ];
        // Summed as ipipd's programs sum a header (five 32-bit words), so that the floor is no
        // dearer than the path it is the floor of.
        let words: [u32; 5] = core::array::from_fn(|i| {
            u32::from_ne_bytes([hdr[4 * i], hdr[4 * i + 1], hdr[4 * i + 2], hdr[4 * i + 3]])
        });
        core::ptr::copy_nonoverlapping(hdr.as_ptr(), o, 20);
        core::ptr::copy_nonoverlapping(
            csum::ipv4_header(&words).to_ne_bytes().as_ptr(),
            o.add(10),
            2,
        );
        core::ptr::copy_nonoverlapping(global(&FLOOR_DMAC).as_ptr(), p, 6);
        core::ptr::copy_nonoverlapping(global(&FLOOR_SMAC).as_ptr(), p.add(6), 6);
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(out_ifindex(&ctx), 0) as i32 }
}

/// Decapsulation: IPIP only (anything else goes on to the next program), the outer header
/// removed, L2 for the pod, and the redirect into it.
#[classifier]
pub fn floor_decap(ctx: TcContext) -> i32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH + IP > end {
        return TCX_NEXT;
    }
    // SAFETY: bounds-checked above.
    let (ethertype, proto) = unsafe {
        let p = start as *const u8;
        ([*p.add(12), *p.add(13)], *p.add(ETH + 9))
    };
    if ethertype != [0x08, 0x00] || proto != 4 {
        return TCX_NEXT;
    }
    let flags = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;
    if ctx
        .adjust_room(-(IP as i32), BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return TC_ACT_SHOT;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH > end {
        return TC_ACT_SHOT;
    }
    // SAFETY: bounds-checked above.
    unsafe {
        let p = start as *mut u8;
        core::ptr::copy_nonoverlapping(global(&FLOOR_DMAC).as_ptr(), p, 6);
        core::ptr::copy_nonoverlapping(global(&FLOOR_SMAC).as_ptr(), p.add(6), 6);
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(out_ifindex(&ctx), 0) as i32 }
}

/// Local delivery: the redirect into the pod.
#[classifier]
pub fn floor_deliver(ctx: TcContext) -> i32 {
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(ifindex(&ctx), 0) as i32 }
}

/// ARP reply: the redirect back out of the veth it came in on.
#[classifier]
pub fn floor_arp_reply(ctx: TcContext) -> i32 {
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex(&ctx), 0) as i32 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// bpf_redirect_peer is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
