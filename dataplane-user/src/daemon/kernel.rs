//! What the kernel tells the owner: link events, the next-hop task's checks, pins removed
//! under the daemon, filters due for a TCX link.

use super::{Owner, next_hops};
use crate::{netlink::Event, plan};

impl Owner {
    /// Links came, went or changed (or the kernel dropped their events).
    pub(super) async fn on_events(&mut self, batch: &[Event]) {
        for ev in batch {
            match ev {
                Event::LinkNew(l) => log::debug!("link {} ({}) is up or changed", l.name, l.index),
                Event::LinkDel { index, name } => log::info!("link {name} ({index}) is gone"),
                Event::Resync => log::warn!("netlink dropped link events: resyncing"),
            }
        }
        // Links came, went or changed: a change on the kept view (a resync: in full).
        let applied = self.dp.reconcile_change(&self.desired, batch).await;
        // (The uplink may be another: the check is told the underlay again.)
        let r = self.settle(applied, true);
        self.reconciling.report("reconciling", r);
    }

    /// Puts back pins removed under the daemon (see [`crate::apply::Dataplane::repair_pins`])
    /// and re-attaches what lost its link, then watches the new directories.
    pub(super) async fn repair_pins(&mut self, watch: &crate::pins::PinWatch) {
        match self.dp.repair_pins() {
            Ok(missing) if missing.is_empty() => {}
            Ok(missing) => {
                log::warn!(
                    "removed from {} under the running daemon, put back: {}",
                    self.dp.pin_dir.display(),
                    missing.join(", ")
                );
                let r = self.reconcile().await;
                self.reconciling.report("reconciling", r);
                if let Err(e) = watch.watch() {
                    log::warn!("{e:#}");
                }
            }
            Err(e) => {
                self.health.send_modify(|h| {
                    h.ready = false;
                    h.waiting_for = format!("the pin directory: {e:#}");
                });
                log::error!("repairing the pin directory: {e:#}");
            }
        }
    }

    /// A next-hop check's result (see [`next_hops`]): a full reconcile when a peer's next hop
    /// is not what its routes were built from.
    pub(super) async fn on_next_hops(&mut self, c: next_hops::Checked) {
        match c.hops {
            Ok(hops) => {
                self.reading_next_hops.ok();
                // Read for another underlay than the plan's: the reconcile that changed it read
                // the next hops itself.
                let moved = c.underlay == self.dp.underlay()
                    && plan::next_hops_moved(&self.dp.plan.next_hops, &hops);
                // A reconcile that failed is retried here too, not only at the next event.
                if moved || self.reconciling.0.is_some() {
                    if moved {
                        log::info!("a peer's next hop changed: updating the routes");
                    }
                    let r = self.reconcile().await;
                    self.reconciling.report("reconciling", r);
                }
            }
            Err(e) => self
                .reading_next_hops
                .failed("reading the peers' next hops", &e),
        }
    }

    /// One netlink filter moved to a TCX link; published every 32 and when the last one is.
    pub(super) async fn promote(&mut self) {
        let r = self.dp.promote_one().await;
        self.promoted += 1;
        let done = r.is_ok() && self.dp.next_promotion().is_none();
        if done && self.dp.filters() == 0 {
            log::info!("every pod interface is on a TCX link");
        }
        if done || r.is_err() || self.promoted.is_multiple_of(32) {
            self.publish();
        }
        self.promoting.report("moving a filter to a TCX link", r);
    }
}
