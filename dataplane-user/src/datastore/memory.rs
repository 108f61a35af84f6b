//! What a node remembers of the datastore, and what it makes of a store that forgot. Pure.
//!
//! etcd is the cluster's record, but each node also knows what it owns. A store emptied (a lost
//! disk) or restored from an older snapshot is a disaster-recovery event, not an instruction
//! to tear down forwarding:
//!
//! - **Detected** ([`forgot`]): the store's identity (`<prefix>/cluster`) is gone or is not the
//!   one the node knew, its revision is below the newest the node saw, or the node's own
//!   registration is gone or older than the node's last write of it (and no `ipipd node
//!   remove` left its tombstone). A node that detects it says so in the store (`reasserting`),
//!   and the others take it as detected too.
//! - **Re-asserted** ([`assert_blocks`]): the node puts back the blocks it holds, each by a
//!   transaction that only creates a free block; its registration and its config's pools
//!   too.
//! - **Forwarding holds**: for [`GRACE`] after every session start (a store that comes back
//!   is not trusted to be complete before its nodes have had a session of their own) and
//!   after a detected reset, the node forwards on the store's view merged with the one it
//!   last had ([`super::model::View::merged_with`]): what the store adds is taken at once,
//!   what it lacks goes only after the grace, so no peer's block goes while its node puts it
//!   back.
//! - **Conflicts are loud**: a block the node's pods use that the store gives to another is
//!   disputed (a key of its own under the node's lease). The store's owner, the earlier claim,
//!   wins; the loser keeps the block for its pods and allocates no new pod from it; both
//!   report it. The dispute ends when the loser's pods leave the block.

use std::{collections::BTreeSet, fmt, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::model::{ClusterId, View};
use crate::net::Ipv4Net;

/// How long after a session start or a detected reset a node keeps the peers' blocks the store
/// no longer lists: twice the liveness lease, so that every live node has had a session (each
/// retries within 5 s) and put its blocks back.
pub const GRACE: Duration = Duration::from_secs(2 * super::sync::LEASE_TTL as u64);

/// What a node keeps of the datastore in its state directory (`datastore.json`), so that a
/// start while etcd is away resumes from it and a start after a reset knows what it held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// The view the node last forwarded on: shared, not copied, between the datastore task,
    /// the owner and the task's grace (at 5,000 nodes a copy is milliseconds of allocation).
    #[serde(flatten)]
    pub view: Arc<View>,
    /// The newest revision of the store seen.
    #[serde(default)]
    pub revision: i64,
    /// The revision of the node's last write of its registration.
    #[serde(default)]
    pub registered: i64,
    /// The blocks the node holds: its own in the store, and those it disputes. (None in the
    /// cache of an older version: the view's blocks of the node.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<BTreeSet<Ipv4Net>>,
    /// Of `held`, those the store gives to another node.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub disputed: BTreeSet<Ipv4Net>,
}

impl Memory {
    /// The blocks `me` holds.
    pub fn held(&self, me: &str) -> BTreeSet<Ipv4Net> {
        self.held
            .clone()
            .unwrap_or_else(|| self.view.blocks_of(me).into_iter().collect())
    }
}

/// How a store showed that it forgot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forgot {
    /// Its identity is gone (emptied).
    IdentityGone,
    /// Another identity (emptied, and another node wrote a new one).
    IdentityChanged { was: String, now: String },
    /// The revision went back (restored from an older snapshot).
    RevisionBack { was: i64, now: i64 },
    /// The node's registration is gone, or older than its last write (restored from a
    /// snapshot taken before it).
    Registration { wrote: i64, now: Option<i64> },
    /// Another node found that the store forgot.
    Peer(String),
}

impl fmt::Display for Forgot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forgot::IdentityGone => write!(f, "its identity is gone"),
            Forgot::IdentityChanged { was, now } => {
                write!(f, "its identity changed from {was} to {now}")
            }
            Forgot::RevisionBack { was, now } => {
                write!(f, "its revision went back from {was} to {now}")
            }
            Forgot::Registration { wrote, now: None } => write!(
                f,
                "this node's registration, written at revision {wrote}, is gone"
            ),
            Forgot::Registration {
                wrote,
                now: Some(now),
            } => write!(
                f,
                "this node's registration is of revision {now}, older than its write at {wrote}"
            ),
            Forgot::Peer(node) => write!(f, "node {node} found that it forgot"),
        }
    }
}

