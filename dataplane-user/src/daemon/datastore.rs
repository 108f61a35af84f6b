//! The owner and the datastore: the start's bootstrap, the datastore task's news (views,
//! reachability, resets, conflicts), a block claimed when the node's are full, and the blocks
//! the node's pods use, which the task needs to hold or give up blocks.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use super::Owner;
use crate::{
    config::{Config, DatastoreKind},
    datastore::{
        memory::Memory,
        model::{View, Workload},
        peers,
        sync::{self, Msg, Synced},
    },
    desired,
    metrics::DatastoreHealth,
    net::Ipv4Net,
};

/// The datastore at start (see [`sync::bootstrap`]): the node asserted, what it forwards on
/// cached; the tracker and the connection go on to the datastore task. Unreachable: the cached
/// view of an earlier run, when there is one (the node then forwards on what it last knew,
/// and the datastore task keeps trying); else an error, before anything is attached.
pub(super) async fn datastore_start(
    d: &crate::datastore::DatastoreCfg,
    file: &Config,
    state_dir: &Path,
    addresses: &[std::net::Ipv4Addr],
) -> Result<(Synced, sync::Tracker, Option<crate::datastore::Store>)> {
    let cached = sync::load_cache(state_dir);
    let mem = cached.clone().unwrap_or_default();
    let in_use = sync::blocks_in_use(&file.node.name, &mem, addresses.iter().copied());
    let r = async {
        let store = crate::datastore::Store::connect(d).await?;
        let (synced, tracker) = sync::bootstrap(&store, file, mem, &in_use).await?;
        anyhow::Ok((synced, tracker, store))
    }
    .await;
    match r {
        Ok((synced, tracker, store)) => {
            sync::save_cache(state_dir, &synced.memory)?;
            log::info!(
                "datastore: node {} holds {}; {} nodes in the cluster",
                file.node.name,
                synced
                    .memory
                    .held(&file.node.name)
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                synced.memory.view.nodes.len()
            );
            Ok((synced, tracker, Some(store)))
        }
        Err(e) => match cached {
            Some(mem) if !mem.held(&file.node.name).is_empty() => {
                log::warn!(
                    "datastore: {e:#}; starting from the last known state in {}",
                    state_dir.display()
                );
                let tracker = sync::Tracker::new(file, mem);
                let mut tracker = tracker;
                Ok((tracker.synced(), tracker, None))
            }
            _ => Err(e.context("datastore")),
        },
    }
}

/// How long at most the cache lags the view the node forwards on when only other nodes
/// changed.
const CACHE_EVERY: Duration = Duration::from_secs(1);

/// When the view the node forwards on is written to its cache ([`sync::save_cache`]): at once
/// when the node's own part changed (the blocks it holds and disputes, its registration: what
/// a start after a reset needs; its pods in Calico's view, whose names `ipipd endpoints`
/// reads there), else at most every [`CACHE_EVERY`] (at 5,000 nodes a write is milliseconds
/// of JSON on the owner's path, and the store may change 100 times a second). What is due is
/// written when the daemon stops.
#[derive(Default)]
pub(super) struct CacheWrites {
    /// The node's own part as last written.
    own: Option<Own>,
    /// A write due then (only other nodes changed since the last).
    pub(super) due: Option<Instant>,
}

type Own = (
    Option<BTreeSet<Ipv4Net>>,
    BTreeSet<Ipv4Net>,
    i64,
    Vec<Workload>,
);

/// Node `me`'s own part of `m`.
fn own(m: &Memory, me: &str) -> Own {
    (
        m.held.clone(),
        m.disputed.clone(),
        m.registered,
        m.view
            .calico
            .workloads_of(me)
            .map(|(_, w)| w.clone())
            .collect(),
    )
}

