//! `ipipd endpoint add|del`: a local pod, changed on the running node.

use std::net::Ipv4Addr;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use dataplane_user::{
    config::{EndpointCfg, parse_mac},
    control,
    desired::Change,
};

use super::Node;

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Add (or replace) a local pod: its address and its host-side veth.
    Add {
        #[arg(long)]
        address: Ipv4Addr,
        #[arg(long)]
        interface: String,
        /// The pod side's MAC (found through the veth when absent).
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        node: Node,
    },
    /// Delete a local pod by its address.
    Del {
        #[arg(long)]
        address: Ipv4Addr,
        #[command(flatten)]
        node: Node,
    },
}

impl EndpointCmd {
    pub async fn run(self) -> Result<()> {
        match self {
            EndpointCmd::Add {
                address,
                interface,
                mac,
                node,
            } => {
                let mac = mac
                    .map(|m| parse_mac(&m).map_err(|e| anyhow!("--mac: {e}")))
                    .transpose()?;
                let change = Change::EndpointAdd(EndpointCfg {
                    address,
                    interface,
                    mac,
                });
                // The file's rules, before anything is sent (the daemon checks again).
                change.check(node.config()?.as_ref().map(|c| &c.node))?;
                control::request(&node.state_dir()?, change).await
            }
            EndpointCmd::Del { address, node } => {
                control::request(&node.state_dir()?, Change::EndpointDel { address }).await
            }
        }
    }
}
