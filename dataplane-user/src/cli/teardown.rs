//! `ipipd teardown`: removes a node's data plane while no daemon runs, and puts back what ipipd
//! replaced.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dataplane_user::{apply, config::Config, daemon, lock::NodeLock, netlink::Netlink, pins};

#[derive(Args)]
pub struct Teardown {
    /// The node's config (its pin directory, tunnel device and uplink).
    #[arg(long)]
    config: PathBuf,
    /// The node's state directory (default /var/lib/ipipd/<node.name>).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl Teardown {
    pub async fn run(self) -> Result<()> {
        let cfg = Config::load(&self.config)?;
        let state_dir = self
            .state_dir
            .unwrap_or_else(|| daemon::default_state_dir(&cfg.node.name));
        let pin_dir = &cfg.node.pin_dir;
        std::fs::create_dir_all(&state_dir)?;
        if !pin_dir.exists() {
            pins::ensure_bpffs(pin_dir)?;
            std::fs::create_dir_all(pin_dir)?;
        }
        // A running daemon keeps its data plane: stop it first.
        let lock = NodeLock::take(&state_dir, pin_dir)?;
        let nl = Netlink::new()?;
        apply::teardown(&nl, &cfg, &state_dir).await;
        drop(lock);
        let _ = std::fs::remove_file(state_dir.join("lock"));
        Ok(())
    }
}