impl CacheWrites {
    /// After node `me` took `m` at `now`: whether to write it now (its own part, noted as
    /// written, changed), else a write is due.
    fn now(&mut self, m: &Memory, me: &str, now: Instant) -> bool {
        let own = own(m, me);
        if self.own.as_ref() != Some(&own) {
            self.own = Some(own);
            return true;
        }
        self.due.get_or_insert(now + CACHE_EVERY);
        false
    }

    fn written(&mut self) {
        self.due = None;
    }

    /// A write failed at `now`: another is due, and the next view is written at once.
    fn failed(&mut self, now: Instant) {
        self.own = None;
        self.due = Some(now + CACHE_EVERY);
    }
}

/// Which datastore a node follows: its kind, members and prefix.
pub(super) fn source_of(file: &Config) -> String {
    file.datastore.as_ref().map_or_else(String::new, |d| {
        format!(
            "{} {} ({})",
            file.datastore_kind.name(),
            d.endpoints.join(","),
            d.prefix
        )
    })
}

/// calico-etcd mode: the file's node as Calico's record of it says (see
/// [`crate::config::Node::follow_calico`]); a node Calico does not know is an error, since no
/// peer would send to it.
pub(super) fn follow_record(mut file: Config, view: &View) -> Result<Config> {
    if file.datastore_kind != DatastoreKind::CalicoEtcd {
        return Ok(file);
    }
    let name = file.node.name.clone();
    let prefix = file.datastore.as_ref().map_or("", |d| d.prefix.as_str());
    let rec = view.nodes.get(name.as_str()).ok_or_else(|| {
        anyhow!(
            "node {name} has no IPv4 address in Calico's datastore ({prefix}/resources/v3/projectcalico.org/nodes/{name}, spec.bgp.ipv4Address); \
             ipipd writes no Calico key: calico-node's startup registers a node (the name must be Calico's: the Kubernetes node name)"
        )
    })?;
    if file.node.follow_calico(rec.address, &crate::host::System)? {
        log::info!(
            "node {name}: uplink {}, address {} ({})",
            file.node.uplink,
            file.node.address,
            file.node.found
        );
    }
    Ok(file)
}

/// What /readyz, /metrics and `ipipd status` say of the datastore.
pub(super) fn health_of(s: &Synced, source: String, up: bool, reason: String) -> DatastoreHealth {
    DatastoreHealth {
        source,
        up,
        reason,
        resets: s.resets,
        last_reset: s.last_reset.clone().unwrap_or_default(),
        grace: s.grace,
        conflicts: s.conflicts.clone(),
    }
}

impl Owner {
    /// What the datastore task sent while the owner was busy: only the newest view is
    /// applied (or, without one, the newest message), then the newest loss after it.
    pub(super) async fn on_datastore_batch(&mut self, mut batch: Vec<Msg>) {
        let from = batch
            .iter()
            .rposition(|m| matches!(m, Msg::View(_)))
            .unwrap_or(batch.len().saturating_sub(1));
        let mut newest = batch.split_off(from).into_iter();
        for m in [newest.next(), newest.last()].into_iter().flatten() {
            self.on_datastore(m).await;
        }
    }

    /// The datastore task's news: a new view is applied like a changed file (an invalid one
    /// changes nothing); reachability, resets and conflicts are reported, logged on their
    /// changes only.
    pub(super) async fn on_datastore(&mut self, m: Msg) {
        let was = self.ds_health.clone().unwrap_or_default();
        match m {
            Msg::View(synced) => {
                if !was.up {
                    log::info!("datastore: reachable again; resynchronising");
                }
                self.ds_health = Some(health_of(
                    &synced,
                    source_of(&self.file),
                    true,
                    String::new(),
                ));
                if self.ds.as_ref() != Some(&synced.memory) {
                    self.note_address(&synced.memory.view);
                    match self.adopt_memory(synced.memory).await {
                        Ok(()) => log::debug!(
                            "datastore: {} nodes, {} peers, {} blocks of this node",
                            self.ds.as_ref().map_or(0, |m| m.view.nodes.len()),
                            self.desired.peers.len(),
                            self.desired.blocks.len()
                        ),
                        Err(e) => {
                            log::error!("datastore: the cluster's state is not applied: {e:#}")
                        }
                    }
                }
            }
            Msg::Down(reason) => {
                if was.up || was.reason != reason {
                    log::warn!(
                        "datastore: not reachable ({reason}); forwarding on the last state, retrying"
                    );
                }
                self.ds_health = Some(DatastoreHealth {
                    up: false,
                    reason,
                    ..was.clone()
                });
            }
        }
        if self.ds_health != Some(was) {
            self.publish();
        }
    }

