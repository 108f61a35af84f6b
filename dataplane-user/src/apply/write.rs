//! The one writer's writes: what a whole plan ([`Dataplane::apply`]) or a change of parts
//! ([`Dataplane::reconcile_delta`]) changes, written to the maps, the attachments and the
//! kernel's slow-path routes.

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use dataplane_common::{Endpoint, Hook, RouteValue};
use futures::{StreamExt as _, TryStreamExt as _};

use super::{Dataplane, device_is_there};
use crate::{
    maps,
    netlink::{Link, Route},
    plan::KernelView,
    record::{self, ReplacedRoute},
};

/// What one reconcile writes: a whole plan's difference from what the maps and the kernel
/// hold, or a change's (see [`Plan::change`]).
#[derive(Default)]
pub(super) struct Writes {
    pub(super) endpoints_put: Vec<(u32, Endpoint)>,
    pub(super) routes_put: Vec<((Ipv4Addr, u8), RouteValue)>,
    pub(super) routes_removed: Vec<(Ipv4Addr, u8)>,
    /// Attachments wanted (those in place are left as they are) and not wanted.
    pub(super) attach: Vec<(Link, Hook)>,
    pub(super) detach: Vec<(u32, u8)>,
    /// Interfaces whose endpoint goes (their counters too), once detached.
    pub(super) endpoints_removed: Vec<u32>,
    pub(super) slow_removed: Vec<Route>,
    pub(super) slow_added: Vec<Route>,
    /// The prefixes the plan keeps a slow-path route for: a removed route whose prefix is not
    /// among them gets back the route it replaced.
    pub(super) planned: BTreeSet<(Ipv4Addr, u8)>,
}

impl Dataplane {
    /// The one writer: maps (endpoints first, from_pod needs its entry before it runs; then
    /// routes), attachments, stale endpoints once detached, slow-path routes. `full`: the
    /// writes are a whole plan's (adopted attachments run this build's programs, clsact
    /// qdiscs left over go).
    pub(super) async fn write(&mut self, w: Writes, view: &KernelView, full: bool) -> Result<()> {
        for (ifindex, ep) in &w.endpoints_put {
            maps::put_endpoint(&mut self.ebpf, *ifindex, ep)?;
        }
        for ((addr, len), v) in &w.routes_put {
            maps::put_route(&mut self.ebpf, addr.octets(), u32::from(*len), v)?;
        }
        for (addr, len) in &w.routes_removed {
            maps::remove_route(&mut self.ebpf, addr.octets(), u32::from(*len))?;
        }
        if !w.routes_put.is_empty() || !w.routes_removed.is_empty() {
            self.next_route_gen()?;
        }

        // What is not wanted goes first, the adopted ones run this build's programs next,
        // then the missing ones are attached.
        self.attachments.detach_many(w.detach);
        if full {
            self.attachments.swap_adopted(&mut self.ebpf, self.xdp);
        }
        // Each TCX attach waits for an RCU grace period under the RTNL lock (~13 ms, one
        // after another whatever the number of threads: measured); many pods at once are
        // attached as netlink filters first (see `attach`), a restart adopts the links.
        let attached = self
            .attachments
            .attach_all(&mut self.ebpf, &w.attach, self.xdp);
        if full {
            self.remove_clsacts().await;
        }
        attached?;
        for i in w.endpoints_removed {
            maps::endpoints(&mut self.ebpf)?
                .remove(&i)
                .with_context(|| format!("endpoints: removing {i}"))?;
            maps::forget_counters(&mut self.ebpf, i)?;
        }

        // Slow-path routes, identified by their protocol. A route ipipd no longer wants
        // whose prefix had a route before ipipd took it over gets that route back (when its
        // device is still there); a route of someone else's that ipipd's replaces is recorded
        // first, for the same reason and for `ipipd teardown` — the one found last: what an
        // operator put in place of ipipd's while it was stopped is what comes back.
        let mut record_changed = false;
        for r in &w.slow_removed {
            let key = record::prefix_key(r.dst());
            if !w.planned.contains(&r.dst())
                && let Some(orig) = self.record.replaced.remove(&key)
            {
                record_changed = true;
                if device_is_there(&orig, &view.links) {
                    log::info!("route {key}: ipipd's no more, {} is back", orig.summary);
                    self.nl.route_restore(&orig.message()?).await?;
                    continue;
                }
            }
            // A route whose device vanished is gone with it.
            self.nl.route_delete(r).await?;
        }
        for r in &w.slow_added {
            let key = record::prefix_key(r.dst());
            if let Some(m) = view.other_routes.get(&r.dst()) {
                let orig =
                    ReplacedRoute::new(m, |i| view.links.by_index(i).map(|l| l.name.clone()));
                if self.record.replaced.get(&key) != Some(&orig) {
                    log::info!(
                        "route {key}: {} is replaced by ipipd's (recorded)",
                        orig.summary
                    );
                    self.record.replaced.insert(key, orig);
                    record_changed = true;
                }
            }
        }
        if record_changed {
            // Before the routes change: a crash in between forgets nothing.
            self.record.save(&self.state_dir)?;
        }
        // Many at once on the one netlink socket: each route is its own request and ack, and
        // 10,000 of them one after another are most of a large node's start.
        let nl = &self.nl;
        futures::stream::iter(&w.slow_added)
            .map(|r| nl.route_replace(r))
            .buffer_unordered(crate::netlink::IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Endpoints newly waiting for their interface, logged.
    pub(super) fn log_pending<'a>(
        &self,
        pending: impl Iterator<Item = (&'a Ipv4Addr, &'a String)>,
    ) {
        for (addr, name) in pending {
            if self.plan.pending.get(addr) != Some(name) {
                log::info!("endpoint {addr}: waiting for interface {name}");
            }
        }
    }
}
