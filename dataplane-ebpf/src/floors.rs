//! Floors for `cargo xtask bench`: programs that do only the helper calls a path cannot avoid,
//! measured with the same method as the path itself. Never loaded by ipipd; embedded in the
//! `ipipd-bench` tool only.
#![no_std]
#![no_main]

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

/// The do-nothing tc program every changed-input path's time is measured against.
#[classifier]
pub fn noop_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// The do-nothing XDP program.
#[xdp]
pub fn noop_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Encapsulation: room for the outer header, and the redirect to the uplink.
#[classifier]
pub fn floor_encap(ctx: TcContext) -> i32 {
    let flags = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;
    if ctx.adjust_room(20, BPF_ADJ_ROOM_MAC, flags).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex(&ctx), 0) as i32 }
}

/// Decapsulation: the outer header removed, and the redirect into the pod.
#[classifier]
pub fn floor_decap(ctx: TcContext) -> i32 {
    let flags = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET) as u64;
    if ctx.adjust_room(-20, BPF_ADJ_ROOM_MAC, flags).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(ifindex(&ctx), 0) as i32 }
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
