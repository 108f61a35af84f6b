//! The desired state: the config file's part plus the runtime changes made through the control
//! socket, which are persisted in the state directory and re-applied on start. (The datastore
//! and the CNI plugin will be further sources of it.)

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, EndpointCfg, Node, Peer, validate},
    net::Ipv4Net,
    pins::write_atomic,
    plan::Delta,
};

/// Changes made at runtime, over the file's part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeChanges {
    #[serde(default)]
    pub endpoints_added: Vec<EndpointCfg>,
    #[serde(default)]
    pub endpoints_deleted: Vec<Ipv4Addr>,
    #[serde(default)]
    pub peers_added: Vec<Peer>,
    #[serde(default)]
    pub peers_deleted: Vec<Ipv4Addr>,
}

/// A change requested through the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    EndpointAdd(EndpointCfg),
    EndpointDel { address: Ipv4Addr },
    PeerAdd(Peer),
    PeerDel { address: Ipv4Addr },
}

const RUNTIME_FILE: &str = "runtime.json";

impl Change {
    /// The address of the endpoint or peer it is about.
    pub fn address(&self) -> Ipv4Addr {
        match self {
            Change::EndpointAdd(e) => e.address,
            Change::PeerAdd(p) => p.address,
            Change::EndpointDel { address } | Change::PeerDel { address } => *address,
        }
    }

    /// The added endpoint's or peer's own rules, the file's ([`EndpointCfg::check`],
    /// [`Peer::check`]), on `node` when it is known (the daemon's; the CLI's with --config):
    /// what the CLI checks before it sends a change and the daemon before it takes one. Its fit
    /// with the rest (overlaps, duplicates) is [`RuntimeChanges::apply`]'s.
    pub fn check(&self, node: Option<&Node>) -> Result<()> {
        let r = match (self, node) {
            (Change::EndpointAdd(ep), Some(n)) => ep.check(n).map_err(|(f, m)| (f.to_string(), m)),
            (Change::EndpointAdd(ep), None) => {
                ep.check_alone().map_err(|(f, m)| (f.to_string(), m))
            }
            (Change::PeerAdd(p), Some(n)) => p.check(n),
            (Change::PeerAdd(p), None) => p.check_alone(),
            (Change::EndpointDel { .. } | Change::PeerDel { .. }, _) => Ok(()),
        };
        r.map_err(|(f, m)| anyhow!("{f}: {m}"))
    }
}

impl RuntimeChanges {
    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(RUNTIME_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("{}: not a runtime state file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow!("{}: {e}", path.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        write_atomic(
            &state_dir.join(RUNTIME_FILE),
            &serde_json::to_vec_pretty(self)?,
        )
    }

    /// The changes with `change` applied: the change checked on its own, not yet with the rest.
    pub fn with(&self, file: &Config, change: &Change) -> Result<Self> {
        change.check(Some(&file.node))?;
        let mut rt = self.clone();
        match change {
            Change::EndpointAdd(ep) => {
                record_add(&mut rt.endpoints_added, &mut rt.endpoints_deleted, ep)
            }
            Change::EndpointDel { address } => {
                if !record_del(
                    &mut rt.endpoints_added,
                    &mut rt.endpoints_deleted,
                    &file.endpoints,
                    *address,
                ) {
                    bail!("no endpoint {address}");
                }
            }
            Change::PeerAdd(p) => record_add(&mut rt.peers_added, &mut rt.peers_deleted, p),
            Change::PeerDel { address } => {
                if !record_del(
                    &mut rt.peers_added,
                    &mut rt.peers_deleted,
                    &file.peers,
                    *address,
                ) {
                    bail!("no peer {address}");
                }
            }
        }
        Ok(rt)
    }

    /// The effective desired state: the file, less what was deleted, plus what was added
    /// (an added entry replaces the file's entry with its address). Validated whole.
    pub fn apply(&self, file: &Config) -> Result<Config> {
        let mut cfg = file.clone();
        overlay(
            &mut cfg.endpoints,
            &self.endpoints_added,
            &self.endpoints_deleted,
        );
        overlay(&mut cfg.peers, &self.peers_added, &self.peers_deleted);
        validate(&cfg).map_err(|e| anyhow!("{e}"))?;
        Ok(cfg)
    }
}

