//! `ipipd run`: the daemon, on tokio. One task, the owner, holds the data plane and is the only
//! one that changes it; everything else sends it messages or wakes it:
//!
//! - signals (`tokio::signal::unix`): SIGHUP re-reads the file, SIGTERM/SIGINT stop;
//! - the kernel's link events (a netlink stream);
//! - the next-hop task ([`next_hops`]): the peers' next hops read again every 5 s and after
//!   neighbour and route events (a netlink stream of its own), off the owner's path;
//! - the control socket: a task per connection (at most [`MAX_CLIENTS`], each with a deadline
//!   for its request and a bound on its size) that forwards the request to the owner;
//! - the programs' aya-log ring buffer (`AsyncFd`).
//!
//! /metrics, /healthz and /readyz are served by [`crate::metrics`] from what the owner
//! publishes after every change.
//!
//! The parts: this module the owner and its loop; [`requests`] what it serves on the control
//! socket (runtime changes, IPAM, the CNI plugin); [`datastore`] the datastore's events;
//! [`kernel`] the kernel's (links, next hops, pins, filters due for TCX links); [`server`] the
//! control socket's server.

mod datastore;
mod kernel;
mod next_hops;
mod requests;
mod server;

use datastore::{datastore_start, follow_record, health_of, source_of};
use server::accept_loop;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use dataplane_common::MonitorMode;
use futures::{FutureExt as _, StreamExt as _};
use tokio::{
    io::unix::AsyncFd,
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};

use crate::{
    apply::{Dataplane, Wanted},
    config::{Config, DatastoreKind},
    control::{self, Reply, Request},
    datastore::{
        calico_sync,
        memory::Memory,
        sync::{self, Msg},
    },
    desired::{self, Change, RuntimeChanges},
    ipam::Ipam,
    metrics::{Attachment, DatastoreHealth, Health},
    net::Ipv4Net,
    netlink,
    plan::{self, Peers},
};

/// How often, without any event, the owner looks for pins removed under it (their inotify
/// watch should have said so).
const PIN_RECHECK: Duration = Duration::from_secs(5);
/// Control connections served at once; more are refused with an error reply.
pub const MAX_CLIENTS: usize = 64;
/// How long a control client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The state directory of a node: runtime changes, the control socket, netlink filter records.
pub fn default_state_dir(name: &str) -> PathBuf {
    PathBuf::from("/var/lib/ipipd").join(name)
}

/// What the control socket's connection tasks ask of the owner.
enum Command {
    /// A change, or one of the CNI plugin's requests.
    Request(Request, oneshot::Sender<Reply>),
    /// A monitor client connected; its id comes back.
    MonitorStart {
        drops_only: bool,
        id: oneshot::Sender<u64>,
    },
    MonitorEnd(u64),
}

/// The owner of the data plane.
struct Owner {
    config_path: PathBuf,
    file: Config,
    /// The file with the datastore's part (its blocks and peers), when there is one.
    base: Config,
    runtime: RuntimeChanges,
    /// The file with the runtime changes applied, validated: what the data plane is kept at.
    /// Recomputed only when the file or the runtime changes do.
    desired: Config,
    dp: Dataplane,
    /// The addresses handed out from the node's blocks (CNI ADD, `endpoint add`).
    ipam: Ipam,
    /// With a datastore: what the node forwards on (the cluster as it last said: the node's
    /// blocks, its peers), what it reports (reachable, resets, conflicts), and the blocks its
    /// pods and allocations use, for the datastore task.
    ds: Option<Memory>,
    ds_health: Option<DatastoreHealth>,
    ds_in_use: Option<watch::Sender<BTreeSet<Ipv4Net>>>,
    ds_cache: datastore::CacheWrites,
    /// calico-etcd mode: what of the view the node leaves out, with why (logged on change).
    skipped: Vec<(String, String)>,
    health: watch::Sender<Health>,
    /// Connected `ipipd monitor` clients, and whether each wants drops only.
    monitors: BTreeMap<u64, bool>,
    next_monitor: u64,
    /// Reconciling after events, and reading the peers' next hops: a failure that repeats on
    /// every event or check is logged when it starts, changes and ends, not each time.
    reconciling: Condition,
    reading_next_hops: Condition,
    next_hops: next_hops::Checker,
    promoting: Condition,
    /// Filters moved to TCX links.
    promoted: u64,
    /// A reconcile happened since /readyz and /metrics were last told (see [`Owner::settle`]).
    unpublished: bool,
}

