//! A datastore view's change as the peers it changed. Most of what the store says while a
//! cluster runs is about other nodes: one registers, goes, moves, claims or gives up a block.
//! Such a change is taken as the peer changes it makes ([`changes`]), which the owner makes in
//! place and plans by parts (as a runtime `peer add` is), instead of overlaying the whole
//! view on the file, validating and diffing the whole desired state: at 5,000 nodes that was
//! milliseconds of allocation per view. Finding the change walks the two views once,
//! comparing, without copying them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use super::memory::Memory;
use crate::{desired::Change, net::Ipv4Net};

/// The peer changes from `old` to `new` for node `me` (address `my_address`, holding `mine`:
/// the blocks its overlay has, whose overlaps are taken out of peers' blocks, as
/// [`super::sync::overlay`] does): a node removed or moved away from an address is a
/// `PeerDel`, a node added or whose address or blocks changed a `PeerAdd` (which replaces the
/// peer of its address). Empty when no peer changed (a liveness key, say).
///
/// `None` when the views differ in anything else the overlay reads (the pools, the blocks
/// `me` holds, Calico's part), or when the new view holds two nodes with one address that a
/// change touches: the whole path takes those, and says what it refuses.
pub fn changes(
    old: &Memory,
    new: &Memory,
    me: &str,
    my_address: Ipv4Addr,
    mine: &[Ipv4Net],
) -> Option<Vec<Change>> {
    if old.held(me) != new.held(me) {
        return None;
    }
    if std::sync::Arc::ptr_eq(&old.view, &new.view) {
        return Some(Vec::new());
    }
    let (o, n) = (&*old.view, &*new.view);
    if o.pools != n.pools || o.calico != n.calico {
        return None;
    }
    let mut touched: BTreeSet<&str> = BTreeSet::new();
    differing(&o.nodes, &n.nodes, |name, _, _| {
        touched.insert(&**name);
    });
    differing(&o.blocks, &n.blocks, |_, was, is| {
        touched.extend(was.into_iter().chain(is).map(|n| &**n));
    });
    touched.remove(me);
    if touched.is_empty() {
        return Some(Vec::new());
    }
    let (peers_then, peers_now) = (
        o.peers_where(my_address, mine, |n| touched.contains(n)),
        n.peers_where(my_address, mine, |n| touched.contains(n)),
    );
    let mut out = Vec::new();
    let (mut added, mut deleted) = (BTreeSet::new(), BTreeSet::new());
    for name in &touched {
        let (was, is) = (peers_then.get(name), peers_now.get(name));
        if was == is {
            continue;
        }
        if let Some(w) = was
            && is.is_none_or(|p| p.address != w.address)
        {
            deleted.insert(w.address);
            out.push(Change::PeerDel { address: w.address });
        }
        if let Some(p) = is {
            added.insert(p.address);
            out.push(Change::PeerAdd(p.clone()));
        }
    }
    // A peer is one node's: an address two nodes of the new view claim is the whole path's
    // (which refuses it), and one deleted here must be no other node's.
    let mut holders: HashMap<Ipv4Addr, usize> = HashMap::new();
    for r in n.nodes.values() {
        if &*r.name != me
            && r.address != my_address
            && (added.contains(&r.address) || deleted.contains(&r.address))
        {
            *holders.entry(r.address).or_default() += 1;
        }
    }
    let fits = added.iter().all(|a| holders.get(a) == Some(&1))
        && deleted
            .iter()
            .all(|a| added.contains(a) || !holders.contains_key(a));
    fits.then_some(out)
}

