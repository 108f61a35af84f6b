//! The daemon's datastore task: a session registers the node, keeps its liveness key's lease,
//! lists the prefix and watches it from that revision, sending the owner the view after each
//! change. A failed session (etcd unreachable, a lease lost, a compacted revision) is reported
//! and a new one started with backoff; the data plane is never touched for it.

use std::{convert::Infallible, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Result, anyhow, bail};
use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use super::{
    DatastoreCfg, REQUEST_TIMEOUT, Store,
    model::{NodeRecord, View},
};
use crate::{config::Config, pins::write_atomic};

/// The liveness key's lease, in seconds: a daemon gone this long shows as down.
pub const LEASE_TTL: i64 = 10;

/// What the task tells the owner.
#[derive(Debug)]
pub enum Msg {
    /// The cluster as the datastore has it now.
    View(View),
    /// The datastore is not reachable (why); the last view stands.
    Down(String),
}

/// Runs sessions until the owner goes; the first on `connected` when the start left one.
pub async fn run(
    cfg: DatastoreCfg,
    name: String,
    address: Ipv4Addr,
    mut connected: Option<Store>,
    tx: mpsc::Sender<Msg>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = tokio::time::Instant::now();
        let Err(e) = session(&cfg, connected.take(), &name, address, &tx).await;
        if tx.send(Msg::Down(format!("{e:#}"))).await.is_err() {
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    cfg: &DatastoreCfg,
    connected: Option<Store>,
    name: &str,
    address: Ipv4Addr,
    tx: &mpsc::Sender<Msg>,
) -> Result<Infallible> {
    let store = match connected {
        Some(s) => s,
        None => Store::connect(cfg).await?,
    };
    store
        .register(&NodeRecord {
            name: name.to_string(),
            address,
        })
        .await?;
    let lease = store.alive(name, LEASE_TTL).await?;
    let (mut view, rev) = store.list().await?;
    report_bad(&mut view);
    tx.send(Msg::View(view.clone()))
        .await
        .map_err(|_| anyhow!("the daemon is stopping"))?;
    let mut client = store.client();
    let (mut keeper, mut alive) =
        tokio::time::timeout(REQUEST_TIMEOUT, client.lease_keep_alive(lease))
            .await
            .map_err(|_| anyhow!("keep-alive: no answer"))??;
    let mut events = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.watch(
            store.keys.all(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        ),
    )
    .await
    .map_err(|_| anyhow!("watch: no answer"))??;
    let mut tick = tokio::time::interval(Duration::from_secs((LEASE_TTL / 3).max(1) as u64));
    loop {
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
            m = events.message() => {
                let Some(resp) = m? else { bail!("the watch ended") };
                if resp.canceled() {
                    bail!(
                        "the watch was cancelled ({}; compacted at revision {}): listing again",
                        resp.cancel_reason(),
                        resp.compact_revision()
                    );
                }
                if resp.events().is_empty() {
                    continue;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    match ev.event_type() {
                        EventType::Put => view.apply(&store.keys, &key, Some(kv.value())),
                        EventType::Delete => view.apply(&store.keys, &key, None),
                    }
                }
                report_bad(&mut view);
                tx.send(Msg::View(view.clone()))
                    .await
                    .map_err(|_| anyhow!("the daemon is stopping"))?;
            }
        }
    }
}

fn report_bad(view: &mut View) {
    for (k, e) in view.bad.drain(..) {
        log::warn!("datastore: ignoring {k}: {e}");
    }
}

/// The file's config with what the datastore says: the node's claimed blocks added, every
/// other registered node as a peer.
pub fn overlay(file: &Config, view: &View) -> Config {
    let mut c = file.clone();
    for b in view.blocks_of(&file.node.name) {
        if !c.blocks.contains(&b) {
            c.blocks.push(b);
        }
    }
    c.peers = view.peers_for(&file.node.name, file.node.address);
    c
}

const CACHE: &str = "datastore.json";

/// The last view, kept so that a start while etcd is away resumes from it.
pub fn save_cache(state_dir: &Path, view: &View) -> Result<()> {
    write_atomic(&state_dir.join(CACHE), &serde_json::to_vec(view)?)
}

pub fn load_cache(state_dir: &Path) -> Option<View> {
    let t = std::fs::read(state_dir.join(CACHE)).ok()?;
    serde_json::from_slice(&t).ok()
}
