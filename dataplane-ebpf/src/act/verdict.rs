//! Verdicts: a decision counted (and shown to the monitor), and the two ways a hook ends —
//! a tc action, or a drop with its reason.

use aya_ebpf::programs::TcContext;
use dataplane_common::{Hook, Reason};

use crate::{
    maps::count,
    monitor,
    packet::{TC_OK, TC_SHOT, ifindex},
};

/// What an action or a hook's body ends in: `Ok` with the tc action to return (the decision
/// already counted), or `Err` with the reason the packet is dropped, which the hook's one drop
/// exit ([`drop`]) counts.
pub type Verdict = Result<i32, Reason>;

/// Records a decision: its counter, and, while someone watches, a monitor event.
#[inline(always)]
pub fn record(ctx: &TcContext, ifindex: u32, hook: Hook, reason: Reason, bytes: u32) {
    count(ifindex, hook, reason, bytes);
    monitor::tc(ctx, ifindex, hook, reason, bytes);
}

/// Counts the decision on the hook's interface and hands the packet to the kernel unchanged.
#[inline(always)]
pub fn pass(ctx: &TcContext, hook: Hook, reason: Reason) -> Verdict {
    record(ctx, ifindex(ctx), hook, reason, ctx.len());
    Ok(TC_OK)
}

/// A hook's drop exit: counted on the hook's interface with `bytes`, the packet's length as it
/// arrived at the hook (whatever an action had done to it since), then dropped.
#[inline(always)]
pub fn drop(ctx: &TcContext, hook: Hook, reason: Reason, bytes: u32) -> i32 {
    record(ctx, ifindex(ctx), hook, reason, bytes);
    TC_SHOT
}
