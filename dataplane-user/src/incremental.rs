//! Incremental reconciles: a change (an endpoint, a pod's veth, a peer's block, a node joining)
//! costs work in proportion to the change, not to the node. A full reconcile reads the kernel
//! (every link, every route, the kernel's route to each peer, the neighbours) and the maps;
//! at 10,000 endpoints or 5,000 peers that is most of a second or more. Between full
//! reconciles the kernel view they read is kept here, brought up to date with the link events
//! and with what ipipd itself changed, and what a change needs of the kernel is read for the
//! change alone: a new endpoint's pod MAC, a new peer's route. The plan and the apply are the
//! same; the maps are diffed against what the last apply wrote.
//!
//! Drift (a route, map entry or attachment changed by someone else) is what a full reconcile
//! catches: the daemon runs one periodically ([`FULL_EVERY`]), after a netlink resync, a
//! pin repair, a next-hop change and any failure.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::Result;
use dataplane_common::Endpoint;

use crate::{
    config::{Config, EndpointCfg},
    netlink::{Event, Netlink},
    plan::{self, Delta, KernelView, Plan, Touched, Underlay},
};

/// How often the daemon reconciles in full, whatever happened (Felix's route refresh is 90 s
/// too).
pub const FULL_EVERY: Duration = Duration::from_secs(90);

/// What a batch of link events asks of a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// Nothing of ipipd's (a pod's veth made before its endpoint is asked for, another CNI's
    /// or a container runtime's link): the kept view takes the links in, there is nothing to
    /// plan. (At 10,000 endpoints a whole plan costs tens of milliseconds that a CNI ADD,
    /// which makes a link just before it asks, would otherwise wait for.)
    Nothing,
    /// Pods' interfaces only (a desired endpoint names the link, or the link holds an
    /// endpoint's entry in the plan): these endpoints, planned again by parts.
    Endpoints(Vec<EndpointCfg>),
    /// The uplink, the tunnel device or its peer, a pod attachment no endpoint explains, or
    /// events the kernel dropped: the batch is planned whole.
    Whole,
}

/// What `events` ask of a reconcile ([`LinkChange`]); `(uplink, tunnel)` are their
/// ifindexes, `planned` the plan's endpoint entries, `attached` whether an interface holds a
/// pod attachment.
pub fn link_change(
    events: &[Event],
    cfg: &Config,
    (uplink, tunnel): (u32, Option<u32>),
    planned: &BTreeMap<u32, Endpoint>,
    attached: impl Fn(u32) -> bool,
) -> LinkChange {
    let mut out: Vec<EndpointCfg> = Vec::new();
    for ev in events {
        let (index, name) = match ev {
            Event::LinkNew(l) => (l.index, l.name.as_str()),
            Event::LinkDel { index, name } => (*index, name.as_str()),
            Event::Resync => return LinkChange::Whole,
        };
        if index == uplink
            || Some(index) == tunnel
            || name == cfg.node.uplink
            || name == cfg.node.tunnel
            || name == crate::config::tunnel_peer(&cfg.node.tunnel)
        {
            return LinkChange::Whole;
        }
        let held = planned.get(&index).map(|e| Ipv4Addr::from(e.pod_ip));
        let found: Vec<&EndpointCfg> = cfg
            .endpoints
            .iter()
            .filter(|e| e.interface == name || Some(e.address) == held)
            .collect();
        if found.is_empty() && (held.is_some() || attached(index)) {
            return LinkChange::Whole;
        }
        for e in found {
            if !out.iter().any(|o| o.address == e.address) {
                out.push(e.clone());
            }
        }
    }
    if out.is_empty() {
        LinkChange::Nothing
    } else {
        LinkChange::Endpoints(out)
    }
}

/// The kernel as the last full reconcile read it, and what changed since.
#[derive(Debug, Clone)]
pub struct Cache {
    view: KernelView,
    /// The underlay and node address the view's next-hop facts were read for.
    underlay: Underlay,
    node_address: Ipv4Addr,
}

impl Cache {
    /// After a full reconcile that went through: its view, as the kernel is now that the plan
    /// was applied (ipipd's routes are the plan's).
    pub fn new(mut view: KernelView, plan: &Plan, underlay: Underlay, cfg: &Config) -> Self {
        view.owned_routes = plan.slow_path.clone();
        view.pod_macs.clear();
        Cache {
            view,
            underlay,
            node_address: cfg.node.address,
        }
    }

