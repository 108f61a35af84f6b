//! `ipipd endpoint add|del`: a local pod, changed on the running node.

use std::net::Ipv4Addr;

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use dataplane_user::{
    config::EndpointCfg,
    control::{self, Answer, Request},
    desired::Change,
    ipam::Attachment,
    net::parse_mac,
};

use super::Node;

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Add (or replace) a local pod: its address and its host-side veth. Without --address
    /// the daemon allocates one from the node's blocks (as for a CNI ADD) and it is printed;
    /// `endpoint del` releases it.
    Add {
        #[arg(long)]
        address: Option<Ipv4Addr>,
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
                let state_dir = node.state_dir()?;
                let cfg = node.config()?;
                let change = |address, attachment| -> Result<Change> {
                    let change = Change::EndpointAdd(EndpointCfg {
                        address,
                        interface: interface.clone(),
                        mac,
                        pod: None,
                        attachment,
                    });
                    // The file's rules, before anything is sent (the daemon checks again).
                    change.check(cfg.as_ref().map(|c| &c.node))?;
                    Ok(change)
                };
                let Some(address) = address else {
                    let owner = Attachment::cli(&interface);
                    let mut c = control::Client::connect(&state_dir).await?;
                    let address = match c
                        .call(&Request::Allocate {
                            owner: owner.clone(),
                            pod: None,
                        })
                        .await?
                    {
                        Some(Answer::Address(a)) => a,
                        other => bail!("the daemon gave no address: {other:?}"),
                    };
                    let added = match change(address, Some(owner.clone())) {
                        Ok(ch) => control::request(&state_dir, ch).await.map(drop),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = added {
                        // Nothing half-applied: the address goes back.
                        let _ = control::Client::connect(&state_dir)
                            .await?
                            .call(&Request::Detach { owner })
                            .await;
                        return Err(e);
                    }
                    println!("{address}");
                    return Ok(());
                };
                control::request(&state_dir, change(address, None)?).await?;
                Ok(())
            }
            EndpointCmd::Del { address, node } => {
                control::request(&node.state_dir()?, Change::EndpointDel { address }).await?;
                Ok(())
            }
        }
    }
}
