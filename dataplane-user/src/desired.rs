//! The desired state: the config file's part plus the runtime changes made through the control
//! socket, which are persisted in the state directory and re-applied on start. (The datastore
//! and the CNI plugin will be further sources of it.)

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, EndpointCfg, Peer, validate},
    pins::write_atomic,
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

    /// The changes with `change` applied (not yet validated).
    pub fn with(&self, file: &Config, change: &Change) -> Result<Self> {
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
