//! Whether a pod interface's `from_pod` goes on a TCX link at once or on a netlink filter
//! first. A TCX attach, and a TCX link's release, each wait for an RCU grace period under the
//! RTNL lock (~13 ms, during which every link, address and route change on the node waits
//! too); a netlink filter waits for none (~1 ms). Pods that come one by one get their TCX link
//! at once. Past [`PER_WINDOW`] attaches in a [`WINDOW`] (a burst: pods created and deleted by
//! the hundred) a pod gets a filter, which moves to a TCX link once it has been there
//! [`PROMOTE_AFTER`] and no pod interface was attached for a [`WINDOW`]: a pod deleted before
//! then never pays a grace period, to attach or to go.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The span over which attaches are counted, and the quiet a move to TCX waits for.
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
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.len() < PER_WINDOW
    }

    /// A pod interface was attached at `now`, with a TCX link or a filter.
    pub fn pod_attached(&mut self, now: Instant) {
        self.recent.push_back(now);
    }

    /// From when a filter that is due may move: a [`WINDOW`] after the last pod attach.
    pub fn quiet_from(&self) -> Option<Instant> {
        self.recent.back().map(|t| *t + WINDOW)
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
        assert_eq!(p.quiet_from(), Some(ms(2010)));
        assert_eq!(Pace::default().quiet_from(), None);
    }
}
