//! Changes reconciled on the kept kernel view (see [`crate::incremental`]): planned whole on
//! it ([`Dataplane::reconcile_change`]), or by parts ([`Dataplane::reconcile_delta`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Result;
use dataplane_common::{Endpoint, Hook};

use super::{Dataplane, Writes};
use crate::{
    config::Config,
    incremental::{self, LinkChange},
    netlink::Event,
    plan,
};

impl Dataplane {
    /// The next reconcile reads the kernel in full.
    pub fn forget_view(&mut self) {
        self.cache = None;
    }

    /// [`Dataplane::reconcile`] for a change, on the kept view (see [`crate::incremental`]):
    /// the link `events` since taken in, what the change needs read from the kernel, the maps
    /// diffed against what the last apply wrote. A full reconcile when there is no kept view
    /// or it does not fit `cfg`; any failure drops the view, and the next one is full.
    pub async fn reconcile_change(&mut self, cfg: &Config, events: &[Event]) -> Result<()> {
        let Some(mut cache) = self.cache.take() else {
            return self.reconcile(cfg).await;
        };
        if !cache.on_events(events) {
            return self.reconcile(cfg).await;
        }
        self.follow_uplink(cfg, cache.links())?;
        if !cache.fits(cfg, self.underlay()) {
            return self.reconcile(cfg).await;
        }
        if !events.is_empty() {
            let change = incremental::link_change(
                events,
                cfg,
                (self.uplink.index, self.tunnel.as_ref().map(|t| t.index)),
                &self.plan.endpoints,
                |i| self.attachments.contains(i, Hook::FromPod),
            );
            match change {
                // Only links nothing here refers to: the view has them, nothing to plan.
                LinkChange::Nothing => {
                    self.cache = Some(cache);
                    return Ok(());
                }
                // Links of pods only (a CNI ADD's veth set up, a pod's veth gone): their
                // endpoints planned again by parts, on the view as the events left it.
                LinkChange::Endpoints(endpoints) if self.parts_fit(cfg) => {
                    let delta = plan::Delta {
                        endpoints_gone: endpoints.clone(),
                        endpoints_new: endpoints,
                        ..plan::Delta::default()
                    };
                    return self.reconcile_parts(cfg, &delta, cache).await;
                }
                LinkChange::Endpoints(_) | LinkChange::Whole => {}
            }
        }
        // What the maps hold: what the last apply wrote (it went through, or there would be
        // no kept view).
        let known = self.plan.endpoints.clone();
        let current = self.plan.routes.clone();
        cache.read_for(&self.nl, cfg, &known).await?;
        self.ensure_tunnel(cfg, &mut cache.view_mut().links).await?;
        self.ensure_tunnel_address(cfg).await?;
        let tunnel = self.tunnel.as_ref().map_or(0, |t| t.index);
        let plan = plan::plan(cfg, self.underlay(), tunnel, cache.view(), &known);
        self.apply(plan, cache.view(), &known, current).await?;
        self.apply_nat(cfg)?;
        cache.applied(&self.plan);
        self.cache = Some(cache);
        Ok(())
    }

    /// A change of endpoints and peers only (`delta`, to the desired state `cfg`) on the kept
    /// view: what the new parts need read from the kernel, the parts going and coming planned
    /// ([`Plan::change`]) and the entries they touched written; work in proportion to the
    /// change. Without a kept view that fits, or when a part meets another's prefix, the
    /// change is planned whole ([`Dataplane::reconcile_change`], [`Dataplane::reconcile`]).
    pub async fn reconcile_delta(&mut self, cfg: &Config, delta: &plan::Delta) -> Result<()> {
        match self.cache.take() {
            Some(cache) if cache.fits(cfg, self.underlay()) && self.parts_fit(cfg) => {
                if delta.is_empty() {
                    self.cache = Some(cache);
                    return Ok(());
                }
                self.reconcile_parts(cfg, delta, cache).await
            }
            cache => {
                self.cache = cache;
                self.reconcile_change(cfg, &[]).await
            }
        }
    }

    /// Whether a change can be planned by parts: the tunnel device and its address are what
    /// `cfg` wants (else a whole plan makes them).
    fn parts_fit(&self, cfg: &Config) -> bool {
        self.tunnel.is_some() && self.tunnel_address == Some(cfg.tunnel_address)
    }

    /// [`Dataplane::reconcile_delta`] on the kept view `cache`, which fits.
    async fn reconcile_parts(
        &mut self,
        cfg: &Config,
        delta: &plan::Delta,
        mut cache: incremental::Cache,
    ) -> Result<()> {
        cache
            .read_for_delta(&self.nl, delta, &self.plan.endpoints)
            .await?;
        // What the maps hold for the interfaces the new endpoints name (a learnt pod MAC).
        let known: BTreeMap<u32, Endpoint> = delta
            .endpoints_new
            .iter()
            .filter_map(|e| cache.links().by_name(&e.interface))
            .filter_map(|l| self.plan.endpoints.get(&l.index).map(|e| (l.index, *e)))
            .collect();
        let at = plan::At {
            cfg,
            underlay: self.underlay(),
            tunnel: self.tunnel.as_ref().map_or(0, |t| t.index),
            view: cache.view(),
        };
        let Some(touched) = self.plan.change(&at, delta, &known) else {
            // (The plan is partly changed: planned whole, on what the maps hold.)
            return self.reconcile(cfg).await;
        };
        let plan = &self.plan;
        let mut w = Writes {
            slow_removed: touched.slow_removed.iter().cloned().collect(),
            slow_added: touched.slow_added.iter().cloned().collect(),
            planned: touched.slow_added.iter().map(|r| r.dst()).collect(),
            ..Writes::default()
        };
        for (k, was) in &touched.routes {
            match (was, plan.routes.get(k)) {
                (_, Some(v)) if was.as_ref() != Some(v) => w.routes_put.push((*k, *v)),
                (Some(_), None) => w.routes_removed.push(*k),
                _ => {}
            }
        }
        for (i, was) in &touched.endpoints {
            match (was, plan.endpoints.get(i)) {
                (_, Some(ep)) => {
                    if was.as_ref() != Some(ep) {
                        w.endpoints_put.push((*i, *ep));
                    }
                    if let Some(l) = cache.view().links.by_index(*i) {
                        w.attach.push((l.clone(), Hook::FromPod));
                    }
                }
                (Some(_), None) => {
                    w.endpoints_removed.push(*i);
                    if self.attachments.contains(*i, Hook::FromPod) {
                        w.detach.push((*i, Hook::FromPod as u8));
                    }
                }
                (None, None) => {}
            }
        }
        let pending: Vec<(Ipv4Addr, String)> = delta
            .endpoints_new
            .iter()
            .filter(|e| plan.pending.contains_key(&e.address))
            .map(|e| (e.address, e.interface.clone()))
            .collect();
        // The new peers' next hops the kernel has no MAC for are asked for now.
        let unresolved: BTreeSet<Ipv4Addr> = delta
            .peers_new
            .iter()
            .filter_map(|p| plan.next_hops.get(&p.address))
            .filter(|h| h.l2.is_none())
            .map(|h| h.via)
            .collect();
        self.write(w, cache.view(), false).await?;
        for (addr, name) in pending {
            log::info!("endpoint {addr}: waiting for interface {name}");
        }
        self.resolve(&unresolved).await;
        if delta.peers_changed() {
            // (The pod network natOutgoing leaves alone holds the peers' blocks.)
            self.apply_nat(cfg)?;
        }
        cache.changed(&touched);
        self.cache = Some(cache);
        Ok(())
    }
}
