//! The peers' next hops, checked off the owner's path. How the kernel routes each peer, and
//! the MAC of each next hop, is what the maps' routes carry (their L2); the kernel changes
//! them without asking ipipd (a gateway's MAC, a route, a neighbour gone stale). This task
//! re-reads them every [`RECHECK`] and when a neighbour or route event (on a netlink socket
//! of its own: the owner never wakes for them) says one may have changed, asks the kernel to
//! resolve the next hops that have no MAC (less and less often while they stay so:
//! [`Asking`]), and sends what it read to the owner, which reconciles only when a peer's next
//! hop is not what its routes were built from. At 5,000 peers a check is 5,000 route lookups:
//! the owner, which also serves changes, does not wait for them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::Result;
use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::{mpsc, watch};

use crate::{
    netlink::{self, Netlink},
    plan::{self, KernelView, NextHop, Peers, Underlay},
};

/// How often, without any event, the next hops are read again.
pub const RECHECK: Duration = Duration::from_secs(5);

/// The most periodic checks an unresolved next hop waits between two requests to resolve it
/// (12: a minute).
const ASK_AT_MOST_EVERY: u32 = 12;

/// The most next hops one check asks the kernel to resolve; the rest wait for the next
/// checks, the longest waiting first.
const ASK_PER_CHECK: usize = 256;

/// After a check the task rests this many times as long as the check took before an event
/// brings the next one: it is busy at most a fifth of the time, however many peers and
/// events there are (a check's own requests to resolve bring neighbour events, and at 5,000
/// peers a check is tens of milliseconds of route lookups), and with few peers an event is
/// still followed at once.
const REST_PER_CHECK: u32 = 4;

/// One check: the underlay it was read for, and each peer's next hop then.
pub struct Checked {
    pub underlay: Underlay,
    pub hops: Result<BTreeMap<Ipv4Addr, NextHop>>,
}

/// The owner's end: what to check (the desired state's peers).
pub struct Checker {
    peers: watch::Sender<Peers>,
}

impl Checker {
    /// Starts the task, on netlink sockets of its own (thousands of route lookups do not
    /// queue the owner's requests); its results arrive on the returned receiver.
    pub fn spawn(peers: Peers) -> Result<(Self, mpsc::Receiver<Checked>)> {
        let nl = Netlink::new()?;
        let events = netlink::next_hop_events()?;
        let (peers, peers_rx) = watch::channel(peers);
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(run(nl, events, peers_rx, tx));
        Ok((Checker { peers }, rx))
    }

    /// What the next checks read (a no-op when it is what they read already).
    pub fn set(&self, peers: Peers) {
        self.peers.send_if_modified(|p| {
            let changed = *p != peers;
            *p = peers;
            changed
        });
    }
}

async fn run(
    nl: Netlink,
    events: impl Stream<Item = ()> + Unpin,
    peers: watch::Receiver<Peers>,
    tx: mpsc::Sender<Checked>,
) {
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let (mut asking, mut ticks) = (Asking::default(), 0u64);
    // (Fused: should the socket fail, which netlink_proto logs, only the periodic checks stay.)
    let mut events = events.fuse();
    let mut table_full_said: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => ticks += 1,
            Some(()) = events.next() => {
                // Everything already queued is one check (events during a check, one more).
                while let Some(Some(())) = events.next().now_or_never() {}
            }
        }
        let started = tokio::time::Instant::now();
        let peers = peers.borrow().clone();
        let hops = check(&nl, &peers).await;
        if let (Ok(h), uplink @ 1..) = (&hops, peers.underlay.uplink) {
            let unresolved = plan::unresolved(h);
            let ask = asking.due(&unresolved, ticks);
            let refused = nl.neighbours_resolve(ask, uplink).await;
            if refused > 0 && table_full_said.is_none_or(|t| t.elapsed() >= SAY_TABLE_FULL_EVERY) {
                table_full_said = Some(tokio::time::Instant::now());
                say_table_full(unresolved.len(), h.len());
            }
        }
        let took = started.elapsed();
        let underlay = peers.underlay;
        if tx.send(Checked { underlay, hops }).await.is_err() {
            return; // the owner is gone
        }
        tokio::time::sleep(took * REST_PER_CHECK).await;
    }
}

/// How often, at most, a full neighbour table is said ([`say_table_full`]).
const SAY_TABLE_FULL_EVERY: Duration = Duration::from_secs(600);

/// The kernel refused to resolve a next hop because its neighbour table is full (ENOBUFS).
/// Its default size (`gc_thresh3`, 1,024 entries, for all namespaces together) is too small
/// for the MACs of thousands of peers on the uplink's link, which their routes need. (The
/// limit is readable in the host's namespace only.)
fn say_table_full(unresolved: usize, peers: usize) {
    let limit = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
        .map(|s| format!(" = {}", s.trim()))
        .unwrap_or_default();
    log::warn!(
        "the kernel's neighbour table is full (net.ipv4.neigh.default.gc_thresh3{limit}): \
         {unresolved} next hops of {peers} peers have no MAC; raise gc_thresh3 (and \
         gc_thresh2) above the number of peers"
    );
}

