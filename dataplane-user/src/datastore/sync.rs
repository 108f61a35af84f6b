//! The node's side of the datastore. A start ([`bootstrap`]) and every session of the daemon's
//! task ([`run`]) first assert the node (see [`super::memory`]): they detect a store that
//! forgot, put back what the node holds, register it. A session then keeps the liveness key's
//! lease and the node's disputes, lists the prefix and watches it from that revision, sending
//! the owner what the node forwards on after each change. A failed session (etcd unreachable,
//! a lease lost, a compacted revision) is reported and a new one started with backoff; the data
//! plane is never touched for it.

use std::{
    collections::BTreeSet, convert::Infallible, net::Ipv4Addr, path::Path, sync::Arc,
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use etcd_client::EventType;
use futures::FutureExt as _;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    DatastoreCfg, REQUEST_TIMEOUT, Store,
    memory::{self, Forgot, GRACE, Memory, Seen},
    model::{Conflict, Keys, NodeRecord, Pool, View},
};
use crate::{config::Config, net::Ipv4Net, pins::write_atomic};

/// The liveness key's lease, in seconds: a daemon gone this long shows as down.
pub const LEASE_TTL: i64 = 10;

/// What the task tells the owner.
#[derive(Debug)]
pub enum Msg {
    /// What the node forwards on now.
    View(Box<Synced>),
    /// The datastore is not reachable (why); the last view stands.
    Down(String),
}

/// What the node makes of the datastore: the memory to forward on (and to save), and what
/// to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    pub memory: Memory,
    /// Resets of the store detected since the daemon started, and what showed the last.
    pub resets: u64,
    pub last_reset: Option<String>,
    /// Within [`GRACE`] of a reset: the view is the store's merged with the node's last.
    pub grace: bool,
    /// Disputed blocks this node takes part in.
    pub conflicts: Vec<Conflict>,
}

/// The node's side of the datastore across sessions: what it is, what it remembers, the
/// store as the session lists and watches it, and a reset's grace.
pub struct Tracker {
    name: String,
    address: Ipv4Addr,
    pools: Vec<Pool>,
    file_blocks: Vec<Ipv4Net>,
    /// What was last sent to the owner.
    mem: Memory,
    /// The store as listed and watched.
    store: View,
    /// After a session start or a detected reset: until when, and the view the node
    /// forwarded on before it.
    grace: Option<(Instant, Arc<View>)>,
    /// Within a grace: the last merge added nothing of the remembered view to the store, whose
    /// blocks and pools were apart from each other (as the store's claims keep them, and as
    /// [`View::merged_with`]'s lookups take them to be), and the store has since lost no key
    /// and gained none that overlaps another. A merge now would add nothing either: a put only
    /// adds to or replaces in the store, which leaves more of the remembered view present or
    /// overlapped. The store's view is then forwarded on without merging: at 5,000 nodes a
    /// merge is milliseconds of lookups per view.
    nothing_to_merge: bool,
    resets: u64,
    last_reset: Option<String>,
    /// Whether the store's `reasserting` marker was there when last looked at (a new one is
    /// another node's news of a reset).
    marker_seen: bool,
}

/// A session that ended because the store forgot while it was watched: the next one starts
/// at once and re-asserts.
#[derive(Debug)]
struct Forgotten(String);

impl std::fmt::Display for Forgotten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for Forgotten {}

impl Tracker {
    /// The node of `file`, remembering `mem` (its cache, or nothing on a first start).
    pub fn new(file: &Config, mem: Memory) -> Self {
        Tracker {
            name: file.node.name.clone(),
            address: file.node.address,
            pools: file.pools.clone(),
            file_blocks: file.blocks.clone(),
            store: View::clone(&mem.view),
            mem,
            grace: None,
            nothing_to_merge: false,
            resets: 0,
            last_reset: None,
            marker_seen: false,
        }
    }