/// What the store shows when a session starts: its identity and revision, and the node's own
/// registration (the revision it was last written at) and tombstone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen<'a> {
    pub cluster: Option<&'a ClusterId>,
    pub revision: i64,
    pub registration: Option<i64>,
    /// `ipipd node remove` removed this node: its registration went by an operator's hand.
    pub removed: bool,
}

/// Whether the store forgot what the node knew. A node that knew nothing (its first start,
/// or a cache of an older version) detects only a revision that went back.
pub fn forgot(known: &Memory, seen: &Seen) -> Option<Forgot> {
    let (now, rev) = (seen.cluster, seen.revision);
    match (&known.view.cluster, now) {
        (Some(_), None) => return Some(Forgot::IdentityGone),
        (Some(was), Some(now)) if was.id != now.id => {
            return Some(Forgot::IdentityChanged {
                was: was.id.clone(),
                now: now.id.clone(),
            });
        }
        _ => {}
    }
    if rev < known.revision {
        return Some(Forgot::RevisionBack {
            was: known.revision,
            now: rev,
        });
    }
    let wrote = known.registered;
    (wrote > 0 && !seen.removed && seen.registration.is_none_or(|r| r < wrote)).then_some(
        Forgot::Registration {
            wrote,
            now: seen.registration,
        },
    )
}

/// What a node does about the blocks it holds, against the store's view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assertion {
    /// Free in the store: to claim.
    pub claim: Vec<Ipv4Net>,
    /// Another node's in the store while this node's pods use it.
    pub dispute: BTreeSet<Ipv4Net>,
    /// No longer held: (block, the store's owner).
    pub dropped: Vec<(Ipv4Net, Option<String>)>,
    /// What the node holds now: its blocks in the store, the claims, the disputes.
    pub held: BTreeSet<Ipv4Net>,
}