async fn check(nl: &Netlink, peers: &Peers) -> Result<BTreeMap<Ipv4Addr, NextHop>> {
    let view = KernelView::read_next_hops(nl, peers).await?;
    Ok(plan::next_hops(peers, &view))
}

/// When the kernel is asked to resolve each unresolved next hop: at once when a check first
/// finds it unresolved, then again after 1, 2, 4, 8 and from then on every
/// [`ASK_AT_MOST_EVERY`] periodic checks while it stays so, and at most [`ASK_PER_CHECK`] in
/// one check (new ones first, then the longest waiting). A peer that is away, or a cluster's
/// many nodes that never answer, then do not cost the node thousands of resolutions at once
/// every few seconds (at 5,000 such peers that flood, and the neighbour events of its
/// failures, held the datastore's changes back by 150–250 ms). A peer that comes back is
/// found sooner anyway: its ARP or its traffic puts it in the neighbour table, whose event
/// brings a check; and a packet that needs its MAC meanwhile goes through the kernel, which
/// resolves it then.
#[derive(Default)]
struct Asking {
    /// Per next hop asked for and still unresolved: the periodic check it is due again at, and
    /// the wait after that.
    next: BTreeMap<Ipv4Addr, (u64, u32)>,
}

impl Asking {
    /// The next hops to ask for now, of those a check at periodic check `tick` found
    /// `unresolved`.
    fn due(&mut self, unresolved: &BTreeSet<Ipv4Addr>, tick: u64) -> Vec<Ipv4Addr> {
        self.next.retain(|via, _| unresolved.contains(via));
        // (Due at 0: never asked for.)
        let mut due: Vec<(u64, Ipv4Addr)> = unresolved
            .iter()
            .filter_map(|via| match self.next.get(via) {
                None => Some((0, *via)),
                Some((at, _)) if tick >= *at => Some((*at, *via)),
                Some(_) => None,
            })
            .collect();
        due.sort_unstable();
        due.truncate(ASK_PER_CHECK);
        for (_, via) in &due {
            let (at, wait) = self.next.entry(*via).or_insert((tick, 1));
            *at = tick + u64::from(*wait);
            *wait = (*wait * 2).min(ASK_AT_MOST_EVERY);
        }
        due.into_iter().map(|(_, via)| via).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unresolved_next_hop_is_asked_for_at_once_then_less_and_less_often() {
        let (a, b) = (Ipv4Addr::new(172, 31, 0, 1), Ipv4Addr::new(172, 31, 0, 2));
        let mut asking = Asking::default();
        let only_a: BTreeSet<Ipv4Addr> = [a].into();
        let both: BTreeSet<Ipv4Addr> = [a, b].into();
        // The periodic checks at which `a` is asked for, unresolved throughout.
        let asked: Vec<u64> = (0..60)
            .filter(|t| asking.due(&only_a, *t) == vec![a])
            .collect();
        assert_eq!(asked, vec![0, 1, 3, 7, 15, 27, 39, 51]);
        // An event-driven check between two periodic ones (same tick) asks for what is new only.
        assert_eq!(asking.due(&both, 60), vec![b]);
        assert_eq!(asking.due(&both, 60), Vec::<Ipv4Addr>::new());
        // `a` resolved (`b` asked again a check later), then unresolved again: asked for at
        // once, and its waits start over.
        assert_eq!(asking.due(&[b].into(), 61), vec![b]);
        assert_eq!(asking.due(&both, 62), vec![a]);
        assert_eq!(asking.due(&both, 63), vec![a, b]);
        assert_eq!(asking.due(&both, 64), Vec::<Ipv4Addr>::new());
        assert_eq!(asking.due(&both, 65), vec![a]);
    }

    #[test]
    fn one_check_asks_for_a_bounded_number_new_ones_first_then_the_longest_waiting() {
        let via = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 31, 0, 1)) + i);
        let many: BTreeSet<Ipv4Addr> = (0..600).map(via).collect();
        let mut asking = Asking::default();
        let first = asking.due(&many, 0);
        assert_eq!(first, (0..256).map(via).collect::<Vec<_>>());
        // The same tick (an event-driven check): the next new ones.
        assert_eq!(
            asking.due(&many, 0),
            (256..512).map(via).collect::<Vec<_>>()
        );
        // A check later: the last 88 new ones first, then the longest waiting of those due.
        let next = asking.due(&many, 1);
        assert_eq!(next.len(), 256);
        assert_eq!(next[..88], (512..600).map(via).collect::<Vec<_>>()[..]);
        assert_eq!(next[88..], (0..168).map(via).collect::<Vec<_>>()[..]);
        // Every one is asked for again, none twice before the others' turn.
        let rest = asking.due(&many, 1);
        assert_eq!(rest, (168..424).map(via).collect::<Vec<_>>());
    }
}