    /// Whether a change can be planned on this view: the same underlay and node address
    /// (what the next hops were read for).
    pub fn fits(&self, cfg: &Config, underlay: Underlay) -> bool {
        self.underlay == underlay && self.node_address == cfg.node.address
    }

    /// The links as last known.
    pub fn links(&self) -> &crate::plan::Links {
        &self.view.links
    }

    /// Link events taken in; false when one needs a full read (the kernel dropped events).
    pub fn on_events(&mut self, events: &[Event]) -> bool {
        for ev in events {
            match ev {
                Event::LinkNew(l) => {
                    if let Some(old) = self.view.links.by_index(l.index).cloned() {
                        self.view.links.remove(&old);
                    }
                    self.view.links.insert(l.clone());
                }
                Event::LinkDel { index, .. } => {
                    if let Some(old) = self.view.links.by_index(*index).cloned() {
                        self.view.links.remove(&old);
                    }
                }
                Event::Resync => return false,
            }
        }
        true
    }

    /// The view to plan on.
    pub fn view(&self) -> &KernelView {
        &self.view
    }

    pub fn view_mut(&mut self) -> &mut KernelView {
        &mut self.view
    }

    /// The kept view made ready to plan `cfg` on, with what this change needs read from the
    /// kernel: the interface and pod-side MAC of an endpoint new to the maps, the kernel's route
    /// to a new peer (and the neighbours again, when there is one). (On an error the caller
    /// drops the cache: the next reconcile is full.)
    pub async fn read_for(
        &mut self,
        nl: &Netlink,
        cfg: &Config,
        known: &BTreeMap<u32, Endpoint>,
    ) -> Result<()> {
        self.view.pod_macs.clear();
        self.read_endpoints(nl, cfg.endpoints.iter(), known).await?;
        let peers: std::collections::HashSet<Ipv4Addr> =
            cfg.peers.iter().map(|p| p.address).collect();
        self.view.peer_routes.retain(|a, _| peers.contains(a));
        self.read_peers(nl, cfg.peers.iter().map(|p| p.address))
            .await
    }

    /// [`Cache::read_for`] for a change of parts only: the interface and pod-side MAC of each
    /// new endpoint not in the maps (`known`) yet, the kernel's route to each new peer (and
    /// the neighbours again, when there is one); a gone peer's route is forgotten.
    pub async fn read_for_delta(
        &mut self,
        nl: &Netlink,
        delta: &Delta,
        known: &BTreeMap<u32, Endpoint>,
    ) -> Result<()> {
        self.view.pod_macs.clear();
        self.read_endpoints(nl, delta.endpoints_new.iter(), known)
            .await?;
        for p in &delta.peers_gone {
            self.view.peer_routes.remove(&p.address);
        }
        self.read_peers(nl, delta.peers_new.iter().map(|p| p.address))
            .await
    }

    /// Each endpoint's interface as the kernel has it now, and its pod-side MAC, unless the
    /// maps (`known`) hold it already.
    async fn read_endpoints(
        &mut self,
        nl: &Netlink,
        endpoints: impl Iterator<Item = &EndpointCfg>,
        known: &BTreeMap<u32, Endpoint>,
    ) -> Result<()> {
        let view = &mut self.view;
        for ep in endpoints {
            if view
                .links
                .by_name(&ep.interface)
                .is_some_and(|l| plan::in_maps(known, l, ep))
            {
                continue;
            }
            // An endpoint not in the maps yet: its interface as the kernel has it now (a CNI
            // ADD creates the veth just before it asks; its link event may still be queued).
            if let Some(old) = view.links.by_name(&ep.interface).cloned() {
                view.links.remove(&old);
            }
            let Some(link) = nl.link_by_name(&ep.interface).await? else {
                continue;
            };
            if ep.mac.is_none()
                && let Ok(Some(mac)) = nl.peer_mac(&link).await
            {
                view.pod_macs.insert(link.index, mac);
            }
            view.links.insert(link);
        }
        Ok(())
    }

