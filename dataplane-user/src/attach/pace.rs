//! Whether a pod interface's `from_pod` goes on a TCX link at once or on a netlink filter
//! first. A TCX attach, and a TCX link's release, each wait for an RCU grace period under the
//! RTNL lock (~13 ms, during which every link, address and route change on the node waits
//! too); a netlink filter waits for none (~1 ms). Pods that come one by one get their TCX link
//! at once. Past [`PER_WINDOW`] attaches in a [`WINDOW`] (a burst: pods created and deleted by
//! the hundred) a pod gets a filter, which moves to a TCX link once it has been there
//! [`PROMOTE_AFTER`] and pods come slower again (a move costs what a TCX attach does): a pod
//! deleted before then never pays a grace period, to attach or to go.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The span over which pod attaches are counted.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Pod attaches (either way) in a [`WINDOW`] before new pods get filters.
pub const PER_WINDOW: usize = 8;

/// How long a filter a burst gave a pod stays one: most pods of a churn are gone by then.
pub const PROMOTE_AFTER: Duration = Duration::from_secs(10);

/// The recent pod attaches the choice is made on.
#[derive(Debug, Default)]
pub struct Pace {
    /// The pod attaches of the last [`WINDOW`], oldest first.
    recent: VecDeque<Instant>,
}

impl Pace {
    /// Whether a pod interface attached at `now` goes on a TCX link at once.
    pub fn tcx_now(&mut self, now: Instant) -> bool {
        self.forget_before(now);
        self.slow_from().is_none_or(|t| t <= now)
    }

    /// A pod interface was attached at `now`, with a TCX link or a filter.
    pub fn pod_attached(&mut self, now: Instant) {
        self.forget_before(now);
        self.recent.push_back(now);
    }

    /// From when fewer than [`PER_WINDOW`] of the attaches so far are within a [`WINDOW`]:
    /// a new pod would get a TCX link, and a due filter may move. None: already.
    pub fn slow_from(&self) -> Option<Instant> {
        let n = self.recent.len();
        (n >= PER_WINDOW).then(|| self.recent[n - PER_WINDOW] + WINDOW)
    }

    /// Drops the attaches a [`WINDOW`] before `now`.
    fn forget_before(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_tcx_links_until_a_window_holds_the_limit_then_filters_until_it_passes() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        for i in 0..PER_WINDOW as u64 {
            assert!(p.tcx_now(ms(i * 10)), "attach {i}");
            p.pod_attached(ms(i * 10));
        }
        // The window is full: the next pods get filters, and count (a churn stays on them).
        assert!(!p.tcx_now(ms(100)));
        p.pod_attached(ms(100));
        // The first attach left the window, the filter's is in it.
        assert!(!p.tcx_now(ms(1000)));
        // The second leaves it: one more fits.
        assert!(p.tcx_now(ms(1010)));
        p.pod_attached(ms(1010));
        assert!(!p.tcx_now(ms(1015)));
        // Pods come slower again when the oldest of the last PER_WINDOW leaves the window.
        assert_eq!(p.slow_from(), Some(ms(1020)));
        assert!(p.tcx_now(ms(1020)));
        assert_eq!(Pace::default().slow_from(), None);
    }
}