/// For each block `me` holds: its own in the store, it stays; free, it is claimed back after
/// a reset or while pods use it (else the store's word stands: an operator released it);
/// another's, it is disputed while pods use it, else given up. Blocks the store gives `me`
/// are held too.
pub fn assert_blocks(
    me: &str,
    held: &BTreeSet<Ipv4Net>,
    in_use: &BTreeSet<Ipv4Net>,
    view: &View,
    reset: bool,
) -> Assertion {
    let mut a = Assertion {
        held: view.blocks_of(me).into_iter().collect(),
        ..Default::default()
    };
    for b in held {
        match view.owner_of(b) {
            Some((_, owner)) if **owner == *me => {}
            Some(_) if in_use.contains(b) => {
                a.dispute.insert(*b);
                a.held.insert(*b);
            }
            Some((_, owner)) => a.dropped.push((*b, Some(owner.to_string()))),
            None if reset || in_use.contains(b) => {
                a.claim.push(*b);
                a.held.insert(*b);
            }
            None => a.dropped.push((*b, None)),
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn id(s: &str) -> ClusterId {
        ClusterId {
            id: s.into(),
            created: 1,
        }
    }

    fn known(cluster: Option<&str>, revision: i64) -> Memory {
        let mut m = Memory {
            revision,
            ..Default::default()
        };
        Arc::make_mut(&mut m.view).cluster = cluster.map(id);
        m
    }

    fn seen(cluster: Option<&ClusterId>, revision: i64) -> Seen<'_> {
        Seen {
            cluster,
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn a_store_forgot_when_its_identity_went_or_changed_or_its_revision_went_back() {
        assert_eq!(
            forgot(&known(Some("a"), 50), &seen(None, 3)),
            Some(Forgot::IdentityGone)
        );
        assert_eq!(
            forgot(&known(Some("a"), 50), &seen(Some(&id("b")), 80)),
            Some(Forgot::IdentityChanged {
                was: "a".into(),
                now: "b".into()
            })
        );
        assert_eq!(
            forgot(&known(Some("a"), 50), &seen(Some(&id("a")), 40)),
            Some(Forgot::RevisionBack { was: 50, now: 40 })
        );
        // Not forgotten: the same store further on; a first contact; an older cache.
        assert_eq!(
            forgot(&known(Some("a"), 50), &seen(Some(&id("a")), 50)),
            None
        );
        assert_eq!(forgot(&known(None, 0), &seen(Some(&id("a")), 7)), None);
        assert_eq!(forgot(&known(None, 0), &seen(None, 1)), None);
        assert_eq!(
            forgot(&known(None, 90), &seen(None, 1)),
            Some(Forgot::RevisionBack { was: 90, now: 1 })
        );
    }

    #[test]
    fn a_store_forgot_the_nodes_registration_unless_an_operator_removed_it() {
        let a = id("a");
        let mut k = known(Some("a"), 50);
        k.registered = 40;
        let at = |registration, removed| Seen {
            cluster: Some(&a),
            revision: 60,
            registration,
            removed,
        };
        // A restore from before the node joined, or from before its last registration.
        assert_eq!(
            forgot(&k, &at(None, false)),
            Some(Forgot::Registration {
                wrote: 40,
                now: None
            })
        );
        assert_eq!(
            forgot(&k, &at(Some(12), false)),
            Some(Forgot::Registration {
                wrote: 40,
                now: Some(12)
            })
        );
        // As written; removed by `ipipd node remove`; never written.
        assert_eq!(forgot(&k, &at(Some(40), false)), None);
        assert_eq!(forgot(&k, &at(None, true)), None);
        k.registered = 0;
        assert_eq!(forgot(&k, &at(None, false)), None);
    }

    fn view(blocks: &[(&str, &str)]) -> View {
        let mut v = View::default();
        for (b, n) in blocks {
            v.blocks.insert(net(b), (*n).into());
        }
        v
    }

    fn set(b: &[&str]) -> BTreeSet<Ipv4Net> {
        b.iter().map(|b| net(b)).collect()
    }

    #[test]
    fn after_a_reset_every_held_block_is_claimed_back_where_it_is_free() {
        let held = set(&["10.0.0.0/26", "10.0.0.64/26"]);
        let a = assert_blocks("a", &held, &set(&[]), &view(&[]), true);
        assert_eq!(a.claim, [net("10.0.0.0/26"), net("10.0.0.64/26")]);
        assert_eq!(a.held, held);
        assert!(a.dispute.is_empty() && a.dropped.is_empty());
        // Without a reset, a free block no pod uses was released by an operator: dropped;
        // one with pods is claimed back.
        let a = assert_blocks("a", &held, &set(&["10.0.0.64/26"]), &view(&[]), false);
        assert_eq!(a.claim, [net("10.0.0.64/26")]);
        assert_eq!(a.dropped, [(net("10.0.0.0/26"), None)]);
        assert_eq!(a.held, set(&["10.0.0.64/26"]));
    }

    #[test]
    fn a_block_another_node_owns_is_disputed_while_pods_use_it_else_given_up() {
        let held = set(&["10.0.0.0/26", "10.0.0.64/26"]);
        let v = view(&[
            ("10.0.0.0/26", "b"),
            ("10.0.0.64/26", "b"),
            ("10.0.1.0/26", "a"),
        ]);
        let a = assert_blocks("a", &held, &set(&["10.0.0.0/26"]), &v, true);
        assert!(a.claim.is_empty());
        assert_eq!(a.dispute, set(&["10.0.0.0/26"]));
        assert_eq!(a.dropped, [(net("10.0.0.64/26"), Some("b".into()))]);
        // A block the store gives the node is held too.
        assert_eq!(a.held, set(&["10.0.0.0/26", "10.0.1.0/26"]));
        // An overlapping block of another size counts as the other node's.
        let v = view(&[("10.0.0.0/25", "b")]);
        let a = assert_blocks("a", &held, &held, &v, false);
        assert_eq!(a.dispute, held);
    }

    #[test]
    fn an_older_cache_is_read_and_its_view_says_what_the_node_holds() {
        let old = br#"{"pools":{},"blocks":{"10.0.0.0/26":"a","10.0.0.64/26":"b"},"nodes":{"b":{"name":"b","address":"172.31.0.2"}},"alive":["b"]}"#;
        let m: Memory = serde_json::from_slice(old).unwrap();
        assert_eq!(m.revision, 0);
        assert_eq!(m.held("a"), set(&["10.0.0.0/26"]));
        assert_eq!(&*m.view.nodes["b"].name, "b");
        assert!(m.view.alive.contains("b"));
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Memory>(&text).unwrap(), m);
    }
}
