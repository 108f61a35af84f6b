//! What a packet costs in map accesses and helper calls (see dataplane-common's `cost`):
//! counted only when the programs are built with the `cost` feature, as the bench builds them
//! to print each path's. In ipipd's build [`note`] is nothing at all.

pub use dataplane_common::cost::Item;

#[cfg(feature = "cost")]
mod counted {
    use aya_ebpf::{macros::map, maps::PerCpuArray};
    use dataplane_common::cost::NAMES;

    #[map(name = "ipipd_cost")]
    static COST: PerCpuArray<u64> = PerCpuArray::with_max_entries(NAMES.len() as u32, 0);

    #[inline(always)]
    pub fn note(item: super::Item) {
        if let Some(n) = COST.get_ptr_mut(item as u32) {
            // SAFETY: per-CPU slot, only this CPU writes it.
            unsafe { *n += 1 };
        }
    }
}

#[cfg(feature = "cost")]
pub use counted::note;

/// Counts one `item` (the `cost` build only).
#[cfg(not(feature = "cost"))]
#[inline(always)]
pub fn note(_item: Item) {}