    /// The kernel's route to each of `peers` it has none for, and the neighbours again when
    /// there was one.
    async fn read_peers(
        &mut self,
        nl: &Netlink,
        peers: impl Iterator<Item = Ipv4Addr>,
    ) -> Result<()> {
        let uplink = self.underlay.uplink;
        if uplink == 0 {
            return Ok(());
        }
        let view = &mut self.view;
        let new: Vec<Ipv4Addr> = peers
            .filter(|a| !view.peer_routes.contains_key(a))
            .collect();
        if !new.is_empty() {
            let routes = plan::peer_routes(nl, new.into_iter(), uplink).await;
            view.peer_routes.extend(routes);
            view.neighbours = nl.neighbours(uplink).await?;
        }
        Ok(())
    }

    /// After a change of parts that went through: the slow-path routes it took out and put
    /// in are the kernel's now.
    pub fn changed(&mut self, touched: &Touched) {
        for r in &touched.slow_removed {
            self.view.owned_routes.remove(r);
        }
        self.view
            .owned_routes
            .extend(touched.slow_added.iter().cloned());
        self.view.pod_macs.clear();
    }

    /// After an incremental reconcile that went through: the view it planned on is the
    /// kernel's now (ipipd's routes the plan's).
    pub fn applied(&mut self, plan: &Plan) {
        self.view.owned_routes = plan.slow_path.clone();
        self.view.pod_macs.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::netlink::Link;

    const UNDERLAY: Underlay = Underlay {
        uplink: 2,
        mtu: 1500,
    };

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some([0xee, 0xee, 0xee, 0xee, 0xee, index as u8]),
            mtu: 1500,
            link: None,
            link_netnsid: None,
            kind: Some("veth".into()),
            up: true,
        }
    }

    /// The seed's worker with `pods` endpoints (their MACs given: nothing to read).
    fn worker(pods: u32) -> Config {
        let mut s = String::from(
            "[node]\nname = \"worker\"\nuplink = \"eth0\"\naddress = \"172.31.242.156\"\n\
             [[block]]\ncidr = \"192.168.83.128/26\"\n\
             [[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"192.168.179.0/26\"]\n",
        );
        for i in 0..pods {
            s += &format!(
                "[[endpoint]]\naddress = \"192.168.83.{}\"\ninterface = \"cali{i}\"\nmac = \"ee:ee:ee:ee:ee:{i:02x}\"\n",
                129 + i
            );
        }
        Config::parse(&s).unwrap()
    }

    /// What a full read finds with the pods' veths `pods` present.
    fn full_view(pods: u32) -> KernelView {
        let mut links = vec![link(2, "eth0"), link(9, "ipipd0")];
        links.extend((0..pods).map(|i| link(20 + i, &format!("cali{i}"))));
        KernelView {
            links: links.into_iter().collect(),
            uplink_nets: vec!["172.31.240.0/20".parse().unwrap()],
            peer_routes: [("172.31.242.157".parse().unwrap(), (None, Some(2)))].into(),
            neighbours: [(
                "172.31.242.157".parse().unwrap(),
                [0, 0x16, 0x3e, 0, 0x89, 0x76],
            )]
            .into(),
            ..KernelView::default()
        }
    }

    #[test]
    fn a_change_planned_on_the_kept_view_is_what_a_full_read_plans() {
        let cfg = worker(1);
        let first = plan::plan(&cfg, UNDERLAY, 9, &full_view(1), &BTreeMap::new());
        let mut cache = Cache::new(full_view(1), &first, UNDERLAY, &cfg);
        assert!(cache.fits(&cfg, UNDERLAY));
        // A second pod: its veth appears (a link event), then its endpoint is added.
        assert!(cache.on_events(&[Event::LinkNew(link(21, "cali1"))]));
        let cfg2 = worker(2);
        let kept = plan::plan(&cfg2, UNDERLAY, 9, &cache.view, &first.endpoints);
        let mut full = full_view(2);
        full.owned_routes = first.slow_path.clone();
        let fresh = plan::plan(&cfg2, UNDERLAY, 9, &full, &first.endpoints);
        assert_eq!(kept, fresh);
        assert_eq!(kept.endpoints.len(), 2);
        cache.applied(&kept);
        assert_eq!(cache.view.owned_routes, kept.slow_path);
        // The veth goes: the endpoint waits for its interface again.
        assert!(cache.on_events(&[Event::LinkDel {
            index: 21,
            name: "cali1".into()
        }]));
        let gone = plan::plan(&cfg2, UNDERLAY, 9, &cache.view, &kept.endpoints);
        assert_eq!(gone.endpoints.len(), 1);
        assert_eq!(
            gone.pending.values().cloned().collect::<BTreeSet<_>>(),
            ["cali1".to_string()].into()
        );
    }

    #[test]
    fn a_renamed_link_keeps_one_name_and_a_resync_or_another_address_asks_for_a_full_read() {
        let cfg = worker(1);
        let p = plan::plan(&cfg, UNDERLAY, 9, &full_view(1), &BTreeMap::new());
        let mut cache = Cache::new(full_view(1), &p, UNDERLAY, &cfg);
        assert!(cache.on_events(&[Event::LinkNew(link(20, "renamed"))]));
        assert!(cache.links().by_name("cali0").is_none());
        assert_eq!(cache.links().by_name("renamed").map(|l| l.index), Some(20));
        assert!(!cache.on_events(&[Event::Resync]));
        let mut moved = cfg.clone();
        moved.node.address = "172.31.242.200".parse().unwrap();
        assert!(!cache.fits(&moved, UNDERLAY));
        assert!(!cache.fits(
            &cfg,
            Underlay {
                uplink: 3,
                mtu: 1500
            }
        ));
    }

    #[test]
    fn only_links_something_refers_to_are_planned_for() {
        let cfg = worker(2);
        let p = plan::plan(&cfg, UNDERLAY, 9, &full_view(2), &BTreeMap::new());
        // ifindex 2 the uplink, 9 the tunnel device, 20 a pod's veth holding an attachment.
        let of = |ev: &Event| {
            link_change(
                std::slice::from_ref(ev),
                &cfg,
                (2, Some(9)),
                &p.endpoints,
                |i| i == 20,
            )
        };
        let new = |i, n: &str| Event::LinkNew(link(i, n));
        let del = |i, n: &str| Event::LinkDel {
            index: i,
            name: n.into(),
        };
        for ev in [
            new(2, "eth0"),
            new(20, "renamed"),
            del(20, "cali0"),
            new(21, "cali1"),
            del(31, "cali1"),
            new(9, "ipipd0"),
            new(10, &crate::config::tunnel_peer("ipipd0")),
            Event::Resync,
        ] {
            assert_ne!(of(&ev), LinkChange::Nothing, "{ev:?}");
        }
        for ev in [new(40, "calinotyet"), del(41, "vethx"), new(3, "eth1")] {
            assert_eq!(of(&ev), LinkChange::Nothing, "{ev:?}");
        }
    }

    #[test]
    fn link_events_about_pods_only_name_their_endpoints_and_any_other_plans_whole() {
        let cfg = worker(2);
        let p = plan::plan(&cfg, UNDERLAY, 9, &full_view(2), &BTreeMap::new());
        // ifindex 40 holds an attachment no endpoint explains.
        let of =
            |events: &[Event]| match link_change(events, &cfg, (2, Some(9)), &p.endpoints, |i| {
                i == 40
            }) {
                LinkChange::Nothing => Some(Vec::new()),
                LinkChange::Endpoints(e) => {
                    Some(e.iter().map(|e| e.address.to_string()).collect::<Vec<_>>())
                }
                LinkChange::Whole => None,
            };
        let new = |i, n: &str| Event::LinkNew(link(i, n));
        let del = |i, n: &str| Event::LinkDel {
            index: i,
            name: n.into(),
        };
        // A pod's veth set up, one gone, one renamed (its endpoint by the plan's entry).
        assert_eq!(of(&[new(20, "cali0")]).unwrap(), ["192.168.83.129"]);
        assert_eq!(
            of(&[del(21, "cali1"), new(20, "renamed"), new(20, "cali0")]).unwrap(),
            ["192.168.83.130", "192.168.83.129"]
        );
        // Nothing of ipipd's: nothing to plan.
        assert_eq!(
            of(&[new(50, "vethother"), del(51, "vethx")]).unwrap(),
            Vec::<String>::new()
        );
        for events in [
            vec![new(2, "eth0")],
            vec![new(20, "cali0"), del(9, "ipipd0")],
            vec![new(11, &crate::config::tunnel_peer("ipipd0"))],
            vec![del(40, "calistale")],
            vec![new(20, "cali0"), Event::Resync],
        ] {
            assert_eq!(of(&events), None, "{events:?}");
        }
    }
}