/// A failing condition, logged on its transitions only: the node's log grows with what
/// happens to it, not with how often the daemon looks.
#[derive(Default)]
struct Condition(Option<String>);

impl Condition {
    fn failed(&mut self, what: &str, e: &anyhow::Error) {
        let msg = format!("{what}: {e:#}");
        if self.0.as_deref() == Some(msg.as_str()) {
            log::debug!("still {msg}");
        } else {
            log::error!("{msg}");
            self.0 = Some(msg);
        }
    }

    fn ok(&mut self) {
        if let Some(was) = self.0.take() {
            log::info!("recovered: no longer {was}");
        }
    }

    fn report(&mut self, what: &str, r: Result<()>) {
        match r {
            Ok(()) => self.ok(),
            Err(e) => self.failed(what, &e),
        }
    }
}

/// The datastore's task, as the start leaves it.
enum DsTask {
    Ipipd(
        crate::datastore::DatastoreCfg,
        Box<sync::Tracker>,
        Option<crate::datastore::Store>,
    ),
    Calico(
        crate::datastore::DatastoreCfg,
        Option<crate::datastore::Store>,
    ),
}

/// How `run` ends on SIGTERM/SIGINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// The data plane stays and keeps forwarding; the next start adopts it.
    Leave,
    /// Everything is removed, as `ipipd teardown` does (tests and demos).
    Teardown,
}

/// Runs the daemon until SIGTERM or SIGINT; then, by `on_exit`, leaves the data plane
/// forwarding or tears it down.
pub async fn run(
    config_path: &Path,
    state_dir: &Path,
    metrics: Option<SocketAddr>,
    on_exit: OnExit,
) -> Result<()> {
    let mut file = Config::load(config_path)?;
    log::info!(
        "node {}: uplink {}, address {} ({})",
        file.node.name,
        file.node.uplink,
        file.node.address,
        file.node.found
    );
    // From here on SIGTERM/SIGINT/SIGHUP are the owner's (not the default action, which would
    // end the process mid-change); one arriving during the bring-up waits for the loop.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Served from before the bring-up: /healthz answers at once, /readyz says not ready.
    let (health, health_rx) = watch::channel(Health {
        waiting_for: "starting".into(),
        ..Default::default()
    });
    if let Some(addr) = metrics {
        crate::metrics::serve(addr, file.node.pin_dir.clone(), health_rx).await?;
    }
    let runtime = RuntimeChanges::load(state_dir)?;
    let ipam = Ipam::load(state_dir)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let (ds, ds_task) = match file.datastore.clone() {
        Some(d) if file.datastore_kind == DatastoreKind::CalicoEtcd => {
            let (synced, store) = calico_sync::start(&d, state_dir).await?;
            file = follow_record(file, &synced.memory.view)?;
            log::info!(
                "datastore: Calico's: {} nodes, {} blocks, {} pools; this node's blocks {}, its pods {}",
                synced.memory.view.nodes.len(),
                synced.memory.view.blocks.len(),
                synced.memory.view.pools.len(),
                synced
                    .memory
                    .view
                    .blocks_of(&file.node.name)
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                synced
                    .memory
                    .view
                    .calico
                    .workloads
                    .values()
                    .filter(|w| w.node == file.node.name)
                    .count()
            );
            (Some(synced), Some(DsTask::Calico(d, store)))
        }
        Some(d) => {
            // The addresses the node's pods have, whichever blocks they turn out to be in.
            let addresses: Vec<std::net::Ipv4Addr> = file
                .endpoints
                .iter()
                .chain(&runtime.endpoints_added)
                .map(|e| e.address)
                .chain(ipam.allocations.iter().map(|a| a.address))
                .collect();
            let (synced, tracker, store) =
                datastore_start(&d, &file, state_dir, &addresses).await?;
            (
                Some(synced),
                Some(DsTask::Ipipd(d, Box::new(tracker), store)),
            )
        }
        None => (None, None),
    };
    let (base, skipped) = match &ds {
        Some(s) => sync::overlay_noting(&file, &s.memory),
        None => (file.clone(), Vec::new()),
    };
    let desired = runtime.apply(&base).map_err(|e| {
        anyhow!(
            "{}: the runtime changes no longer fit the file: {e}",
            state_dir.display()
        )
    })?;
    let dp = Dataplane::start(&desired, state_dir).await?;
    log::info!(
        "node {} up: uplink {} (mtu {}), {} endpoints live, {} pending, {} peers",
        file.node.name,
        dp.uplink.name,
        dp.mtu,
        dp.plan.endpoints.len(),
        dp.plan.pending.len(),
        desired.peers.len()
    );
    let source = source_of(&file);
    let (next_hops, mut checked) = next_hops::Checker::spawn(Peers::of(&desired, dp.underlay()))?;
    let mut owner = Owner {
        config_path: config_path.to_path_buf(),
        file,
        base,
        runtime,
        desired,
        dp,
        ipam,
        ds_health: ds
            .as_ref()
            .map(|s| health_of(s, source, true, String::new())),
        ds: ds.map(|s| s.memory),
        ds_in_use: None,
        ds_cache: Default::default(),
        skipped: Vec::new(),
        health,
        monitors: BTreeMap::new(),
        next_monitor: 0,
        reconciling: Condition::default(),
        promoting: Condition::default(),
        promoted: 0,
        reading_next_hops: Condition::default(),
        next_hops,
        unpublished: false,
    };
    owner.note_skipped(skipped);
    if let Some(m) = &owner.ds {
        owner.note_address(&m.view);
    }
    let mut ds_rx = ds_task.map(|task| {
        // One message in flight: a datastore task makes its next view when the owner has
        // taken the last (of every change until then), not one per change.
        let (tx, rx) = mpsc::channel(1);
        match task {
            DsTask::Ipipd(d, tracker, store) => {
                let (in_use, in_use_rx) = watch::channel(owner.blocks_in_use());
                owner.ds_in_use = Some(in_use);
                tokio::spawn(sync::run(d, *tracker, store, in_use_rx, tx));
            }
            DsTask::Calico(d, store) => {
                tokio::spawn(calico_sync::run(d, store, tx));
            }
        }
        rx
    });
    let result = owner
        .serve(
            &mut term,
            &mut int,
            &mut hup,
            state_dir,
            &mut ds_rx,
            &mut checked,
        )
        .await;
    let _ = std::fs::remove_file(control::socket_path(state_dir));
    match on_exit {
        OnExit::Leave => owner.dp.leave(),
        OnExit::Teardown => owner.dp.teardown(&owner.desired).await,
    }
    result
}