    /// calico-etcd mode: what of the view the node leaves out (a workload endpoint it cannot
    /// take; what [`sync::overlay_noting`] said), logged when that changes.
    pub(super) fn note_skipped(&mut self, skipped: Vec<(String, String)>) {
        for (what, why) in skipped.iter().filter(|s| !self.skipped.contains(s)) {
            log::warn!("datastore: {what} is left out: {why}");
        }
        self.skipped = skipped;
    }

    /// calico-etcd mode: a new address in the node's own record, which a restart follows.
    pub(super) fn note_address(&self, view: &View) {
        if self.file.datastore_kind != DatastoreKind::CalicoEtcd {
            return;
        }
        if let Some(rec) = view.nodes.get(self.file.node.name.as_str())
            && rec.address != self.file.node.address
        {
            log::error!(
                "Calico's node record of {} now says its address is {}; this node sends from {} until ipipd restarts",
                rec.name,
                rec.address,
                self.file.node.address
            );
        }
    }

    /// Claims a free block of the pools for this node and programs it as the node's own.
    pub(super) async fn claim_block(&mut self) -> Result<Ipv4Net> {
        let d = self.file.datastore.clone().expect("checked by the caller");
        let store = crate::datastore::Store::connect(&d).await?;
        let name = self.file.node.name.clone();
        let b = store.claim_any(&name, Duration::ZERO).await?;
        let mut mem = self.ds.clone().unwrap_or_default();
        Arc::make_mut(&mut mem.view)
            .blocks
            .insert(b, name.as_str().into());
        let mut held = mem.held(&name);
        held.insert(b);
        mem.held = Some(held);
        self.adopt_memory(mem)
            .await
            .map_err(|e| e.context(format!("programming the claimed block {b}")))?;
        Ok(b)
    }

    /// What the node forwards on from the datastore: the data plane reconciled when what it
    /// makes of it (the node's blocks, its peers) changed — a liveness key coming or going
    /// changes neither — and cached for a start while etcd is away. On error the old stands.
    pub(super) async fn adopt_memory(&mut self, m: Memory) -> Result<()> {
        match self.adopt_peer_changes(&m).await {
            Some(r) => {
                r?;
                self.ds = Some(m);
            }
            None => {
                let (base, skipped) = sync::overlay_noting(&self.file, &m);
                self.note_skipped(skipped);
                let old = self.ds.replace(m);
                if base != self.base {
                    let (file, rt) = (self.file.clone(), self.runtime.clone());
                    if let Err(e) = self.adopt(file, base, rt).await {
                        self.ds = old;
                        return Err(e);
                    }
                }
            }
        }
        if let Some(m) = &self.ds
            && self.ds_cache.now(m, &self.file.node.name, Instant::now())
        {
            self.write_cache();
        }
        Ok(())
    }

