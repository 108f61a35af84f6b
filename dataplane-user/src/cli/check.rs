//! `ipipd check`: validate a config against this host and print what `run` would do.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use dataplane_user::{config::Config, daemon, net::fmt_mac, netlink::Netlink};

#[derive(Args)]
pub struct Check {
    #[arg(long)]
    config: PathBuf,
}

impl Check {
    pub async fn run(self) -> Result<()> {
        let path = &self.config;
        let cfg = Config::load(path)?;
        let nl = Netlink::new()?;
        let (_, mtu) = dataplane_user::host::check_kernel(&cfg, &nl).await?;
        let n = &cfg.node;
        println!("config {} is valid.", path.display());
        println!("on this host: {}", n.found);
        println!(
            "node {} ({}) on uplink {}: mtu {mtu}, tunnel mtu {}, mode {}, xdp {:?}",
            n.name,
            n.address,
            n.uplink,
            mtu - 20,
            n.mode.name(),
            n.xdp
        );
        println!(
            "pins in {}, state in {}",
            n.pin_dir.display(),
            daemon::default_state_dir(&n.name).display()
        );
        println!(
            "run would attach from_uplink (tc ingress) to {}, create the tunnel device {} (mtu {}) \
             with to_tunnel on its egress, and program:",
            n.uplink,
            n.tunnel,
            mtu - 20
        );
        for b in &cfg.blocks {
            println!("  {b:<20} own block: unused addresses dropped      (kernel: blackhole {b})");
        }
        for p in &cfg.peers {
            println!(
                "  {:<20} peer node {} (kernel slow path: {}/32 dev {} src {})",
                format!("{}/32", p.address),
                p.address,
                p.address,
                n.tunnel,
                n.address
            );
            for b in &p.blocks {
                println!(
                    "  {b:<20} remote block via {} (kernel slow path: {b} dev {} src {})",
                    p.address, n.tunnel, n.address
                );
            }
        }
        let links = nl.links().await?;
        for e in &cfg.endpoints {
            let present = links.iter().any(|l| l.name == e.interface);
            println!(
                "  {:<20} pod on {}{}{}",
                format!("{}/32", e.address),
                e.interface,
                e.mac
                    .map(|m| format!(" mac {}", fmt_mac(&m)))
                    .unwrap_or_default(),
                if present {
                    ""
                } else {
                    " (interface not there yet: attached when it appears)"
                }
            );
        }
        Ok(())
    }
}