    /// What the node forwards on: the store's view, merged with the last one during a grace
    /// (see [`Tracker::nothing_to_merge`]).
    fn effective(&mut self) -> View {
        match &self.grace {
            Some((_, last)) if !self.nothing_to_merge => {
                let v = self.store.merged_with(last);
                // (A merge only adds to the store's view: the same sizes, nothing added.)
                self.nothing_to_merge = v.nodes.len() == self.store.nodes.len()
                    && v.pools.len() == self.store.pools.len()
                    && v.blocks.len() == self.store.blocks.len()
                    && self.store.cidrs_apart();
                v
            }
            _ => self.store.clone(),
        }
    }

    /// One key of the watch taken into the store's view (None: deleted).
    fn take(&mut self, keys: &Keys, key: &str, value: Option<&[u8]>) {
        self.store.apply(keys, key, value);
        if value.is_none() || (self.nothing_to_merge && self.store.overlaps_another(keys, key)) {
            self.nothing_to_merge = false;
        }
    }

    /// The store's word taken for additions at once and for removals after [`GRACE`]: the
    /// view forwarded on now (within a grace, already the merge) is remembered.
    fn begin_grace(&mut self) {
        self.grace = Some((Instant::now() + GRACE, self.mem.view.clone()));
        self.nothing_to_merge = false;
    }

    /// Ends a grace that is over.
    fn end_grace_when_due(&mut self) {
        if self
            .grace
            .as_ref()
            .is_some_and(|(until, _)| *until <= Instant::now())
        {
            log::info!(
                "datastore: the grace after the reset is over; following the store ({} blocks, {} nodes)",
                self.store.blocks.len(),
                self.store.nodes.len()
            );
            self.grace = None;
        }
    }

    /// What to send the owner now (the memory updated with the current view, which the
    /// tracker and the owner then share).
    pub fn synced(&mut self) -> Synced {
        self.end_grace_when_due();
        self.mem.view = Arc::new(self.effective());
        Synced {
            memory: self.mem.clone(),
            resets: self.resets,
            last_reset: self.last_reset.clone(),
            grace: self.grace.is_some(),
            conflicts: self.store.conflicts_of(&self.name),
        }
    }

    fn on_reset(&mut self, f: &Forgot) {
        self.resets += 1;
        self.last_reset = Some(f.to_string());
        log::warn!(
            "datastore: the store forgot ({f}): putting back this node's blocks {} and keeping the last view for {} s while the other nodes put back theirs",
            fmt_blocks(&self.mem.held(&self.name)),
            GRACE.as_secs()
        );
        self.begin_grace();
    }

    /// A `reasserting` marker the node has not seen yet: another node found a reset.
    fn peer_found_reset(&mut self) -> bool {
        let now = self.store.reasserting.clone();
        let news = !self.marker_seen && now.as_deref().is_some_and(|n| n != self.name);
        self.marker_seen = now.is_some();
        if news {
            self.on_reset(&Forgot::Peer(now.unwrap_or_default()));
        }
        news
    }

