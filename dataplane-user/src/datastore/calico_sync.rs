//! A node's side of Calico's datastore (calico-etcd mode): read only. A start lists what
//! ipipd reads of it (see [`super::calico`]) at one revision; the daemon's task then watches
//! the prefix from there and sends the owner the view after every change of it. A failed
//! session (etcd unreachable, a compacted revision) is reported and a new one lists again,
//! with backoff; the data plane forwards on the last view meanwhile, and a start while etcd is
//! away resumes from the view cached in the state directory. Nothing is ever written: no
//! registration, no lease, no key.

use std::{convert::Infallible, path::Path};

use anyhow::{Result, anyhow, bail};
use etcd_client::EventType;
use futures::FutureExt as _;
use tokio::{sync::mpsc, time::Instant};

use super::{
    DatastoreCfg, Store,
    calico::{Calico, CalicoKeys},
    memory::Memory,
    sync::{self, Msg, Synced},
};

/// Everything ipipd reads of Calico's store, each prefix at the revision of the first.
pub async fn list(store: &Store, keys: &CalicoKeys) -> Result<(Calico, i64)> {
    let mut c = Calico::default();
    let mut rev = None;
    for prefix in keys.all() {
        let (kvs, r) = store.get_prefix(prefix, rev).await?;
        rev = Some(r);
        for (k, v) in kvs {
            c.apply(keys, &k, Some(&v));
        }
    }
    report_bad(&mut c);
    Ok((c, rev.unwrap_or(0)))
}

fn report_bad(c: &mut Calico) {
    for (k, e) in c.bad.drain(..) {
        log::warn!("datastore: ignoring {k}: {e}");
    }
}

fn synced(c: &Calico, revision: i64) -> Synced {
    Synced {
        memory: Memory {
            view: c.view().into(),
            revision,
            ..Memory::default()
        },
        resets: 0,
        last_reset: None,
        grace: false,
        conflicts: Vec::new(),
    }
}

/// The store at a start: listed, and cached for a start while etcd is away; unreachable, the
/// view an earlier run cached (the node forwards on what it last knew and the task keeps
/// trying), else an error before anything is attached.
pub async fn start(d: &DatastoreCfg, state_dir: &Path) -> Result<(Synced, Option<Store>)> {
    let r = async {
        let store = Store::connect(d).await?;
        let (c, rev) = list(&store, &CalicoKeys::new(&d.prefix)).await?;
        anyhow::Ok((synced(&c, rev), store))
    }
    .await;
    match r {
        Ok((s, store)) => {
            sync::save_cache(state_dir, &s.memory)?;
            Ok((s, Some(store)))
        }
        Err(e) => match sync::load_cache(state_dir) {
            Some(mem) if !mem.view.nodes.is_empty() => {
                log::warn!(
                    "datastore: {e:#}; starting from the last known state in {}",
                    state_dir.display()
                );
                let mut s = synced(&Calico::default(), mem.revision);
                s.memory = mem;
                Ok((s, None))
            }
            _ => Err(e.context("datastore")),
        },
    }
}

/// Runs sessions until the owner goes; the first on `connected` when the start left one.
pub async fn run(cfg: DatastoreCfg, mut connected: Option<Store>, tx: mpsc::Sender<Msg>) {
    let mut backoff = super::sync::Backoff::default();
    loop {
        let started = Instant::now();
        let Err(e) = session(&cfg, connected.take(), &tx).await;
        if tx.send(Msg::Down(format!("{e:#}"))).await.is_err() {
            return;
        }
        backoff.wait(started).await;
    }
}

/// One answer of the watch applied to Calico's objects: whether one of them changed; the
/// revision it brings. A cancelled watch (a compacted revision) is an error: list again.
fn take_events(
    c: &mut Calico,
    keys: &CalicoKeys,
    resp: &etcd_client::WatchResponse,
    revision: &mut i64,
) -> Result<bool> {
    super::sync::not_cancelled(resp)?;
    if let Some(h) = resp.header() {
        *revision = (*revision).max(h.revision());
    }
    let mut ours = false;
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let key = String::from_utf8_lossy(kv.key());
        ours |= match ev.event_type() {
            EventType::Put => c.apply(keys, &key, Some(kv.value())),
            EventType::Delete => c.apply(keys, &key, None),
        };
    }
    Ok(ours)
}

async fn send(tx: &mpsc::Sender<Msg>, s: Synced) -> Result<()> {
    tx.send(Msg::View(Box::new(s)))
        .await
        .map_err(|_| anyhow!("the daemon is stopping"))
}

async fn session(
    cfg: &DatastoreCfg,
    connected: Option<Store>,
    tx: &mpsc::Sender<Msg>,
) -> Result<Infallible> {
    let store = match connected {
        Some(s) => s,
        None => Store::connect(cfg).await?,
    };
    let keys = CalicoKeys::new(&cfg.prefix);
    let (mut c, rev) = list(&store, &keys).await?;
    let mut last = synced(&c, rev);
    send(tx, last.clone()).await?;
    let prefix = format!("{}/", cfg.prefix.trim_end_matches('/'));
    let mut events = store.watch_after(prefix, rev).await?;
    loop {
        let Some(resp) = events.message().await? else {
            bail!("the watch ended")
        };
        let mut revision = last.memory.revision;
        let mut ours = take_events(&mut c, &keys, &resp, &mut revision)?;
        // What else the watch has ready is taken too: one view for a burst (as ipipd's own
        // datastore's task does).
        while let Some(m) = events.message().now_or_never() {
            let Some(resp) = m? else {
                bail!("the watch ended")
            };
            ours |= take_events(&mut c, &keys, &resp, &mut revision)?;
        }
        report_bad(&mut c);
        if !ours {
            last.memory.revision = revision;
            continue;
        }
        let now = synced(&c, revision);
        if now.memory.view != last.memory.view {
            send(tx, now.clone()).await?;
        }
        last = now;
    }
}