impl Owner {
    async fn serve(
        &mut self,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
        hup: &mut tokio::signal::unix::Signal,
        state_dir: &Path,
        ds_rx: &mut Option<mpsc::Receiver<Msg>>,
        checked: &mut mpsc::Receiver<next_hops::Checked>,
    ) -> Result<()> {
        let mut events = netlink::link_events()?;
        let (tx, mut rx) = mpsc::channel::<Command>(MAX_CLIENTS);
        let sock_path = control::socket_path(state_dir);
        let _ = std::fs::remove_file(&sock_path);
        let listener = UnixListener::bind(&sock_path)
            .with_context(|| format!("binding {}", sock_path.display()))?;
        std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))?;
        let accept = tokio::spawn(accept_loop(listener, tx));
        let mut log = self.dp.logger().and_then(|l| {
            // SAFETY: the logger owns its ring buffer's fd, open and the same for its life.
            unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
                .map_err(|e| log::warn!("the programs' log is not relayed: {e}"))
                .ok()
        });
        // Interfaces may have come and gone while we started: look once more.
        // (The bring-up wrote the config entry with the monitor off: nobody watches yet.)
        self.reconcile().await?;
        self.publish_now();
        log::info!("ready; control socket {}", sock_path.display());
        let mut pins = crate::pins::PinWatch::new(&self.dp.pin_dir)?;
        let mut tick = tokio::time::interval(PIN_RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        // Changes are reconciled on the kept kernel view; this one reads it all again.
        let mut full = tokio::time::interval(crate::incremental::FULL_EVERY);
        full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        full.reset();

        let result = loop {
            let promote_at = self.dp.next_promotion();
            tokio::select! {
                _ = term.recv() => { log::info!("SIGTERM: stopping"); break Ok(()); }
                _ = int.recv() => { log::info!("SIGINT: stopping"); break Ok(()); }
                _ = hup.recv() => self.reload().await,
                ev = events.next() => {
                    let Some(first) = ev else {
                        break Err(anyhow!("the kernel's netlink event stream ended"));
                    };
                    // Everything already queued is one batch: one reconcile for all of it.
                    let mut batch = vec![first];
                    while let Some(Some(e)) = events.next().now_or_never() {
                        batch.push(e);
                    }
                    self.on_events(&batch).await;
                }
                r = pins.removed() => {
                    if let Err(e) = r {
                        break Err(e.context("watching the pin directory"));
                    }
                    self.repair_pins(&pins).await;
                }
                // Also here, should a removal have gone unnoticed.
                _ = tick.tick() => self.repair_pins(&pins).await,
                Some(c) = checked.recv() => self.on_next_hops(c).await,
                _ = full.tick() => {
                    let r = self.reconcile().await;
                    self.reconciling.report("reconciling (the periodic full one)", r);
                }
                Some(cmd) = rx.recv() => self.command(cmd).await,
                Some(m) = async {
                    match ds_rx.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let mut batch = vec![m];
                    while let Some(Ok(m)) = ds_rx.as_mut().map(|r| r.try_recv()) {
                        batch.push(m);
                    }
                    self.on_datastore_batch(batch).await;
                }
                () = relay_log(&mut log) => {}
                // What changed, told once the change's requester has its answer (and once for
                // a burst of them).
                () = std::future::ready(()), if self.unpublished => self.publish_now(),
                // Netlink filters (a large first start's, a burst's) become TCX links when
                // due, one per turn (select! picks among ready arms at random: requests and
                // events go on).
                () = async {
                    match promote_at {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => self.promote().await,
                () = async {
                    match self.ds_cache.due {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => self.write_cache(),
            }
        };
        if self.ds_cache.due.is_some() {
            self.write_cache();
        }
        accept.abort();
        self.monitors.clear();
        result
    }

    /// What the node waits for before it is ready: the datastore, the uplink, each of the
    /// `wanted` attachments not in place (named). Nothing: ready.
    fn waiting_for(&self, wanted: &[Wanted]) -> Vec<String> {
        let mut missing: Vec<String> = Vec::new();
        if let Some(d) = self.ds_health.as_ref().filter(|d| !d.up) {
            missing.push(format!("the datastore ({})", d.reason));
        }
        if !self.dp.uplink_present() {
            missing.push(format!("the uplink {} (gone)", self.dp.uplink.name));
        }
        missing.extend(
            wanted
                .iter()
                .filter(|w| w.mode.is_none())
                .map(|w| format!("{} on {}", w.hook.name(), self.dp.ifname(w.ifindex))),
        );
        missing
    }

    /// What /readyz and /metrics report.
    fn publish(&self) {
        let wanted = self.dp.wanted();
        let attachments: Vec<Attachment> = wanted
            .iter()
            .map(|w| Attachment {
                interface: self.dp.ifname(w.ifindex),
                hook: w.hook.name(),
                mode: w.mode,
            })
            .collect();
        let missing = self.waiting_for(&wanted);
        self.health.send_replace(Health {
            ready: missing.is_empty(),
            waiting_for: missing.join(", "),
            attachments,
            pending: self
                .dp
                .plan
                .pending
                .iter()
                .map(|(a, n)| (a.to_string(), n.clone()))
                .collect(),
            attach_mode: if self.dp.tcx() { "tcx" } else { "netlink" },
            monitors: self.monitors.len(),
            datastore: self.ds_health.clone(),
        });
    }

    /// The data plane reconciled with the desired state it is kept at.
    async fn reconcile(&mut self) -> Result<()> {
        let applied = self.dp.reconcile(&self.desired).await;
        self.settle(applied, true)
    }

    /// A new desired state (`runtime` over `file`, `base` the file with the datastore's part),
    /// reconciled as a change (see [`crate::incremental`]): by parts when only endpoints and
    /// peers differ; kept when it went through.
    async fn adopt(&mut self, file: Config, base: Config, runtime: RuntimeChanges) -> Result<()> {
        let desired = runtime.apply(&base)?;
        let delta = plan::Delta::between(&self.desired, &desired);
        let applied = match &delta {
            Some(d) => self.dp.reconcile_delta(&desired, d).await,
            None => self.dp.reconcile_change(&desired, &[]).await,
        };
        if applied.is_ok() {
            (self.file, self.base, self.runtime, self.desired) = (file, base, runtime, desired);
        }
        let peers = delta.as_ref().is_none_or(plan::Delta::peers_changed);
        self.settle(applied, peers)
    }

    /// After every reconcile, whether or not it went through: the next-hop check given the
    /// peers (when they may have changed: at 5,000 peers the list is not copied for nothing),
    /// and what /readyz and /metrics say to be updated by the loop's next turn, after the
    /// reply (at 10,000 endpoints /readyz's list alone is ~10 ms a change would wait for).
    fn settle(&mut self, applied: Result<()>, peers: bool) -> Result<()> {
        if peers {
            self.next_hops
                .set(Peers::of(&self.desired, self.dp.underlay()));
        }
        self.unpublished = true;
        applied
    }

    /// /readyz, /metrics and the datastore task told what the data plane is now.
    fn publish_now(&mut self) {
        self.publish();
        self.publish_in_use();
        self.unpublished = false;
    }

    /// SIGHUP: re-read the file; replace only its part; an invalid file changes nothing.
    async fn reload(&mut self) {
        let view = self.ds.as_ref().map(|m| m.view.clone()).unwrap_or_default();
        let file = match Config::load(&self.config_path).and_then(|f| follow_record(f, &view)) {
            Ok(f) => f,
            Err(e) => {
                log::error!("SIGHUP: config rejected, keeping the running state: {e:#}");
                return;
            }
        };
        if file.node != self.file.node {
            // (The rest of the file may change; [node] is what the programs were loaded with.)
            log::error!("SIGHUP: [node] changed; that needs a restart. Keeping the running state.");
            return;
        }
        let runtime = self.runtime.clone();
        // A reload reads the kernel in full.
        self.dp.forget_view();
        let base = self.base_of(&file);
        match self.adopt(file, base, runtime).await {
            Ok(()) => log::info!("SIGHUP: config reloaded"),
            Err(e) => log::error!(
                "SIGHUP: config rejected or not applied, keeping the running state: {e:#}"
            ),
        }
    }

    /// The file with what the datastore says (its blocks, its peers), when there is one.
    fn base_of(&self, file: &Config) -> Config {
        match &self.ds {
            Some(m) => sync::overlay(file, m),
            None => file.clone(),
        }
    }

    /// A runtime change, applied then persisted.
    async fn change(&mut self, change: &Change) -> Result<()> {
        let rt = self.runtime.with(&self.base, change)?;
        self.apply_changes(rt, std::slice::from_ref(change)).await?;
        self.runtime.save(&self.dp.state_dir)?;
        log::info!("applied {change:?}");
        Ok(())
    }

    /// Runtime changes (each of another address; `rt` the runtime state with them) applied.
    /// Endpoints' and peers' that fit the desired state as it is change it in place and are
    /// planned by parts (see [`desired::changes_in_place`]); otherwise the new desired state is
    /// made and checked whole, which also says what a change breaks.
    async fn apply_changes(&mut self, rt: RuntimeChanges, changes: &[Change]) -> Result<()> {
        let Some(delta) = desired::changes_in_place(&mut self.desired, changes) else {
            let (file, base) = (self.file.clone(), self.base.clone());
            return self.adopt(file, base, rt).await;
        };
        let applied = self.dp.reconcile_delta(&self.desired, &delta).await;
        if applied.is_ok() {
            self.runtime = rt;
        } else {
            desired::revert(&mut self.desired, &delta);
        }
        let peers = delta.peers_changed();
        self.settle(applied, peers)
    }

    /// The programs' monitor mode for the connected clients: all decisions if one wants them.
    fn update_monitor(&mut self) {
        let mode = if self.monitors.is_empty() {
            MonitorMode::Off
        } else if self.monitors.values().any(|drops| !drops) {
            MonitorMode::All
        } else {
            MonitorMode::Drops
        };
        match self.dp.set_monitor(mode) {
            Ok(()) => log::info!("monitor {mode:?} ({} client(s))", self.monitors.len()),
            Err(e) => log::error!("setting the monitor mode: {e:#}"),
        }
        self.publish();
    }
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Relays what the programs logged into this process's log, once their ring buffer has some.
async fn relay_log(log: &mut Option<AsyncFd<Logger>>) {
    let Some(l) = log.as_mut() else {
        return std::future::pending().await;
    };
    match l.readable_mut().await {
        Ok(mut g) => {
            g.get_inner_mut().flush();
            g.clear_ready();
        }
        Err(e) => {
            log::warn!("the programs' log: {e}; no longer relayed");
            *log = None;
        }
    }
}
