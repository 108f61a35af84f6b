//! `ipipd install-cni`: the CNI plugin and its conflist put where the kubelet's runtime looks
//! (see [`dataplane_user::cni::install`]); what a DaemonSet's init container runs.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use dataplane_user::{
    cni::install::{self, Done},
    control, daemon,
    host::{Host, System},
};

#[derive(Args)]
pub struct InstallCni {
    /// Where the runtime looks for CNI plugins.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// Where the runtime reads network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The plugin to copy. Default: `ipipd-cni` next to this `ipipd`.
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// The node's config: its name selects the daemon's state directory (and socket).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The daemon's state directory. Default: /var/lib/ipipd/<node>, the node being the
    /// config's name, else $NODE_NAME, else the hostname (as `run` names it).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// A log file for the plugin (default: its stderr, which the runtime keeps).
    #[arg(long)]
    plugin_log: Option<PathBuf>,
    /// Uninstall instead: remove the plugin and the conflist (nothing else).
    #[arg(long)]
    remove: bool,
}

impl InstallCni {
    pub fn run(self) -> Result<()> {
        if self.remove {
            for p in install::remove(&self.bin_dir, &self.conf_dir)? {
                println!("removed {}", p.display());
            }
            return Ok(());
        }
        let plugin = match self.plugin {
            Some(p) => p,
            None => std::env::current_exe()
                .context("finding this ipipd")?
                .with_file_name(install::PLUGIN),
        };
        let state_dir = match (self.state_dir, &self.config) {
            (Some(d), _) => d,
            (None, Some(c)) => {
                daemon::default_state_dir(&dataplane_user::config::Config::load(c)?.node.name)
            }
            (None, None) => {
                let name = System.env_node_name().unwrap_or_else(|| System.hostname());
                daemon::default_state_dir(&name)
            }
        };
        let list = install::conflist(
            &control::socket_path(&state_dir),
            self.plugin_log.as_deref(),
        );
        for d in install::install(&plugin, &self.bin_dir, &self.conf_dir, &list)? {
            match d {
                Done::Written(p) => println!("installed {}", p.display()),
                Done::Unchanged(p) => println!("{} is up to date", p.display()),
            }
        }
        Ok(())
    }
}
