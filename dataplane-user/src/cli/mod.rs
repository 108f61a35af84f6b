//! The `ipipd` command line: one module per subcommand; [`output`] prints tables and JSON.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::{Args, Parser, Subcommand};
use dataplane_user::{config::Config, daemon};

mod check;
mod cluster;
mod endpoint;
mod endpoints;
mod install_cni;
mod monitor;
mod output;
mod peer;
mod probe;
mod routes;
mod run;
mod stats;
mod status;
mod teardown;

pub use output::Output;

#[derive(Parser)]
#[command(
    name = "ipipd",
    version,
    about = "IP-in-IP pod networking in eBPF: the Calico IPIP route table, without tunl0"
)]
pub struct Cli {
    /// Log level (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: log::LevelFilter,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the node daemon: load (or adopt what a previous run left), attach, program the
    /// maps, and keep them matching the config and the runtime changes until SIGTERM/SIGINT
    /// (SIGHUP re-reads the config). The data plane keeps forwarding after it exits.
    Run(run::Run),
    /// Remove a node's data plane (no daemon may run): programs, pins, filters, the tunnel
    /// device, ipipd's routes, ip_forward; the routes ipipd replaced are put back.
    Teardown(teardown::Teardown),
    /// Validate a config and print what `run` would do. Needs no privileges.
    Check(check::Check),
    /// Add or delete a local pod on the running node.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCmd),
    /// Add or delete a peer node on the running node.
    #[command(subcommand)]
    Peer(peer::PeerCmd),
    /// The running node's settings and attachments.
    Status(Read),
    /// The running node's routes map (what replaces the route table).
    Routes(Read),
    /// The running node's endpoints map.
    Endpoints(Read),
    /// The running node's counters, per interface, hook and reason.
    Stats(Read),
    /// Stream the running node's packet decisions, one line each (the programs emit them only
    /// while a monitor is connected).
    Monitor(monitor::Monitor),
    /// Load every program into the running kernel (the verifier runs), report, unload.
    Probe(probe::Probe),
    /// The cluster's nodes in the datastore: address, whether the daemon is up, blocks.
    Nodes(cluster::Cluster),
    /// The claimed blocks in the datastore and their owners.
    Blocks(cluster::Cluster),
    /// The datastore's address pools.
    #[command(subcommand)]
    Pool(cluster::PoolCmd),
    /// A node in the datastore.
    #[command(subcommand)]
    Node(cluster::NodeCmd),
    /// Put the CNI plugin and its conflist (ipipd-cni, then portmap) where the kubelet's
    /// runtime looks: what a DaemonSet's init container runs. Idempotent.
    InstallCni(install_cni::InstallCni),
}

/// Which node, for the commands that talk to a running daemon.
#[derive(Args, Clone)]
pub struct Node {
    /// The node's config (its name and pin_dir select the node).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The node's state directory (holds the control socket).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// The node's pin directory (holds the maps).
    #[arg(long, global = true)]
    pin_dir: Option<PathBuf>,
}

/// The read-only commands: a node, and how to print.
#[derive(Args)]
pub struct Read {
    #[command(flatten)]
    node: Node,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl Node {
    pub fn config(&self) -> Result<Option<Config>> {
        self.config.as_ref().map(|p| Config::load(p)).transpose()
    }
    pub fn state_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.state_dir {
            return Ok(d.clone());
        }
        match self.config()? {
            Some(c) => Ok(daemon::default_state_dir(&c.node.name)),
            None => Err(anyhow!("name the node: --config FILE or --state-dir DIR")),
        }
    }
    pub fn pin_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.pin_dir {
            return Ok(d.clone());
        }
        match self.config()? {
            Some(c) => Ok(c.node.pin_dir),
            None => Err(anyhow!("name the node: --config FILE or --pin-dir DIR")),
        }
    }
}

pub async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Run(r) => r.run().await,
        Command::Teardown(t) => t.run().await,
        Command::Check(c) => c.run().await,
        Command::Endpoint(e) => e.run().await,
        Command::Peer(p) => p.run().await,
        Command::Status(r) => status::run(r).await,
        Command::Routes(r) => routes::run(r),
        Command::Endpoints(r) => endpoints::run(r),
        Command::Stats(r) => stats::run(r),
        Command::Monitor(m) => m.run().await,
        Command::Probe(p) => p.run(),
        Command::Nodes(c) => cluster::nodes(c).await,
        Command::Blocks(c) => cluster::blocks(c).await,
        Command::Pool(p) => p.run().await,
        Command::Node(n) => n.run().await,
        Command::InstallCni(i) => i.run(),
    }
}
