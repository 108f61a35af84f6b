//! The tunnel device, ipipd's stand-in for tunl0: a NOARP veth pair at the tunnel MTU whose
//! egress runs `to_tunnel`. The routes to remote blocks point at it; nothing ever crosses to the
//! peer (`<tunnel>p`): to_tunnel encapsulates or drops everything the kernel sends into it.

use anyhow::{Result, anyhow, bail};
use aya::programs::TcAttachType;
use dataplane_common::{Hook, program_names};

use crate::{
    apply::Dataplane,
    config::{Config, tunnel_peer},
    netlink::Netlink,
    plan::Links,
};

impl Dataplane {
    /// Creates the tunnel device when missing (at start, or when someone deleted it) and names
    /// it in the config entry for the programs. `links` are the interfaces as they are now; the
    /// device and its peer are added to them when created.
    pub(crate) async fn ensure_tunnel(&mut self, cfg: &Config, links: &mut Links) -> Result<()> {
        let name = &cfg.node.tunnel;
        if let Some(t) = self.tunnel.clone()
            && links.by_index(t.index).is_some_and(|l| l.name == t.name)
        {
            // There: to_tunnel on it (again, when its pinned link was removed).
            return self.attachments.tc(
                &mut self.ebpf,
                program_names::TO_TUNNEL,
                &t,
                TcAttachType::Egress,
                Hook::ToTunnel,
            );
        }
        let peer = tunnel_peer(name);
        if links.by_name(name).is_some() || links.by_name(&peer).is_some() {
            bail!("node.tunnel: interface {name} or {peer} already exists; it is not ipipd's");
        }
        let tunnel_mtu = self.mtu - 20;
        self.nl.veth_add_noarp(name, &peer, tunnel_mtu).await?;
        let (Some(t), Some(p)) = (
            self.nl.link_by_name(name).await?,
            self.nl.link_by_name(&peer).await?,
        ) else {
            bail!("node.tunnel: {name} vanished right after it was created");
        };
        // Ours from here on: a failure below leaves it to teardown, which deletes it.
        self.tunnel = Some(t.clone());
        for n in [name.as_str(), &peer] {
            // No IPv6 on either end (no link-local address, no neighbour discovery): only
            // IPv4 is tunnelled. Absent when the kernel has no IPv6.
            let f = format!("/proc/sys/net/ipv6/conf/{n}/disable_ipv6");
            if std::path::Path::new(&f).exists() {
                std::fs::write(&f, "1").map_err(|e| anyhow!("writing {f}: {e}"))?;
            }
        }
        self.nl.link_set_up(p.index).await?;
        self.nl.link_set_up(t.index).await?;
        let mac = t
            .mac
            .ok_or_else(|| anyhow!("node.tunnel: {name} has no MAC address"))?;
        self.update_config(|c| {
            c.tunnel_ifindex = t.index;
            c.tunnel_mac = mac;
        })?;
        log::info!(
            "tunnel device {name} (#{}, mtu {tunnel_mtu}) created",
            t.index
        );
        self.attachments.tc(
            &mut self.ebpf,
            program_names::TO_TUNNEL,
            &t,
            TcAttachType::Egress,
            Hook::ToTunnel,
        )?;
        links.insert(t);
        links.insert(p);
        Ok(())
    }
}

/// Deletes the tunnel device a killed run left (a veth of that name); refuses an interface of
/// that name that is something else.
pub async fn remove_previous(nl: &Netlink, name: &str) -> Result<()> {
    let Some(l) = nl.link_by_name(name).await? else {
        return Ok(());
    };
    if l.kind.as_deref() != Some("veth") {
        bail!(
            "node.tunnel: {name} exists and is a {} device, not the veth ipipd creates; \
             choose another name",
            l.kind.as_deref().unwrap_or("physical")
        );
    }
    log::warn!("found the tunnel device {name} of a previous run: replacing it");
    nl.link_delete(l.index).await
}
