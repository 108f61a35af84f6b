//! `ipipd monitor`: the running node's packet decisions, one line each.

use std::net::Ipv4Addr;

use anyhow::Result;
use clap::Args;
use dataplane_user::monitor;

use super::{Node, Output};

#[derive(Args)]
pub struct Monitor {
    #[command(flatten)]
    node: Node,
    /// Drops only.
    #[arg(long)]
    drops_only: bool,
    /// Only packets from or to this address (outer or inner header).
    #[arg(long)]
    endpoint: Option<Ipv4Addr>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Stop after this many lines.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<u64>,
}

impl Monitor {
    pub async fn run(self) -> Result<()> {
        monitor::run(
            &self.node.state_dir()?,
            &self.node.pin_dir()?,
            &monitor::Options {
                drops_only: self.drops_only,
                endpoint: self.endpoint,
                json: self.output == Output::Json,
                count: self.count,
                duration: self.seconds.map(std::time::Duration::from_secs),
            },
        )
        .await
    }
}
