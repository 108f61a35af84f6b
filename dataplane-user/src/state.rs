//! The desired state: the config file's part plus the runtime changes made through the control
//! socket, which are persisted in the state directory and re-applied on start.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, EndpointCfg, Peer, validate},
    dataplane::write_atomic,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
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
                rt.endpoints_deleted.retain(|a| *a != ep.address);
                rt.endpoints_added.retain(|e| e.address != ep.address);
                rt.endpoints_added.push(ep.clone());
            }
            Change::EndpointDel { address } => {
                let was_added = rt.endpoints_added.iter().any(|e| e.address == *address);
                rt.endpoints_added.retain(|e| e.address != *address);
                let in_file = file.endpoints.iter().any(|e| e.address == *address);
                if in_file && !rt.endpoints_deleted.contains(address) {
                    rt.endpoints_deleted.push(*address);
                } else if !in_file && !was_added {
                    bail!("no endpoint {address}");
                }
            }
            Change::PeerAdd(p) => {
                rt.peers_deleted.retain(|a| *a != p.address);
                rt.peers_added.retain(|q| q.address != p.address);
                rt.peers_added.push(p.clone());
            }
            Change::PeerDel { address } => {
                let was_added = rt.peers_added.iter().any(|p| p.address == *address);
                rt.peers_added.retain(|p| p.address != *address);
                let in_file = file.peers.iter().any(|p| p.address == *address);
                if in_file && !rt.peers_deleted.contains(address) {
                    rt.peers_deleted.push(*address);
                } else if !in_file && !was_added {
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
        cfg.endpoints.retain(|e| {
            !self.endpoints_deleted.contains(&e.address)
                && !self.endpoints_added.iter().any(|a| a.address == e.address)
        });
        cfg.endpoints.extend(self.endpoints_added.iter().cloned());
        cfg.peers.retain(|p| {
            !self.peers_deleted.contains(&p.address)
                && !self.peers_added.iter().any(|a| a.address == p.address)
        });
        cfg.peers.extend(self.peers_added.iter().cloned());
        validate(&cfg).map_err(|e| anyhow!("{e}"))?;
        Ok(cfg)
    }
}