    /// Asserts the node: begins a grace, detects a store that forgot, writes the store's
    /// identity when it has none, the config's pools (and after a reset the remembered
    /// ones), claims back the held blocks (see [`memory::assert_blocks`]), on a first start
    /// claims a free block when it holds none, registers the node; then lists the store. The
    /// revision of that list comes back: a watch goes on from there.
    async fn assert(
        &mut self,
        store: &Store,
        in_use: &BTreeSet<Ipv4Net>,
        first_start: bool,
    ) -> Result<i64> {
        self.begin_grace();
        let (view, rev) = store.list().await?;
        let registration = store.mod_revision(store.keys.node(&self.name)).await?;
        let seen = Seen {
            cluster: view.cluster.as_ref(),
            revision: rev,
            registration,
            removed: view.removed.contains(&self.name),
        };
        let found = memory::forgot(&self.mem, &seen);
        self.store = view;
        self.nothing_to_merge = false;
        let reset = match &found {
            Some(f) => {
                self.on_reset(f);
                self.marker_seen = true;
                if let Err(e) = store.mark_reasserting(&self.name, GRACE).await {
                    log::warn!("datastore: {e:#}");
                }
                true
            }
            None => self.peer_found_reset(),
        };
        if self.store.cluster.is_none() && store.create_identity().await? {
            log::info!("datastore: wrote the store's identity");
        }
        let mut pools = self.pools.clone();
        if reset {
            pools.extend(self.mem.view.pools.values().cloned());
        }
        for p in &pools {
            if store.ensure_pool_in(&self.store, p).await? {
                log::info!(
                    "datastore: created pool {} (blocks /{})",
                    p.cidr,
                    p.block_size
                );
            }
        }
        let was_held = self.mem.held(&self.name);
        for b in &self.file_blocks {
            if let Some((_, owner)) = self.store.owner_of(b)
                && **owner != *self.name
                && !was_held.contains(b)
            {
                bail!("block {b} is owned by node {owner} in the datastore");
            }
        }
        let held: BTreeSet<Ipv4Net> = was_held.iter().chain(&self.file_blocks).copied().collect();
        self.apply_assertion(store, &held, in_use, reset).await?;
        if first_start && self.mem.held(&self.name).is_empty() {
            let b = store.claim_any(&self.name, GRACE).await?;
            self.mem.held = Some([b].into());
        }
        self.mem.registered = store
            .register(&NodeRecord {
                name: self.name.as_str().into(),
                address: self.address,
            })
            .await?;
        let (view, rev) = store.list().await?;
        self.store = view;
        self.nothing_to_merge = false;
        report_bad(&mut self.store);
        // After a reset the store's revision may be lower than the one the node knew.
        self.mem.revision = if reset {
            rev
        } else {
            self.mem.revision.max(rev)
        };
        Ok(rev)
    }

    /// [`memory::assert_blocks`] against the store's view, its claims made; whether what the
    /// node holds changed.
    async fn apply_assertion(
        &mut self,
        store: &Store,
        held: &BTreeSet<Ipv4Net>,
        in_use: &BTreeSet<Ipv4Net>,
        reset: bool,
    ) -> Result<bool> {
        let a = memory::assert_blocks(&self.name, held, in_use, &self.store, reset);
        for b in &a.claim {
            if store.claim_free_block(b, &self.name).await? {
                log::info!("datastore: put back this node's block {b}");
            } else {
                log::warn!("datastore: block {b} was taken while this node put it back");
            }
        }
        for (b, owner) in &a.dropped {
            match owner {
                Some(o) => log::info!("datastore: block {b} is node {o}'s; no pod here uses it"),
                None => log::info!("datastore: block {b} was released; no pod here uses it"),
            }
        }
        let was = (self.mem.held.clone(), self.mem.disputed.clone());
        self.mem.held = Some(a.held);
        self.mem.disputed = a.dispute;
        Ok(was != (self.mem.held.clone(), self.mem.disputed.clone()))
    }

    /// The node's dispute keys as its disputes are: missing ones put under `lease`, ended
    /// ones deleted.
    async fn write_disputes(&self, store: &Store, lease: i64) -> Result<()> {
        let mine: BTreeSet<Ipv4Net> = self
            .store
            .disputes
            .iter()
            .filter(|(_, n)| n.contains(&self.name))
            .map(|(b, _)| *b)
            .collect();
        for b in self.mem.disputed.difference(&mine) {
            let owner = self.store.owner_of(b).map_or("?", |(_, n)| &**n);
            log::error!(
                "datastore: conflict: block {b} is node {owner}'s in the store, and this node's pods use it; they keep forwarding, new pods get addresses elsewhere"
            );
            store.put_dispute(&self.name, b, lease).await?;
        }
        for b in mine.difference(&self.mem.disputed) {
            log::info!("datastore: the dispute over block {b} is over");
            store.delete_dispute(&self.name, b).await?;
        }
        Ok(())
    }
}

/// What a node's start gets from the datastore (see [`Tracker::assert`]), and the tracker
/// that goes on with it in the daemon's task.
pub async fn bootstrap(
    store: &Store,
    file: &Config,
    mem: Memory,
    in_use: &BTreeSet<Ipv4Net>,
) -> Result<(Synced, Tracker)> {
    let mut t = Tracker::new(file, mem);
    t.assert(store, in_use, true).await?;
    Ok((t.synced(), t))
}

