//! A change of endpoints and peers planned by parts: the [`Delta`] between two desired
//! states, and [`Plan::change`], which takes the parts going out of a plan and puts the new
//! ones in with the functions [`plan`](super::plan) adds up.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use dataplane_common::{Endpoint, RouteKind, RouteValue};

use super::{At, Plan};
use crate::{
    config::{Config, EndpointCfg, Peer},
    net::Ipv4Net,
    netlink::Route,
};

/// The endpoints and peers that differ between two desired states, by address (a changed one
/// is in both lists).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    pub endpoints_gone: Vec<EndpointCfg>,
    pub endpoints_new: Vec<EndpointCfg>,
    pub peers_gone: Vec<Peer>,
    pub peers_new: Vec<Peer>,
}

impl Delta {
    /// The delta from `old` to `new` (compared by address, item by item); `None` when anything
    /// else differs, which only a whole plan takes. (Every field is named: one added to
    /// `Config` has to be placed here.)
    pub fn between(old: &Config, new: &Config) -> Option<Delta> {
        let Config {
            node,
            blocks,
            peers: _,
            endpoints: _,
            datastore,
            datastore_kind,
            pools,
            pool_modes,
            tunnel_address,
            origin: _,
        } = old;
        let same_rest = *node == new.node
            && *blocks == new.blocks
            && *pools == new.pools
            && *pool_modes == new.pool_modes
            && *tunnel_address == new.tunnel_address
            && *datastore == new.datastore
            && *datastore_kind == new.datastore_kind;
        if !same_rest {
            return None;
        }
        let (endpoints_gone, endpoints_new) =
            keyed_diff(&old.endpoints, &new.endpoints, |e| e.address);
        let (peers_gone, peers_new) = keyed_diff(&old.peers, &new.peers, |p| p.address);
        Some(Delta {
            endpoints_gone,
            endpoints_new,
            peers_gone,
            peers_new,
        })
    }

    /// `other`'s parts too (of other addresses than this one's).
    pub fn extend(&mut self, other: Delta) {
        self.endpoints_gone.extend(other.endpoints_gone);
        self.endpoints_new.extend(other.endpoints_new);
        self.peers_gone.extend(other.peers_gone);
        self.peers_new.extend(other.peers_new);
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints_gone.is_empty() && self.endpoints_new.is_empty() && !self.peers_changed()
    }

    pub fn peers_changed(&self) -> bool {
        !self.peers_gone.is_empty() || !self.peers_new.is_empty()
    }
}

/// The items of `old` not in `new` as they are, and of `new` not in `old`, by `key`.
fn keyed_diff<T: Clone + PartialEq>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> Ipv4Addr,
) -> (Vec<T>, Vec<T>) {
    let before: std::collections::HashMap<Ipv4Addr, &T> = old.iter().map(|t| (key(t), t)).collect();
    let after: std::collections::HashMap<Ipv4Addr, &T> = new.iter().map(|t| (key(t), t)).collect();
    let gone = old
        .iter()
        .filter(|t| after.get(&key(t)) != Some(t))
        .cloned()
        .collect();
    let added = new
        .iter()
        .filter(|t| before.get(&key(t)) != Some(t))
        .cloned()
        .collect();
    (gone, added)
}

/// What a change of a plan touched: the old values of every map entry, slow-path route and
/// attachment it may have changed, for the writer to compare with the plan's new ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    pub routes: BTreeMap<(Ipv4Addr, u8), Option<RouteValue>>,
    pub endpoints: BTreeMap<u32, Option<Endpoint>>,
    /// Slow-path routes taken out; those put in are [`Touched::slow_added`].
    pub slow_removed: BTreeSet<Route>,
    pub slow_added: BTreeSet<Route>,
}

impl Plan {
    /// The plan changed in place by `delta` (to the desired state `at.cfg`, whose node, blocks
    /// and pools are the old one's; on `at.view`; `known` the endpoints the maps hold for the
    /// interfaces the new endpoints name): what [`plan`] plans for `at.cfg`,
    /// and what the change touched, with the old values, for the writer. `None` when a part
    /// coming or going meets another's prefix (the rules keep them apart; only a whole plan
    /// decides otherwise): the plan is then partly changed, and is to be planned whole.
    pub fn change(
        &mut self,
        at: &At,
        delta: &Delta,
        known: &BTreeMap<u32, Endpoint>,
    ) -> Option<Touched> {
        let mut t = Touched::default();
        let keys = delta
            .endpoints_gone
            .iter()
            .chain(&delta.endpoints_new)
            .map(|e| (e.address, 32))
            .chain(
                delta
                    .peers_gone
                    .iter()
                    .chain(&delta.peers_new)
                    .flat_map(|p| {
                        std::iter::once(Ipv4Net::host(p.address)).chain(p.blocks.iter().copied())
                    })
                    .map(|n| (n.addr, n.len)),
            );
        for k in keys {
            t.routes.insert(k, self.routes.get(&k).copied());
        }
        // The interfaces whose entry may change: those of the endpoints going, those the new
        // ones name.
        let ifindexes = t
            .routes
            .values()
            .flatten()
            .filter(|v| v.kind == RouteKind::LocalEndpoint as u8)
            .map(|v| v.ifindex)
            .chain(
                delta
                    .endpoints_new
                    .iter()
                    .filter_map(|e| at.view.links.by_name(&e.interface))
                    .map(|l| l.index),
            );
        for i in ifindexes {
            t.endpoints.insert(i, self.endpoints.get(&i).copied());
        }
        let mut removed: BTreeSet<Route> = BTreeSet::new();
        for e in &delta.endpoints_gone {
            removed.extend(self.remove_endpoint(e.address));
        }
        for p in &delta.peers_gone {
            removed.extend(self.remove_peer(at, p));
        }
        // A prefix still held once the parts went is another part's.
        if t.routes.keys().any(|k| self.routes.contains_key(k)) {
            return None;
        }
        let mut added: BTreeSet<Route> = BTreeSet::new();
        for p in &delta.peers_new {
            added.extend(self.add_peer(at, p, at.hop(p.address)));
        }
        for e in &delta.endpoints_new {
            added.extend(self.add_endpoint(e, at.view, known));
        }
        t.slow_removed = removed.difference(&added).cloned().collect();
        t.slow_added = added.difference(&removed).cloned().collect();
        Some(t)
    }
}