/// Calls `f` with each key whose value differs between `a` and `b` (absent on one side:
/// None), walking both in key order once.
fn differing<'a, K: Ord, V: PartialEq>(
    a: &'a BTreeMap<K, V>,
    b: &'a BTreeMap<K, V>,
    mut f: impl FnMut(&'a K, Option<&'a V>, Option<&'a V>),
) {
    let (mut i, mut j) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (i.peek(), j.peek()) {
            (None, None) => return,
            (Some(&(k, v)), None) => {
                f(k, Some(v), None);
                i.next();
            }
            (None, Some(&(k, v))) => {
                f(k, None, Some(v));
                j.next();
            }
            (Some(&(ka, va)), Some(&(kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    f(ka, Some(va), None);
                    i.next();
                }
                std::cmp::Ordering::Greater => {
                    f(kb, None, Some(vb));
                    j.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        f(ka, Some(va), Some(vb));
                    }
                    i.next();
                    j.next();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        config::{Config, Peer},
        datastore::{Lcg, model::NodeRecord, net, sync::overlay},
        desired::changes_in_place,
        rules::validate,
    };

    const ME: &str = "n0";

    fn file() -> Config {
        Config::parse(
            "[node]\nname = \"n0\"\nuplink = \"eth0\"\naddress = \"10.0.0.1\"\n\
             [datastore]\netcd = [\"http://127.0.0.1:2379\"]\n",
        )
        .unwrap()
    }

    /// A memory of `nodes` (name, address) and `blocks` (block, owner); n0 holds its own.
    fn mem(nodes: &[(&str, &str)], blocks: &[(&str, &str)]) -> Memory {
        let mut m = Memory::default();
        let v = Arc::make_mut(&mut m.view);
        for (name, address) in nodes {
            v.nodes.insert(
                (*name).into(),
                NodeRecord {
                    name: (*name).into(),
                    address: address.parse().unwrap(),
                },
            );
        }
        for (b, owner) in blocks {
            v.blocks.insert(net(b), (*owner).into());
        }
        m.held = Some(m.view.blocks_of(ME).into_iter().collect());
        m
    }

    /// [`changes`] from `old` to `new`, made in place on `old`'s overlay: the config by parts.
    fn by_parts(f: &Config, old: &Memory, new: &Memory) -> Option<Config> {
        let mut base = overlay(f, old);
        let c = changes(old, new, ME, f.node.address, &base.blocks.clone())?;
        changes_in_place(&mut base, &c)?;
        Some(base)
    }

    fn sorted(mut peers: Vec<Peer>) -> Vec<Peer> {
        peers.sort_by_key(|p| p.address);
        peers
    }

    fn peer(address: &str, blocks: &[&str]) -> Peer {
        Peer {
            address: address.parse().unwrap(),
            blocks: blocks.iter().map(|b| net(b)).collect(),
        }
    }

    const NODES: [(&str, &str); 3] = [("n0", "10.0.0.1"), ("n1", "10.0.0.2"), ("n2", "10.0.0.3")];
    const BLOCKS: [(&str, &str); 3] = [
        ("10.64.0.0/26", "n0"),
        ("10.64.0.64/26", "n1"),
        ("10.64.0.128/26", "n2"),
    ];

    fn seen(old: &Memory, new: &Memory) -> Option<Vec<Change>> {
        let f = file();
        changes(old, new, ME, f.node.address, &overlay(&f, old).blocks)
    }

    #[test]
    fn a_node_that_comes_goes_or_moves_is_the_peer_change_it_makes() {
        let old = mem(&NODES, &BLOCKS);
        // One registers with a block.
        let mut nodes = NODES.to_vec();
        nodes.push(("n3", "10.0.0.4"));
        let mut blocks = BLOCKS.to_vec();
        blocks.push(("10.64.0.192/26", "n3"));
        assert_eq!(
            seen(&old, &mem(&nodes, &blocks)),
            Some(vec![Change::PeerAdd(peer("10.0.0.4", &["10.64.0.192/26"]))])
        );
        // One goes (its record and its block).
        assert_eq!(
            seen(&old, &mem(&NODES[..2], &BLOCKS[..2])),
            Some(vec![Change::PeerDel {
                address: "10.0.0.3".parse().unwrap()
            }])
        );
        // One moves to another address: the old peer goes, the new one comes.
        let moved = [NODES[0], NODES[1], ("n2", "10.0.0.9")];
        assert_eq!(
            seen(&old, &mem(&moved, &BLOCKS)),
            Some(vec![
                Change::PeerDel {
                    address: "10.0.0.3".parse().unwrap()
                },
                Change::PeerAdd(peer("10.0.0.9", &["10.64.0.128/26"])),
            ])
        );
        // One claims another block; one that overlaps this node's is left out of its peer.
        let mut blocks = BLOCKS.to_vec();
        blocks.push(("10.64.1.0/26", "n1"));
        blocks.push(("10.64.0.0/25", "n2"));
        assert_eq!(
            seen(&old, &mem(&NODES, &blocks)),
            Some(vec![
                Change::PeerAdd(peer("10.0.0.2", &["10.64.0.64/26", "10.64.1.0/26"])),
                Change::PeerAdd(peer("10.0.0.3", &["10.64.0.128/26"])),
            ])
            .map(|mut v| {
                // (n2's peer is as it was: only n1 changed.)
                v.pop();
                v
            })
        );
    }

    #[test]
    fn what_no_peer_shows_is_no_change_and_the_rest_of_the_view_is_the_whole_paths() {
        let old = mem(&NODES, &BLOCKS);
        // A liveness key, and this node's own record, change no peer.
        let mut alive = old.clone();
        Arc::make_mut(&mut alive.view).alive.insert("n1".into());
        assert_eq!(seen(&old, &alive), Some(vec![]));
        let me_moved = [("n0", "10.0.0.8"), NODES[1], NODES[2]];
        assert_eq!(seen(&old, &mem(&me_moved, &BLOCKS)), Some(vec![]));
        // A stale registration at this node's address is no peer.
        let mut nodes = NODES.to_vec();
        nodes.push(("old-n0", "10.0.0.1"));
        assert_eq!(seen(&old, &mem(&nodes, &BLOCKS)), Some(vec![]));
        // The pools, the blocks this node holds: the whole path.
        let mut pools = old.clone();
        Arc::make_mut(&mut pools.view).pools.insert(
            net("10.64.0.0/16"),
            crate::datastore::model::Pool {
                cidr: net("10.64.0.0/16"),
                block_size: 26,
                nat_outgoing: false,
            },
        );
        assert_eq!(seen(&old, &pools), None);
        let mut held = old.clone();
        held.held = Some([net("10.64.0.0/26"), net("10.64.2.0/26")].into());
        assert_eq!(seen(&old, &held), None);
        // Two nodes at one address: the whole path, which refuses it.
        let mut nodes = NODES.to_vec();
        nodes.push(("n3", "10.0.0.3"));
        assert_eq!(seen(&old, &mem(&nodes, &BLOCKS)), None);
    }

    #[test]
    fn by_parts_a_view_makes_the_peers_the_whole_overlay_makes() {
        let f = file();
        let names = ["n1", "n2", "n3", "n4", "n5", "n6"];
        // Addresses (10.0.0.1 is this node's: a stale registration) and blocks, some of them
        // overlapping others or this node's.
        let addresses = [
            "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7",
        ];
        let blocks = [
            "10.64.0.0/26",
            "10.64.0.0/25",
            "10.64.0.64/26",
            "10.64.0.128/26",
            "10.64.0.192/26",
            "10.64.1.0/26",
            "10.64.1.64/26",
            "10.64.1.128/26",
            "10.64.1.0/24",
            "10.64.2.0/26",
        ];
        let mut rng = Lcg(34);
        let mut old = mem(&[("n0", "10.0.0.1")], &[("10.64.0.0/26", "n0")]);
        let (mut steps, mut taken) = (0, 0);
        for _ in 0..4000 {
            let mut new = old.clone();
            let v = Arc::make_mut(&mut new.view);
            for _ in 0..=rng.below(3) {
                let name = names[rng.below(names.len())];
                match rng.below(5) {
                    0 => {
                        v.nodes.remove(name);
                    }
                    1 | 2 => {
                        let a = addresses[rng.below(addresses.len())];
                        v.nodes.insert(
                            name.into(),
                            NodeRecord {
                                name: name.into(),
                                address: a.parse().unwrap(),
                            },
                        );
                    }
                    3 => {
                        let b = net(blocks[rng.below(blocks.len())]);
                        v.blocks.insert(b, name.into());
                    }
                    _ => {
                        let b = net(blocks[rng.below(blocks.len())]);
                        if v.blocks.get(&b).is_some_and(|o| &**o != ME) {
                            v.blocks.remove(&b);
                        }
                    }
                }
            }
            let whole = overlay(&f, &new);
            let valid = validate(&whole).is_ok();
            if let Some(parts) = by_parts(&f, &old, &new) {
                assert!(
                    valid,
                    "by parts took a view the whole path refuses: {new:?}"
                );
                assert_eq!(sorted(parts.peers), sorted(whole.peers.clone()));
                taken += 1;
            }
            // The node keeps the last view it could take.
            if valid {
                old = new;
                steps += 1;
            }
        }
        assert!(
            steps > 500 && taken > steps / 2,
            "{taken} of {steps} by parts"
        );
    }
}
