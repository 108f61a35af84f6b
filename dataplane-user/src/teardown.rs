//! `ipipd teardown`: everything ipipd made on the node removed, what it replaced put back.

use std::path::Path;

use crate::{
    apply::{IP_FORWARD, device_is_there, remove_clsacts},
    attach::Attachments,
    config::Config,
    netlink::Netlink,
    pins, plan,
    record::NodeRecord,
};

/// Removes everything ipipd made on the node and puts back what it replaced: the attachments
/// (link pins, recorded filters), the routes (a route ipipd replaced comes back in place of
/// ipipd's, the others of ipipd's go), the tunnel device, `ip_forward`, the map pins and the
/// state directory's records. What cannot be removed is logged, the rest goes on.
pub async fn teardown(nl: &Netlink, cfg: &Config, state_dir: &Path) {
    let pin_dir = &cfg.node.pin_dir;
    let mut attachments = Attachments::new(pin_dir, state_dir, true);
    attachments.adopt(&cfg.node.uplink);
    // Every recorded filter, and the clsact ipipd added for it, goes here too.
    attachments.detach_all();
    remove_clsacts(nl, &mut attachments).await;
    let record = NodeRecord::load(state_dir).unwrap_or_else(|e| {
        log::warn!("{e:#}: nothing is restored");
        NodeRecord::default()
    });
    let links: plan::Links = nl.links().await.unwrap_or_default().into_iter().collect();
    for (prefix, r) in &record.replaced {
        if !device_is_there(r, &links) {
            log::info!(
                "route {prefix}: {} is not restored, its device is gone",
                r.summary
            );
            continue;
        }
        match r.message() {
            Ok(m) => match nl.route_restore(&m).await {
                Ok(()) => log::info!("route {prefix}: {} restored", r.summary),
                Err(e) => log::warn!("{e:#}"),
            },
            Err(e) => log::warn!("route {prefix}: the record is damaged: {e:#}"),
        }
    }
    match nl.owned_routes().await {
        Ok(routes) => {
            for r in routes {
                if let Err(e) = nl.route_delete(&r).await {
                    log::warn!("{e:#}");
                }
            }
        }
        Err(e) => log::warn!("{e:#}"),
    }
    let mut tunnels = vec![cfg.node.tunnel.clone()];
    tunnels.extend(record.tunnel.clone().filter(|t| *t != cfg.node.tunnel));
    for t in tunnels {
        if let Err(e) = crate::tunnel::remove(nl, &t).await {
            log::warn!("{e:#}");
        }
    }
    if let Some(prev) = &record.ip_forward
        && let Err(e) = std::fs::write(IP_FORWARD, prev)
    {
        log::warn!("restoring net.ipv4.ip_forward to {prev}: {e}");
    }
    if let Err(e) = crate::nat::remove() {
        log::warn!("{e:#}");
    }
    pins::remove_pins(pin_dir);
    NodeRecord::remove(state_dir);
    log::info!("data plane removed from {}", pin_dir.display());
}
