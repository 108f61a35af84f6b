//! The peers' next hops, checked off the owner's path. How the kernel routes each peer, and
//! the MAC of each next hop, is what the maps' routes carry (their L2); the kernel changes
//! them without asking ipipd (a gateway's MAC, a route, a neighbour gone stale). This task
//! re-reads them every [`RECHECK`] and when a neighbour or route event says one may have
//! changed, asks the kernel to resolve the next hops that have no MAC, and sends what it read
//! to the owner, which reconciles only when a peer's next hop is not what its routes were
//! built from. At 5,000 peers a check is 5,000 route lookups: the owner, which also serves
//! changes, does not wait for them.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::Result;
use tokio::sync::{Notify, mpsc, watch};

use crate::{
    netlink::Netlink,
    plan::{self, KernelView, NextHop, Peers, Underlay},
};

/// How often, without any event, the next hops are read again.
pub const RECHECK: Duration = Duration::from_secs(5);

/// One check: the underlay it was read for, and each peer's next hop then.
pub struct Checked {
    pub underlay: Underlay,
    pub hops: Result<BTreeMap<Ipv4Addr, NextHop>>,
}

/// The owner's end: what to check (the desired state's peers), and a way to ask for a check
/// now.
pub struct Checker {
    peers: watch::Sender<Peers>,
    kick: Arc<Notify>,
}

impl Checker {
    /// Starts the task, on a netlink socket of its own (thousands of route lookups do not
    /// queue the owner's requests); its results arrive on the returned receiver.
    pub fn spawn(peers: Peers) -> Result<(Self, mpsc::Receiver<Checked>)> {
        let nl = Netlink::new()?;
        let (peers, peers_rx) = watch::channel(peers);
        let kick = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(run(nl, peers_rx, kick.clone(), tx));
        Ok((Checker { peers, kick }, rx))
    }

    /// What the next checks read (a no-op when it is what they read already).
    pub fn set(&self, peers: Peers) {
        self.peers.send_if_modified(|p| {
            let changed = *p != peers;
            *p = peers;
            changed
        });
    }

    /// A check as soon as the task is free (events during a check make one more, not many).
    pub fn kick(&self) {
        self.kick.notify_one();
    }
}

async fn run(
    nl: Netlink,
    peers: watch::Receiver<Peers>,
    kick: Arc<Notify>,
    tx: mpsc::Sender<Checked>,
) {
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    // Next hops found unresolved by the last check: an event-driven check asks only for the
    // newly unresolved ones, the periodic one for all (as the kernel's own retries would).
    let mut unresolved = std::collections::BTreeSet::new();
    loop {
        let periodic = tokio::select! {
            _ = tick.tick() => true,
            () = kick.notified() => false,
        };
        let peers = peers.borrow().clone();
        let hops = check(&nl, &peers).await;
        if let (Ok(h), uplink @ 1..) = (&hops, peers.underlay.uplink) {
            let now = plan::unresolved(h);
            let ask: Vec<Ipv4Addr> = if periodic {
                now.iter().copied().collect()
            } else {
                now.difference(&unresolved).copied().collect()
            };
            nl.neighbours_resolve(ask, uplink).await;
            unresolved = now;
        }
        let underlay = peers.underlay;
        if tx.send(Checked { underlay, hops }).await.is_err() {
            return; // the owner is gone
        }
    }
}

async fn check(nl: &Netlink, peers: &Peers) -> Result<BTreeMap<Ipv4Addr, NextHop>> {
    let view = KernelView::read_next_hops(nl, peers).await?;
    Ok(plan::next_hops(peers, &view))
}
