//! ipipd's data plane: the Calico IPIP route table, as tc and XDP programs driven by maps.
//!
//! | hook          | attached to                      | replaces                                    |
//! |---------------|----------------------------------|---------------------------------------------|
//! | `from_pod`    | tc ingress, each pod's host veth | `<pod>/32 dev cali…`, `<block> via … tunl0`, proxy ARP, the blackhole |
//! | `from_uplink` | tc ingress, the uplink           | `tunl0` receive, `<pod>/32 dev cali…`      |
//! | `to_tunnel`   | tc egress, the tunnel device     | `tunl0` itself: `<block> via … dev tunl0` for host-originated and slow-path packets |
//! | `xdp_uplink`  | XDP, the uplink (optional)       | an early drop of tunnel traffic from non-peers (`xdp_uplink_skb` in generic mode) |
//!
//! Each hook lives in its own module and reads parse → decide → act.
#![no_std]
#![no_main]
// Inline assembly for the one atomic add (see act::kernel_flow), as aya-ebpf itself uses it.
#![expect(
    unstable_features,
    reason = "asm_experimental_arch: BPF inline assembly"
)]
#![feature(asm_experimental_arch)]

mod act;
mod cost;
mod from_pod;
mod from_uplink;
mod maps;
mod monitor;
mod packet;
mod to_tunnel;
mod xdp_uplink;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// tc ingress on each local pod's host-side veth: packets leaving a pod.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    from_pod::run(&ctx)
}

/// tc ingress on the uplink: packets arriving from other nodes.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    from_uplink::run(&ctx)
}

/// tc egress on the tunnel device: packets the kernel routes toward remote blocks.
#[classifier]
pub fn to_tunnel(ctx: TcContext) -> i32 {
    to_tunnel::run(&ctx)
}

/// XDP on the uplink (optional): early drop of tunnel traffic from non-peers and of malformed
/// outer headers. Reads only the linear head; from_uplink keeps every check.
#[xdp(frags)]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    xdp_uplink::run(&ctx)
}

/// xdp_uplink for generic (skb) mode: the same, without multi-buffer support (see
/// `program_names::XDP_UPLINK_SKB`).
#[xdp]
pub fn xdp_uplink_skb(ctx: XdpContext) -> u32 {
    xdp_uplink::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: bpf_fib_lookup, bpf_redirect_neigh and bpf_redirect_peer are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
