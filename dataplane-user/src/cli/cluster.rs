//! The datastore's commands: `ipipd nodes`, `ipipd blocks`, `ipipd pool add|list|del`,
//! `ipipd node remove`, against the datastore the node's config names.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use dataplane_user::{
    config::{Config, DatastoreKind},
    datastore::{
        Store,
        calico::CalicoKeys,
        calico_sync,
        model::{CalicoPool, Pool, View},
    },
    net::Ipv4Net,
};
use serde::Serialize;

use super::{Output, output::print};

/// A config whose `[datastore]` names the cluster.
#[derive(Args)]
pub struct Cluster {
    /// A node's config (its [datastore] section is used).
    #[arg(long)]
    config: PathBuf,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl Cluster {
    async fn connect(&self) -> Result<(Store, Config)> {
        let cfg = Config::load(&self.config)?;
        let d = cfg
            .datastore
            .clone()
            .ok_or_else(|| anyhow!("{}: has no [datastore] section", self.config.display()))?;
        Ok((Store::connect(&d).await?, cfg))
    }

    /// A store ipipd may write: its own.
    async fn store(&self) -> Result<Store> {
        let (store, cfg) = self.connect().await?;
        if cfg.datastore_kind == DatastoreKind::CalicoEtcd {
            bail!(
                "the datastore is Calico's, which ipipd only reads: change its pools and nodes with calicoctl"
            );
        }
        Ok(store)
    }

    /// The cluster as the datastore has it, ipipd's or Calico's, and which it is.
    async fn view(&self) -> Result<(View, DatastoreKind)> {
        let (store, cfg) = self.connect().await?;
        let view = match cfg.datastore_kind {
            DatastoreKind::Ipipd => store.list().await?.0,
            DatastoreKind::CalicoEtcd => {
                let keys = CalicoKeys::new(&store.keys.prefix);
                calico_sync::list(&store, &keys).await?.0.view()
            }
        };
        Ok((view, cfg.datastore_kind))
    }
}

#[derive(Serialize)]
struct NodeRow {
    name: String,
    address: Ipv4Addr,
    /// Whether its daemon holds its liveness key (ipipd's datastore; Calico's has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    alive: Option<bool>,
    /// Calico's `ipv4IPIPTunnelAddr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_address: Option<Ipv4Addr>,
    blocks: Vec<Ipv4Net>,
    /// Calico's workload endpoints on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pods: Option<usize>,
}

/// `ipipd nodes`: every registered node, whether its daemon is up, its blocks; of Calico's,
/// its tunnel address and pods.
pub async fn nodes(c: Cluster) -> Result<()> {
    let (view, kind) = c.view().await?;
    let calico = kind == DatastoreKind::CalicoEtcd;
    let rows: Vec<NodeRow> = view
        .nodes
        .values()
        .map(|n| NodeRow {
            name: n.name.to_string(),
            address: n.address,
            alive: (!calico).then(|| view.alive.contains(&n.name)),
            tunnel_address: view.calico.tunnel_addresses.get(&*n.name).copied(),
            blocks: view.blocks_of(&n.name),
            pods: calico.then(|| {
                view.calico
                    .workloads
                    .values()
                    .filter(|w| *w.node == *n.name)
                    .count()
            }),
        })
        .collect();
    print(c.output, &rows, |rows| {
        if calico {
            println!(
                "{:<24} {:<16} {:<16} {:<5} BLOCKS",
                "NAME", "ADDRESS", "TUNNEL ADDRESS", "PODS"
            );
        } else {
            println!("{:<24} {:<16} {:<6} BLOCKS", "NAME", "ADDRESS", "ALIVE");
        }
        for r in rows {
            let b: Vec<String> = r.blocks.iter().map(|b| b.to_string()).collect();
            if calico {
                println!(
                    "{:<24} {:<16} {:<16} {:<5} {}",
                    r.name,
                    r.address,
                    r.tunnel_address.map_or("-".into(), |t| t.to_string()),
                    r.pods.unwrap_or(0),
                    b.join(",")
                );
            } else {
                println!(
                    "{:<24} {:<16} {:<6} {}",
                    r.name,
                    r.address,
                    if r.alive == Some(true) { "yes" } else { "no" },
                    b.join(",")
                );
            }
        }
    })
}

#[derive(Serialize)]
struct BlockRow {
    cidr: Ipv4Net,
    /// The owner in the store ("" when none: only a node that holds it disputes it).
    node: String,
    /// Other nodes that hold it (their pods use it): a conflict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    disputed_by: Vec<String>,
}

/// `ipipd blocks`: every claimed block and its owner, and the nodes that dispute it.
pub async fn blocks(c: Cluster) -> Result<()> {
    let (view, _) = c.view().await?;
    let mut rows: Vec<BlockRow> = view
        .blocks
        .iter()
        .map(|(b, n)| BlockRow {
            cidr: *b,
            node: n.to_string(),
            disputed_by: view
                .disputes
                .get(b)
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default(),
        })
        .collect();
    rows.extend(
        view.disputes
            .iter()
            .filter(|(b, _)| !view.blocks.contains_key(b))
            .map(|(b, d)| BlockRow {
                cidr: *b,
                node: String::new(),
                disputed_by: d.iter().cloned().collect(),
            }),
    );
    rows.sort_by_key(|r| r.cidr);
    print(c.output, &rows, |rows| {
        println!("{:<20} {:<24} DISPUTED BY", "BLOCK", "NODE");
        for r in rows {
            println!(
                "{:<20} {:<24} {}",
                r.cidr.to_string(),
                if r.node.is_empty() { "-" } else { &r.node },
                r.disputed_by.join(",")
            );
        }
    })
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Add a pool nodes claim blocks from.
    Add {
        #[arg(long)]
        cidr: Ipv4Net,
        #[arg(long, default_value_t = 26)]
        block_size: u8,
        /// Traffic from the pool's pods to destinations outside every pool leaves with its
        /// node's address (Calico's natOutgoing).
        #[arg(long)]
        nat_outgoing: bool,
        #[command(flatten)]
        cluster: Cluster,
    },
    /// The pools, with how many of their blocks are claimed.
    List {
        #[command(flatten)]
        cluster: Cluster,
    },
    /// Delete a pool none of whose blocks is claimed.
    Del {
        #[arg(long)]
        cidr: Ipv4Net,
        #[command(flatten)]
        cluster: Cluster,
    },
}

#[derive(Serialize)]
struct PoolRow {
    cidr: Ipv4Net,
    block_size: u8,
    nat_outgoing: bool,
    blocks: u64,
    claimed: usize,
    /// A Calico IPPool's name, ipipMode, disabled.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    calico: Option<CalicoPool>,
}

impl PoolCmd {
    pub async fn run(self) -> Result<()> {
        match self {
            PoolCmd::Add {
                cidr,
                block_size,
                nat_outgoing,
                cluster,
            } => {
                let pool = Pool::new(cidr, block_size, nat_outgoing);
                if !cluster.store().await?.ensure_pool(&pool).await? {
                    println!("pool {cidr} exists");
                }
                Ok(())
            }
            PoolCmd::List { cluster } => {
                let (view, _) = cluster.view().await?;
                let rows: Vec<PoolRow> = view
                    .pools
                    .values()
                    .map(|p| PoolRow {
                        cidr: p.cidr,
                        block_size: p.block_size,
                        nat_outgoing: p.nat_outgoing,
                        blocks: 1u64 << (p.block_size - p.cidr.len),
                        claimed: view.blocks.keys().filter(|b| p.cidr.overlaps(b)).count(),
                        calico: view.calico.pools.get(&p.cidr).cloned(),
                    })
                    .collect();
                print(cluster.output, &rows, |rows| {
                    println!(
                        "{:<20} {:<10} {:<8} {:<8} {:<12} IPIP_MODE",
                        "CIDR", "BLOCK_SIZE", "BLOCKS", "CLAIMED", "NAT_OUTGOING"
                    );
                    for r in rows {
                        println!(
                            "{:<20} {:<10} {:<8} {:<8} {:<12} {}",
                            r.cidr.to_string(),
                            r.block_size,
                            r.blocks,
                            r.claimed,
                            if r.nat_outgoing { "yes" } else { "no" },
                            r.calico.as_ref().map_or("-".to_string(), |c| format!(
                                "{}{} ({})",
                                c.ipip_mode.name(),
                                if c.disabled { ", disabled" } else { "" },
                                c.name
                            ))
                        );
                    }
                })
            }
            PoolCmd::Del { cidr, cluster } => cluster.store().await?.delete_pool(&cidr).await,
        }
    }
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Delete a node's registration and release its blocks: every other node drops it as a
    /// peer.
    Remove {
        name: String,
        #[command(flatten)]
        cluster: Cluster,
    },
}

impl NodeCmd {
    pub async fn run(self) -> Result<()> {
        match self {
            NodeCmd::Remove { name, cluster } => {
                let blocks = cluster.store().await?.remove_node(&name).await?;
                let b: Vec<String> = blocks.iter().map(|b| b.to_string()).collect();
                println!("removed node {name}; released {}", b.join(", "));
                Ok(())
            }
        }
    }
}
