//! `ipipd run`: the node daemon.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::Args;
use dataplane_user::{config::Config, daemon};

#[derive(Args)]
pub struct Run {
    #[arg(long)]
    config: PathBuf,
    /// Where runtime changes, the control socket and netlink filter records live
    /// (default /var/lib/ipipd/<node.name>).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where /metrics (OpenMetrics text), /healthz and /readyz are served; `off` for none.
    #[arg(long, default_value = "127.0.0.1:9097")]
    metrics_addr: String,
    /// On SIGTERM/SIGINT, remove the data plane as `ipipd teardown` does, instead of leaving it
    /// forwarding for the next start to adopt (tests and demos).
    #[arg(long)]
    teardown_on_exit: bool,
}

impl Run {
    pub async fn run(self) -> Result<()> {
        let metrics = match self.metrics_addr.as_str() {
            "off" => None,
            a => Some(
                a.parse::<std::net::SocketAddr>()
                    .map_err(|e| anyhow!("--metrics-addr {a:?}: {e} (an address:port, or off)"))?,
            ),
        };
        let cfg = Config::load(&self.config)?;
        let state_dir = self
            .state_dir
            .unwrap_or_else(|| daemon::default_state_dir(&cfg.node.name));
        let on_exit = if self.teardown_on_exit {
            daemon::OnExit::Teardown
        } else {
            daemon::OnExit::Leave
        };
        daemon::run(&self.config, &state_dir, metrics, on_exit).await
    }
}
