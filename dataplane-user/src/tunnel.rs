//! The tunnel device, ipipd's stand-in for tunl0: a NOARP veth pair at the tunnel MTU whose
//! egress runs `to_tunnel`. The routes to remote blocks point at it; nothing ever crosses to the
//! peer (`<tunnel>p`): to_tunnel encapsulates or drops everything the kernel sends into it.

use anyhow::{Result, anyhow, bail};

use crate::{
    apply::Dataplane,
    config::{Config, tunnel_peer},
    netlink::{Link, Netlink},
    plan::Links,
};

impl Dataplane {
    /// Makes sure the tunnel device is there: adopts the one a previous run left (its MTU set to
    /// this run's when the config changed it), or creates it (at start, or when someone deleted
    /// it), and names it in the config entry for the programs. `links` are the interfaces as
    /// they are now; a device created here is added to them.
    pub(crate) async fn ensure_tunnel(&mut self, cfg: &Config, links: &mut Links) -> Result<()> {
        let name = &cfg.node.tunnel;
        if let Some(t) = &self.tunnel
            && links.by_index(t.index).is_some_and(|l| l.name == t.name)
        {
            return Ok(());
        }
        let peer = tunnel_peer(name);
        let tunnel_mtu = dataplane_common::tunnel_mtu(self.mtu);
        let (t, p) = match (links.by_name(name).cloned(), links.by_name(&peer).cloned()) {
            (Some(t), Some(p)) if is_ours(&t, &p) => {
                for l in [&t, &p] {
                    if l.mtu != tunnel_mtu {
                        self.nl.link_set_mtu(l.index, tunnel_mtu).await?;
                        log::info!("tunnel device {}: mtu {} → {tunnel_mtu}", l.name, l.mtu);
                    }
                }
                log::info!("tunnel device {name} (#{}) adopted", t.index);
                if self.record.tunnel.is_none() {
                    // Left by a run before the record (v0.1.0): ipipd's all the same.
                    self.record.tunnel = Some(name.clone());
                    self.record.save(&self.state_dir)?;
                }
                (t, p)
            }
            (None, None) => {
                // Recorded before it exists: whatever happens next, a teardown knows it is ours.
                if self.record.tunnel.as_deref() != Some(name) {
                    if self.record.tunnel.is_none() {
                        self.record.tunnel = Some(name.clone());
                    }
                    self.record.save(&self.state_dir)?;
                }
                self.create_tunnel(name, &peer, tunnel_mtu).await?
            }
            _ => bail!("node.tunnel: interface {name} or {peer} already exists; it is not ipipd's"),
        };
        // Ours from here on: a failure below leaves it to teardown, which deletes it.
        self.tunnel = Some(t.clone());
        self.tunnel_address = None;
        self.nl.link_set_up(p.index).await?;
        self.nl.link_set_up(t.index).await?;
        let mac = t
            .mac
            .ok_or_else(|| anyhow!("node.tunnel: {name} has no MAC address"))?;
        let c = crate::maps::config(&self.ebpf)?;
        if c.tunnel_ifindex != t.index || c.tunnel_mac != mac {
            self.update_config(|c| {
                c.tunnel_ifindex = t.index;
                c.tunnel_mac = mac;
            })?;
        }
        links.insert(t);
        links.insert(p);
        Ok(())
    }

    /// The node's tunnel address (Calico's `ipv4IPIPTunnelAddr`) as the tunnel device's only
    /// address, as tunl0 has it: the kernel takes it as the source of the node's own packets
    /// to remote pods, and delivers what comes back to it locally.
    pub(crate) async fn ensure_tunnel_address(&mut self, cfg: &Config) -> Result<()> {
        let Some(t) = &self.tunnel else {
            return Ok(());
        };
        if self.tunnel_address == Some(cfg.tunnel_address) {
            return Ok(());
        }
        if self
            .nl
            .set_only_address(t.index, cfg.tunnel_address)
            .await?
        {
            match cfg.tunnel_address {
                Some(a) => log::info!("tunnel device {}: address {a}/32", t.name),
                None => log::info!("tunnel device {}: no address", t.name),
            }
        }
        self.tunnel_address = Some(cfg.tunnel_address);
        Ok(())
    }

    async fn create_tunnel(&mut self, name: &str, peer: &str, mtu: u32) -> Result<(Link, Link)> {
        self.nl.veth_add_noarp(name, peer, mtu).await?;
        let (Some(t), Some(p)) = (
            self.nl.link_by_name(name).await?,
            self.nl.link_by_name(peer).await?,
        ) else {
            bail!("node.tunnel: {name} vanished right after it was created");
        };
        for n in [name, peer] {
            // No IPv6 on either end (no link-local address, no neighbour discovery): only
            // IPv4 is tunnelled. Absent when the kernel has no IPv6.
            let f = format!("/proc/sys/net/ipv6/conf/{n}/disable_ipv6");
            if std::path::Path::new(&f).exists() {
                std::fs::write(&f, "1").map_err(|e| anyhow!("writing {f}: {e}"))?;
            }
        }
        log::info!("tunnel device {name} (#{}, mtu {mtu}) created", t.index);
        Ok((t, p))
    }
}

/// The tunnel device ipipd makes: a veth whose peer is `<name>p`, each the other's.
fn is_ours(t: &Link, p: &Link) -> bool {
    t.kind.as_deref() == Some("veth")
        && p.kind.as_deref() == Some("veth")
        && t.link == Some(p.index)
        && p.link == Some(t.index)
}

/// Deletes ipipd's tunnel device of that name (a veth); refuses an interface of that name that
/// is something else.
pub async fn remove(nl: &Netlink, name: &str) -> Result<()> {
    let Some(l) = nl.link_by_name(name).await? else {
        return Ok(());
    };
    if l.kind.as_deref() != Some("veth") {
        bail!(
            "node.tunnel: {name} exists and is a {} device, not the veth ipipd creates; \
             left as it is",
            l.kind.as_deref().unwrap_or("physical")
        );
    }
    log::info!("tunnel device {name} removed");
    nl.link_delete(l.index).await
}