/// `change` made to the desired state `cfg` in place, when it fits the rest by the rules
/// [`validate`] applies to it (its own; endpoints: inside the node's blocks, no interface
/// twice; peers: no block overlapping another's): the parts that went and came, for a plan of
/// the change alone. Otherwise `None` and `cfg` unchanged: the change is to be applied whole
/// ([`RuntimeChanges::apply`]), which says what it breaks. The result is what `apply` gives
/// (an added item replaces the one with its address and comes last).
pub fn change_in_place(cfg: &mut Config, change: &Change) -> Option<Delta> {
    change.check(Some(&cfg.node)).ok()?;
    let mut d = Delta::default();
    match change {
        Change::EndpointAdd(ep) => {
            let unclaimed = cfg.datastore.is_some() && cfg.blocks.is_empty();
            if !unclaimed && !cfg.blocks.iter().any(|b| b.contains(ep.address)) {
                return None;
            }
            // (A scan, not an index: string compares, no allocation; microseconds at 10,000.)
            if cfg
                .endpoints
                .iter()
                .any(|e| e.interface == ep.interface && e.address != ep.address)
            {
                return None;
            }
            d.endpoints_gone = put(&mut cfg.endpoints, ep);
            d.endpoints_new.push(ep.clone());
        }
        Change::EndpointDel { address } => {
            d.endpoints_gone = take(&mut cfg.endpoints, *address);
            if d.endpoints_gone.is_empty() {
                return None;
            }
        }
        Change::PeerAdd(p) => {
            let meets = |b: &Ipv4Net| {
                let others = cfg
                    .peers
                    .iter()
                    .filter(|o| o.address != p.address)
                    .flat_map(|o| &o.blocks);
                cfg.blocks.iter().chain(others).any(|t| t.overlaps(b))
            };
            if p.blocks.iter().any(meets)
                || p.blocks
                    .iter()
                    .enumerate()
                    .any(|(i, b)| p.blocks[..i].iter().any(|a| a.overlaps(b)))
            {
                return None;
            }
            d.peers_gone = put(&mut cfg.peers, p);
            d.peers_new.push(p.clone());
        }
        Change::PeerDel { address } => {
            d.peers_gone = take(&mut cfg.peers, *address);
            if d.peers_gone.is_empty() {
                return None;
            }
        }
    }
    debug_assert!(
        validate(cfg).is_ok(),
        "change_in_place let through {change:?}"
    );
    Some(d)
}

/// [`change_in_place`] for each of `changes`, which are about distinct addresses: all made,
/// or none (`cfg` as it was; also when two are about one address).
pub fn changes_in_place(cfg: &mut Config, changes: &[Change]) -> Option<Delta> {
    let distinct: std::collections::BTreeSet<Ipv4Addr> =
        changes.iter().map(Change::address).collect();
    if distinct.len() != changes.len() {
        return None;
    }
    let mut delta = Delta::default();
    for c in changes {
        match change_in_place(cfg, c) {
            Some(d) => delta.extend(d),
            None => {
                revert(cfg, &delta);
                return None;
            }
        }
    }
    Some(delta)
}

/// [`change_in_place`] undone (its change was not applied): the parts that came go, those
/// that went are back.
pub fn revert(cfg: &mut Config, d: &Delta) {
    for e in &d.endpoints_new {
        take(&mut cfg.endpoints, e.address);
    }
    cfg.endpoints.extend(d.endpoints_gone.iter().cloned());
    for p in &d.peers_new {
        take(&mut cfg.peers, p.address);
    }
    cfg.peers.extend(d.peers_gone.iter().cloned());
}

/// `item` in place of the one with its address, last (as [`overlay`] puts an added one);
/// the one it replaces.
fn put<T: Keyed>(items: &mut Vec<T>, item: &T) -> Vec<T> {
    let gone = take(items, item.address());
    items.push(item.clone());
    gone
}

/// The item with `address` taken out of `items` (at most one: the rules allow no two).
fn take<T: Keyed>(items: &mut Vec<T>, address: Ipv4Addr) -> Vec<T> {
    match items.iter().position(|e| e.address() == address) {
        Some(i) => vec![items.remove(i)],
        None => Vec::new(),
    }
}

/// Endpoints and peers are both keyed by their address.
trait Keyed: Clone {
    fn address(&self) -> Ipv4Addr;
}