    /// A view that changed only other nodes (their records, their blocks) taken by parts:
    /// the peers it changed (see [`peers::changes`]) made in place in the base and the desired
    /// state and planned by parts, as a runtime `peer add` is. None when the view changed more
    /// than that or the changes do not fit in place: the whole overlay then takes it (and says
    /// what it refuses). What the overlay leaves out (Calico's part) cannot have changed. Peers
    /// changed at runtime (`ipipd peer add|del`) stand over the datastore's in the desired
    /// state: with any, the whole path decides which.
    async fn adopt_peer_changes(&mut self, m: &Memory) -> Option<Result<()>> {
        if !self.runtime.peers_added.is_empty() || !self.runtime.peers_deleted.is_empty() {
            return None;
        }
        let old = self.ds.as_ref()?;
        let node = &self.file.node;
        let changes = peers::changes(old, m, &node.name, node.address, &self.base.blocks)?;
        if changes.is_empty() {
            return Some(Ok(()));
        }
        let in_base = desired::changes_in_place(&mut self.base, &changes)?;
        let Some(delta) = desired::changes_in_place(&mut self.desired, &changes) else {
            desired::revert(&mut self.base, &in_base);
            return None;
        };
        let applied = self.dp.reconcile_delta(&self.desired, &delta).await;
        if applied.is_err() {
            desired::revert(&mut self.desired, &delta);
            desired::revert(&mut self.base, &in_base);
        }
        Some(self.settle(applied, true))
    }

    /// The view the node forwards on written to its cache (see [`CacheWrites`]).
    pub(super) fn write_cache(&mut self) {
        let Some(m) = &self.ds else { return };
        match sync::save_cache(&self.dp.state_dir, m) {
            Ok(()) => self.ds_cache.written(),
            Err(e) => {
                log::warn!("datastore: caching the view: {e:#}");
                self.ds_cache.failed(Instant::now());
            }
        }
    }

    /// The node's blocks that its pods and allocations use.
    pub(super) fn blocks_in_use(&self) -> BTreeSet<Ipv4Net> {
        let Some(m) = &self.ds else {
            return BTreeSet::new();
        };
        let addresses = self
            .desired
            .endpoints
            .iter()
            .map(|e| e.address)
            .chain(self.ipam.allocations.iter().map(|a| a.address));
        sync::blocks_in_use(&self.file.node.name, m, addresses)
    }

    /// Tells the datastore task which blocks the node's pods use (it disputes or gives up
    /// blocks by them), when that changed.
    pub(super) fn publish_in_use(&self) {
        if let Some(tx) = &self.ds_in_use {
            let now = self.blocks_in_use();
            tx.send_if_modified(|was| {
                let changed = *was != now;
                *was = now;
                changed
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_own_part_is_cached_at_once_other_nodes_at_most_every_second() {
        let mut c = CacheWrites::default();
        let mut m = Memory::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // The first view is written at once.
        assert!(c.now(&m, "n0", t0));
        c.written();
        // Another node came, and a pod of another node: a write is due a second after the
        // first such change, not later.
        Arc::make_mut(&mut m.view).nodes.insert(
            "n1".into(),
            crate::datastore::model::NodeRecord {
                name: "n1".into(),
                address: "172.31.0.1".parse().unwrap(),
            },
        );
        assert!(!c.now(&m, "n0", t0));
        let pod = |node: &str| Workload {
            node: node.into(),
            interface: "cali0".into(),
            address: "10.64.0.2".parse().unwrap(),
            mac: None,
            pod: "default/p".into(),
        };
        Arc::make_mut(&mut m.view)
            .calico
            .workloads
            .insert("default/p1".into(), pod("n1"));
        assert!(!c.now(&m, "n0", ms(500)));
        assert_eq!(c.due, Some(t0 + CACHE_EVERY));
        // The node's own blocks changed: at once.
        m.held = Some(["10.64.0.0/26".parse().unwrap()].into());
        assert!(c.now(&m, "n0", ms(600)));
        c.written();
        assert_eq!(c.due, None);
        // Its registration, and a pod of its own, too.
        m.registered += 1;
        assert!(c.now(&m, "n0", ms(700)));
        c.written();
        Arc::make_mut(&mut m.view)
            .calico
            .workloads
            .insert("default/p0".into(), pod("n0"));
        assert!(c.now(&m, "n0", ms(800)));
        // A write that failed is tried again a second later, and the next view at once.
        c.failed(ms(800));
        assert_eq!(c.due, Some(ms(800) + CACHE_EVERY));
        assert!(c.now(&m, "n0", ms(900)));
    }
}
