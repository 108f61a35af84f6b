//! `ipipd peer add|del`: a peer node, changed on the running node.

use std::net::Ipv4Addr;

use anyhow::Result;
use clap::Subcommand;
use dataplane_user::{config::Peer, control, desired::Change, net::Ipv4Net};

use super::Node;

#[derive(Subcommand)]
pub enum PeerCmd {
    /// Add (or replace) a peer node and the blocks it owns.
    Add {
        #[arg(long)]
        address: Ipv4Addr,
        /// A block the peer owns (repeatable).
        #[arg(long = "block")]
        blocks: Vec<Ipv4Net>,
        #[command(flatten)]
        node: Node,
    },
    /// Delete a peer node by its address.
    Del {
        #[arg(long)]
        address: Ipv4Addr,
        #[command(flatten)]
        node: Node,
    },
}

impl PeerCmd {
    pub async fn run(self) -> Result<()> {
        match self {
            PeerCmd::Add {
                address,
                blocks,
                node,
            } => {
                let change = Change::PeerAdd(Peer { address, blocks });
                // The file's rules, before anything is sent (the daemon checks again).
                change.check(node.config()?.as_ref().map(|c| &c.node))?;
                control::request(&node.state_dir()?, change).await.map(drop)
            }
            PeerCmd::Del { address, node } => {
                control::request(&node.state_dir()?, Change::PeerDel { address })
                    .await
                    .map(drop)
            }
        }
    }
}