/// Runs sessions until the owner goes; the first on `connected` when the start left one.
pub async fn run(
    cfg: DatastoreCfg,
    mut t: Tracker,
    mut connected: Option<Store>,
    mut in_use: watch::Receiver<BTreeSet<Ipv4Net>>,
    tx: mpsc::Sender<Msg>,
) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let Err(e) = session(&cfg, connected.take(), &mut t, &mut in_use, &tx).await;
        if let Some(f) = e.downcast_ref::<Forgotten>() {
            log::warn!("datastore: {f}: asserting this node again");
            continue;
        }
        if tx.send(Msg::Down(format!("{e:#}"))).await.is_err() {
            return;
        }
        backoff.wait(started).await;
    }
}

/// The wait before a new session after one ended: 200 ms doubling up to 5 s, from 200 ms again
/// after a session that lasted (30 s).
pub(super) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(200))
    }
}

impl Backoff {
    /// After a session that began at `started`.
    pub(super) async fn wait(&mut self, started: Instant) {
        if started.elapsed() > Duration::from_secs(30) {
            *self = Backoff::default();
        }
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    cfg: &DatastoreCfg,
    connected: Option<Store>,
    t: &mut Tracker,
    in_use: &mut watch::Receiver<BTreeSet<Ipv4Net>>,
    tx: &mpsc::Sender<Msg>,
) -> Result<Infallible> {
    let store = match connected {
        Some(s) => s,
        None => Store::connect(cfg).await?,
    };
    let now_in_use = in_use.borrow_and_update().clone();
    let rev = t.assert(&store, &now_in_use, false).await?;
    // (What the node writes from here on, the watch brings back.)
    let lease = store.alive(&t.name, LEASE_TTL).await?;
    t.write_disputes(&store, lease).await?;
    // The owner is told when it can take a view (the channel holds one): a view is made
    // then, of everything that changed meanwhile. At 5,000 nodes a view is milliseconds of
    // copying; made per change, most of them waited for the owner to drop them. The session
    // goes on meanwhile (its keep-alives, the watch).
    let mut untold = true;
    let mut client = store.client();
    let (mut keeper, mut alive) =
        tokio::time::timeout(REQUEST_TIMEOUT, client.lease_keep_alive(lease))
            .await
            .map_err(|_| anyhow!("keep-alive: no answer"))??;
    let mut events = store.watch_after(store.keys.all(), rev).await?;
    let mut tick = tokio::time::interval(Duration::from_secs((LEASE_TTL / 3).max(1) as u64));
    loop {
        let grace_ends = t.grace.as_ref().map(|(until, _)| *until);
        tokio::select! {
            _ = tick.tick() => {
                tokio::time::timeout(REQUEST_TIMEOUT, keeper.keep_alive())
                    .await
                    .map_err(|_| anyhow!("keep-alive: no answer within {}s", REQUEST_TIMEOUT.as_secs()))??;
            }
            m = alive.message() => match m? {
                Some(r) if r.ttl() > 0 => {}
                Some(_) => bail!("the liveness lease expired"),
                None => bail!("the keep-alive stream ended"),
            },
            () = async {
                match grace_ends {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                t.end_grace_when_due();
                untold = true;
            }
            r = in_use.changed() => {
                r.map_err(|_| anyhow!("the daemon is stopping"))?;
                let now_in_use = in_use.borrow_and_update().clone();
                reassert(&store, t, &now_in_use, false, lease).await?;
                untold = true;
            }
            permit = tx.reserve(), if untold => {
                let permit = permit.map_err(|_| anyhow!("the daemon is stopping"))?;
                permit.send(Msg::View(Box::new(t.synced())));
                untold = false;
            }
            m = events.message() => {
                let Some(resp) = m? else { bail!("the watch ended") };
                let mut changed = take_events(t, &store, &resp)?;
                // Whatever else the watch has ready is taken before the owner is told: one view
                // for a burst, so the store changing faster than the owner applies views (each
                // in time proportional to the node's peers) cannot queue views behind it.
                while let Some(m) = events.message().now_or_never() {
                    let Some(resp) = m? else { bail!("the watch ended") };
                    changed |= take_events(t, &store, &resp)?;
                }
                if !changed {
                    continue;
                }
                report_bad(&mut t.store);
                if let Some(known) = &t.mem.view.cluster
                    && t.store.cluster.as_ref().is_none_or(|c| c.id != known.id)
                {
                    return Err(Forgotten(format!(
                        "the store's identity {} was deleted or replaced",
                        known.id
                    ))
                    .into());
                }
                // Another node found that the store forgot: this one puts its blocks back too.
                let reset = t.peer_found_reset();
                let now_in_use = in_use.borrow().clone();
                reassert(&store, t, &now_in_use, reset, lease).await?;
                untold = true;
            }
        }
    }
}

/// One answer of the watch taken into the tracker's view of the store: whether it held events.
/// A cancelled watch (a compacted revision) is an error: the session lists again.
fn take_events(t: &mut Tracker, store: &Store, resp: &etcd_client::WatchResponse) -> Result<bool> {
    not_cancelled(resp)?;
    if let Some(h) = resp.header() {
        t.mem.revision = t.mem.revision.max(h.revision());
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let key = String::from_utf8_lossy(kv.key());
        match ev.event_type() {
            EventType::Put => t.take(&store.keys, &key, Some(kv.value())),
            EventType::Delete => t.take(&store.keys, &key, None),
        }
    }
    Ok(!resp.events().is_empty())
}

/// A watch's answer that says it was cancelled (its revision compacted) ends the session.
pub(super) fn not_cancelled(resp: &etcd_client::WatchResponse) -> Result<()> {
    if resp.canceled() {
        bail!(
            "the watch was cancelled ({}; compacted at revision {}): listing again",
            resp.cancel_reason(),
            resp.compact_revision()
        );
    }
    Ok(())
}

/// After a change of the store or of the blocks the node's pods use: the node's claims and
/// disputes brought up to date (the owner is told next).
async fn reassert(
    store: &Store,
    t: &mut Tracker,
    in_use: &BTreeSet<Ipv4Net>,
    reset: bool,
    lease: i64,
) -> Result<()> {
    let held = t.mem.held(&t.name);
    t.apply_assertion(store, &held, in_use, reset).await?;
    t.write_disputes(store, lease).await
}

fn report_bad(view: &mut View) {
    for (k, e) in view.bad.drain(..) {
        log::warn!("datastore: ignoring {k}: {e}");
    }
}

fn fmt_blocks(b: &BTreeSet<Ipv4Net>) -> String {
    if b.is_empty() {
        return "(none)".into();
    }
    b.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The file's config with what the datastore says: the blocks the node holds added, every
/// other registered node as a peer with its blocks (but those the node holds), the pools (with
/// their natOutgoing) the store's.
pub fn overlay(file: &Config, mem: &Memory) -> Config {
    overlay_noting(file, mem).0
}

/// [`overlay`], and what of Calico's view it left out, with why (see
/// [`super::calico::overlay`]).
pub fn overlay_noting(file: &Config, mem: &Memory) -> (Config, Vec<(String, String)>) {
    let mut c = file.clone();
    c.pools = mem.view.pools.values().cloned().collect();
    for b in mem.held(&file.node.name) {
        if !c.blocks.contains(&b) {
            c.blocks.push(b);
        }
    }
    c.peers = mem
        .view
        .peers_for(&file.node.name, file.node.address, &c.blocks);
    let skipped = super::calico::overlay(&mut c, &mem.view);
    (c, skipped)
}

/// The blocks of `mem` that hold one of `addresses` (the node's pods and allocations).
pub fn blocks_in_use(
    name: &str,
    mem: &Memory,
    addresses: impl IntoIterator<Item = Ipv4Addr>,
) -> BTreeSet<Ipv4Net> {
    let held = mem.held(name);
    addresses
        .into_iter()
        .filter_map(|a| held.iter().find(|b| b.contains(a)).copied())
        .collect()
}

const CACHE: &str = "datastore.json";

/// What the node last forwarded on, kept so that a start while etcd is away resumes from it
/// and a start after a reset knows what the node held.
pub fn save_cache(state_dir: &Path, mem: &Memory) -> Result<()> {
    write_atomic(&state_dir.join(CACHE), &serde_json::to_vec(mem)?)
}

pub fn load_cache(state_dir: &Path) -> Option<Memory> {
    let t = std::fs::read(state_dir.join(CACHE)).ok()?;
    serde_json::from_slice(&t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{Lcg, net};

    #[test]
    fn within_a_grace_the_view_is_always_the_stores_merged_with_the_remembered_one() {
        let file = Config::parse(
            "[node]\nname = \"n0\"\nuplink = \"eth0\"\naddress = \"10.0.0.1\"\n\
             [datastore]\netcd = [\"http://127.0.0.1:2379\"]\n",
        )
        .unwrap();
        let k = Keys::new("/ipipd/v1/");
        let names = ["n1", "n2", "n3", "n4", "n5"];
        // Apart from each other, as the store's claims keep them; now and then one that
        // overlaps others (a store written by hand).
        let blocks = [
            "10.64.0.0/26",
            "10.64.0.64/26",
            "10.64.0.128/26",
            "10.64.1.0/26",
            "10.64.1.64/26",
            "10.64.2.0/26",
            "10.64.2.64/26",
            "10.64.3.0/26",
        ];
        let (overlapping_blocks, overlapping_pools) =
            (["10.64.0.0/25", "10.64.1.0/24"], ["10.64.0.0/17"]);
        let pools = ["10.64.0.0/16", "10.65.0.0/16", "10.66.0.0/16"];
        let pick = |rng: &mut Lcg, usual: &[&'static str], rare: &[&'static str]| {
            if rng.below(60) == 0 {
                rare[rng.below(rare.len())]
            } else {
                usual[rng.below(usual.len())]
            }
        };
        let mut rng = Lcg(7);
        let put = |t: &mut Tracker, rng: &mut Lcg| match rng.below(3) {
            0 => {
                let n = names[rng.below(names.len())];
                let a = format!("10.0.0.{}", 2 + rng.below(6));
                let v = format!(r#"{{"name":"{n}","address":"{a}"}}"#);
                t.take(&k, &k.node(n), Some(v.as_bytes()));
            }
            1 => {
                let b = pick(rng, &blocks, &overlapping_blocks);
                let n = names[rng.below(names.len())];
                let v = format!(r#"{{"cidr":"{b}","node":"{n}"}}"#);
                t.take(&k, &k.block(&net(b)), Some(v.as_bytes()));
            }
            _ => {
                let p = pick(rng, &pools, &overlapping_pools);
                let v = format!(r#"{{"cidr":"{p}","block_size":26}}"#);
                t.take(&k, &k.pool(&net(p)), Some(v.as_bytes()));
            }
        };
        let del = |t: &mut Tracker, rng: &mut Lcg| match rng.below(3) {
            0 => t.take(&k, &k.node(names[rng.below(names.len())]), None),
            1 => t.take(&k, &k.block(&net(blocks[rng.below(blocks.len())])), None),
            _ => t.take(&k, &k.pool(&net(pools[rng.below(pools.len())])), None),
        };
        let (mut merges_skipped, mut views) = (0, 0);
        for round in 0..40 {
            let mut t = Tracker::new(&file, Memory::default());
            // What the node forwarded on before: some of the store's keys.
            for _ in 0..12 {
                put(&mut t, &mut rng);
            }
            t.synced();
            t.begin_grace();
            let remembered = t.grace.as_ref().unwrap().1.clone();
            // The store as a new session lists it: some of what was remembered lost.
            for _ in 0..(round % 6) {
                del(&mut t, &mut rng);
            }
            t.nothing_to_merge = false;
            for _ in 0..60 {
                for _ in 0..=rng.below(3) {
                    if rng.below(10) == 0 {
                        del(&mut t, &mut rng);
                    } else {
                        put(&mut t, &mut rng);
                    }
                }
                let skipped = t.nothing_to_merge;
                let view = t.synced().memory.view;
                assert_eq!(*view, t.store.merged_with(&remembered));
                merges_skipped += usize::from(skipped);
                views += 1;
            }
        }
        // (The skip is exercised: most views here follow a deletion, which ends it.)
        assert!(
            merges_skipped > views / 10,
            "{merges_skipped} of {views} views without a merge"
        );
    }
}