impl Keyed for EndpointCfg {
    fn address(&self) -> Ipv4Addr {
        self.address
    }
}

impl Keyed for Peer {
    fn address(&self) -> Ipv4Addr {
        self.address
    }
}

/// Records an addition (replacing an earlier one with its address; undoing a deletion).
fn record_add<T: Keyed>(added: &mut Vec<T>, deleted: &mut Vec<Ipv4Addr>, item: &T) {
    deleted.retain(|a| *a != item.address());
    added.retain(|e| e.address() != item.address());
    added.push(item.clone());
}

/// Records a deletion; false when there was nothing with that address to delete.
fn record_del<T: Keyed>(
    added: &mut Vec<T>,
    deleted: &mut Vec<Ipv4Addr>,
    file: &[T],
    address: Ipv4Addr,
) -> bool {
    let was_added = added.iter().any(|e| e.address() == address);
    added.retain(|e| e.address() != address);
    // A file item deleted before (and not added again) is gone: deleting it twice is an error.
    let live_in_file = file.iter().any(|e| e.address() == address) && !deleted.contains(&address);
    if live_in_file {
        deleted.push(address);
    }
    was_added || live_in_file
}

/// The file's items, less the deleted and the replaced ones, plus the added ones.
fn overlay<T: Keyed>(items: &mut Vec<T>, added: &[T], deleted: &[Ipv4Addr]) {
    items.retain(|e| {
        !deleted.contains(&e.address()) && !added.iter().any(|a| a.address() == e.address())
    });
    items.extend(added.iter().cloned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Config {
        Config::parse(
            "[node]\nname = \"n\"\nuplink = \"eth0\"\naddress = \"172.31.242.156\"\n\
             [[block]]\ncidr = \"192.168.83.128/26\"\n\
             [[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"192.168.179.0/26\"]\n\
             [[endpoint]]\naddress = \"192.168.83.129\"\ninterface = \"cali1\"\n",
        )
        .unwrap()
    }

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ep(address: &str, interface: &str) -> EndpointCfg {
        EndpointCfg {
            pod: None,
            attachment: None,
            address: a(address),
            interface: interface.into(),
            mac: None,
        }
    }

    fn addrs(c: &Config) -> Vec<Ipv4Addr> {
        c.endpoints.iter().map(|e| e.address).collect()
    }

    /// A change the file would refuse is refused over the socket too, with the file's
    /// message, before anything is recorded.
    #[test]
    fn a_change_is_checked_by_the_files_rules() {
        let cases = [
            (
                Change::EndpointAdd(ep("192.168.83.130", "cali0123456789abcdefghij")),
                "interface: \"cali0123456789abcdefghij\" is not an interface name",
            ),
            (
                Change::EndpointAdd(ep("192.168.83.130", "a/b")),
                "interface: \"a/b\" is not an interface name",
            ),
            (
                Change::EndpointAdd(ep("192.168.83.130", "lo")),
                "interface: is the loopback device",
            ),
            (
                Change::EndpointAdd(ep("192.168.83.130", "eth0")),
                "interface: is the uplink",
            ),
            (
                Change::PeerAdd(Peer {
                    address: a("0.0.0.0"),
                    blocks: vec![],
                }),
                "address: 0.0.0.0 is \"this network\" (0.0.0.0/8), not a unicast host address",
            ),
            (
                Change::PeerAdd(Peer {
                    address: a("172.31.242.158"),
                    blocks: vec!["224.0.0.0/24".parse().unwrap()],
                }),
                "blocks[0]: 224.0.0.0/24 reaches into 224.0.0.0/4, multicast",
            ),
        ];
        for (change, msg) in cases {
            let e = RuntimeChanges::default()
                .with(&file(), &change)
                .expect_err("refused");
            assert_eq!(e.to_string(), msg);
        }
        // Valid on its own, refused with the rest: the same rules as the file's.
        let dup = RuntimeChanges::default()
            .with(&file(), &Change::EndpointAdd(ep("192.168.83.130", "cali1")))
            .unwrap();
        assert_eq!(
            dup.apply(&file()).unwrap_err().to_string(),
            "endpoint[1].interface: cali1 is also endpoint[0]'s interface"
        );
    }

    #[test]
    fn an_added_endpoint_joins_the_files() {
        let rt = RuntimeChanges::default()
            .with(&file(), &Change::EndpointAdd(ep("192.168.83.130", "cali2")))
            .unwrap();
        assert_eq!(
            addrs(&rt.apply(&file()).unwrap()),
            [a("192.168.83.129"), a("192.168.83.130")]
        );
    }

    #[test]
    fn an_added_endpoint_replaces_the_files_with_its_address() {
        let rt = RuntimeChanges::default()
            .with(&file(), &Change::EndpointAdd(ep("192.168.83.129", "cali9")))
            .unwrap();
        let d = rt.apply(&file()).unwrap();
        assert_eq!(d.endpoints, [ep("192.168.83.129", "cali9")]);
    }

    #[test]
    fn deleting_a_file_endpoint_hides_it_and_twice_is_an_error() {
        let rt = RuntimeChanges::default()
            .with(
                &file(),
                &Change::EndpointDel {
                    address: a("192.168.83.129"),
                },
            )
            .unwrap();
        assert!(rt.apply(&file()).unwrap().endpoints.is_empty());
        let again = rt.with(
            &file(),
            &Change::EndpointDel {
                address: a("192.168.83.129"),
            },
        );
        assert_eq!(again.unwrap_err().to_string(), "no endpoint 192.168.83.129");
    }

    #[test]
    fn re_adding_a_deleted_endpoint_undoes_the_deletion() {
        let del = Change::EndpointDel {
            address: a("192.168.83.129"),
        };
        let rt = RuntimeChanges::default()
            .with(&file(), &del)
            .unwrap()
            .with(&file(), &Change::EndpointAdd(ep("192.168.83.129", "cali1")))
            .unwrap();
        assert!(rt.endpoints_deleted.is_empty());
        assert_eq!(addrs(&rt.apply(&file()).unwrap()), [a("192.168.83.129")]);
    }

    #[test]
    fn deleting_an_unknown_peer_or_endpoint_is_an_error() {
        let e = RuntimeChanges::default()
            .with(
                &file(),
                &Change::PeerDel {
                    address: a("172.31.242.200"),
                },
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "no peer 172.31.242.200");
        let e = RuntimeChanges::default()
            .with(
                &file(),
                &Change::EndpointDel {
                    address: a("192.168.83.140"),
                },
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "no endpoint 192.168.83.140");
    }

    #[test]
    fn a_change_that_breaks_the_rules_is_refused_whole() {
        // A peer claiming the master's block, and an endpoint outside the blocks.
        let bad_peer = Change::PeerAdd(Peer {
            address: a("172.31.242.158"),
            blocks: vec!["192.168.179.0/26".parse::<Ipv4Net>().unwrap()],
        });
        let rt = RuntimeChanges::default().with(&file(), &bad_peer).unwrap();
        assert_eq!(
            rt.apply(&file()).unwrap_err().to_string(),
            "peer[1].blocks[0]: 192.168.179.0/26 is also claimed by peer[0] (192.168.179.0/26)"
        );
        let rt = RuntimeChanges::default()
            .with(&file(), &Change::EndpointAdd(ep("10.0.0.1", "cali3")))
            .unwrap();
        assert_eq!(
            rt.apply(&file()).unwrap_err().to_string(),
            "endpoint[1].address: 10.0.0.1 is outside this node's blocks"
        );
    }

    #[test]
    fn runtime_changes_persist_and_come_back() {
        let dir = std::env::temp_dir().join(format!("ipipd-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            RuntimeChanges::load(&dir).unwrap(),
            RuntimeChanges::default()
        );
        let rt = RuntimeChanges::default()
            .with(&file(), &Change::EndpointAdd(ep("192.168.83.130", "cali2")))
            .unwrap()
            .with(
                &file(),
                &Change::PeerDel {
                    address: a("172.31.242.157"),
                },
            )
            .unwrap();
        rt.save(&dir).unwrap();
        assert_eq!(RuntimeChanges::load(&dir).unwrap(), rt);
        std::fs::write(dir.join(RUNTIME_FILE), "{\"endpoints_added\": 3}").unwrap();
        let e = RuntimeChanges::load(&dir).unwrap_err().to_string();
        assert!(e.ends_with("runtime.json: not a runtime state file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A sequence of changes, each made in place when it fits and else applied whole: the
    /// desired state is at each step what `apply` makes of the runtime changes, and a change
    /// `apply` refuses is never one made in place (which leaves the state as it was).
    #[test]
    fn a_change_made_in_place_is_what_apply_makes() {
        let peer = |addr: &str, blocks: &[&str]| Peer {
            address: a(addr),
            blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
        };
        let changes = [
            Change::EndpointAdd(ep("192.168.83.130", "cali2")),
            // Replaces the file's endpoint with its address; then one on another's interface,
            // one outside the node's blocks (refused).
            Change::EndpointAdd(ep("192.168.83.129", "cali9")),
            Change::EndpointAdd(ep("192.168.83.131", "cali2")),
            Change::EndpointAdd(ep("192.168.84.1", "cali5")),
            Change::EndpointDel {
                address: a("192.168.83.130"),
            },
            Change::EndpointAdd(ep("192.168.83.130", "cali2")),
            Change::PeerAdd(peer("172.31.242.158", &["192.168.180.0/26"])),
            // A block another peer holds, one overlapping the node's, two overlapping each
            // other (refused); the peer's blocks changed.
            Change::PeerAdd(peer("172.31.242.159", &["192.168.180.0/27"])),
            Change::PeerAdd(peer("172.31.242.159", &["192.168.83.0/24"])),
            Change::PeerAdd(peer("172.31.242.159", &["10.1.0.0/16", "10.1.2.0/24"])),
            Change::PeerAdd(peer("172.31.242.158", &["192.168.181.0/26"])),
            Change::PeerDel {
                address: a("172.31.242.157"),
            },
            Change::EndpointDel {
                address: a("192.168.83.129"),
            },
        ];
        let mut rt = RuntimeChanges::default();
        let mut desired = rt.apply(&file()).unwrap();
        let mut in_place = 0;
        for c in &changes {
            let Ok(next) = rt.with(&file(), c) else {
                continue;
            };
            let whole = next.apply(&file());
            let before = desired.clone();
            match change_in_place(&mut desired, c) {
                Some(d) => {
                    in_place += 1;
                    assert_eq!(
                        Ok(&desired),
                        whole.as_ref().map_err(|e| e.to_string()),
                        "{c:?}"
                    );
                    // Undone: the same items (an item put back comes last).
                    let mut undone = desired.clone();
                    revert(&mut undone, &d);
                    let sorted = |c: &Config| {
                        let mut e = c.endpoints.clone();
                        e.sort_by_key(|e| e.address);
                        let mut p = c.peers.clone();
                        p.sort_by_key(|p| p.address);
                        (e, p)
                    };
                    assert_eq!(sorted(&undone), sorted(&before), "{c:?}");
                    rt = next;
                }
                None => {
                    assert_eq!(desired, before, "{c:?}");
                    if let Ok(w) = whole {
                        (rt, desired) = (next, w);
                    }
                }
            }
        }
        // Every change but the five refused ones went in place.
        assert_eq!(in_place, changes.len() - 5);
        assert_eq!(addrs(&desired), [a("192.168.83.130")]);
        assert_eq!(
            desired.peers,
            [peer("172.31.242.158", &["192.168.181.0/26"])]
        );
    }

    /// Several changes are made in place all together or not at all.
    #[test]
    fn changes_in_place_are_all_made_or_none() {
        let del = |s: &str| Change::EndpointDel { address: a(s) };
        let mut cfg = file();
        cfg.endpoints.push(ep("192.168.83.130", "cali2"));
        let before = cfg.clone();
        // The second is refused (outside the node's blocks); two about one address.
        for changes in [
            vec![
                del("192.168.83.129"),
                Change::EndpointAdd(ep("192.168.84.1", "cali5")),
            ],
            vec![
                del("192.168.83.129"),
                Change::EndpointAdd(ep("192.168.83.129", "cali9")),
            ],
        ] {
            assert_eq!(changes_in_place(&mut cfg, &changes), None, "{changes:?}");
            // (The same endpoints; one put back comes last.)
            let mut now = cfg.endpoints.clone();
            now.sort_by_key(|e| e.address);
            assert_eq!(now, before.endpoints);
        }
        let d =
            changes_in_place(&mut cfg, &[del("192.168.83.129"), del("192.168.83.130")]).unwrap();
        assert!(cfg.endpoints.is_empty());
        assert_eq!(d.endpoints_gone, before.endpoints);
    }
}
