//! The running data plane of one node: the loaded object with its pinned maps, the attachments,
//! and the slow-path routes. [`Dataplane::reconcile`] is the one path that writes all of them
//! from a desired state; [`Dataplane::teardown`] is the separate step that removes them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::FdLink,
        tc::{self, SchedClassifierLink, TcHandle},
        xdp::XdpLink,
    },
    util::KernelVersion,
};
use dataplane_common::{
    Endpoint, Hook, Mode, NodeConfig, ROUTE_F_ENCAP, ROUTE_F_L2, ROUTE_F_SAME_SUBNET, RouteKind,
    RouteValue, program_names,
};
use serde::{Deserialize, Serialize};

use crate::{
    bpfsys,
    config::{Config, Ipv4Net, XdpMode as CfgXdp},
    loader, maps,
    netlink::{Link, Netlink, Route},
};

/// A netlink (pre-TCX) tc filter ipipd attached, recorded so a later run can remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRecord {
    pub ifindex: u32,
    pub ifname: String,
    pub ingress: bool,
    pub priority: u16,
    pub handle: u32,
}

enum Attachment {
    /// TCX (6.6+): a bpf_link, pinned.
    Tcx {
        _link: SchedClassifierLink,
        pin: PathBuf,
    },
    /// netlink cls_bpf on clsact (kernels without TCX).
    Filter {
        link: SchedClassifierLink,
        record: FilterRecord,
    },
    /// XDP bpf_link, pinned.
    Xdp {
        _link: XdpLink,
        pin: Option<PathBuf>,
    },
}

/// What a desired state puts in the maps and routes, for one moment's set of interfaces.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: BTreeMap<(Ipv4Addr, u8), RouteValue>,
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// Endpoints still waiting for their interface (or its MAC).
    pub pending: BTreeMap<Ipv4Addr, String>,
    pub slow_path: BTreeSet<Route>,
    /// Each peer's next hop, as the routes and slow-path routes above were built from.
    pub next_hops: BTreeMap<Ipv4Addr, NextHop>,
}

/// A peer's next hop as the kernel routes it: the address packets go via (the peer itself, or
/// a gateway) and, when the kernel's neighbour table knows it on the uplink, the L2 the programs
/// write (its MAC, the uplink's) instead of asking the FIB per packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub via: Ipv4Addr,
    pub l2: Option<([u8; 6], [u8; 6])>,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    nl: Netlink,
    pub uplink: Link,
    /// The tunnel device, once created (see [`Dataplane::ensure_tunnel`]).
    pub tunnel: Option<Link>,
    pub mtu: u32,
    mode: Mode,
    /// The uplink's subnets, for cross-subnet mode.
    uplink_nets: Vec<Ipv4Net>,
    tcx: bool,
    attachments: BTreeMap<(u32, u8), Attachment>,
    forward_was: Option<String>,
    /// The programs' aya-log ring buffer, relayed into this process's log.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub plan: Plan,
}

const FILTERS_FILE: &str = "tc-filters.json";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl Dataplane {
    /// Changes the programs' config entry in place: read, `change`, written back.
    fn update_config(&mut self, change: impl FnOnce(&mut NodeConfig)) -> Result<()> {
        let mut cfg = maps::config(&self.ebpf)?;
        change(&mut cfg);
        maps::set_config(&mut self.ebpf, &cfg)
    }

    /// Turns the programs' decision monitor on or off (the config entry's `monitor` byte).
    pub fn set_monitor(&mut self, mode: dataplane_common::MonitorMode) -> Result<()> {
        self.update_config(|c| c.monitor = mode as u8)
    }

    /// Raises the routes' generation, after a change to the routes trie: the programs' cached
    /// answers of earlier generations are never used again.
    fn next_route_gen(&mut self) -> Result<()> {
        // Skips 0, the generation of the cache's empty slots.
        self.update_config(|c| c.route_gen = c.route_gen.checked_add(1).unwrap_or(1))
    }

    /// Loads, pins and attaches for `cfg`, after clearing what a killed run left. On failure,
    /// everything attached so far is rolled back.
    pub fn start(cfg: &Config, state_dir: &Path) -> Result<Self> {
        let mut nl = Netlink::new()?;
        let mtu = cfg.check_kernel(&mut nl)?;
        let uplink = nl
            .link_by_name(&cfg.node.uplink)?
            .ok_or_else(|| anyhow!("node.uplink: no interface {:?}", cfg.node.uplink))?;
        let uplink_nets = nl
            .addresses(uplink.index)?
            .into_iter()
            .map(|(a, l)| Ipv4Net::new(Ipv4Addr::from(u32::from(a) & mask(l)), l))
            .collect();
        bpfsys::ensure_bpffs(&cfg.node.pin_dir)?;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        clear_previous(&cfg.node.pin_dir, state_dir)?;
        remove_previous_tunnel(&mut nl, &cfg.node.tunnel)?;
        std::fs::create_dir_all(cfg.node.pin_dir.join("links"))
            .with_context(|| format!("creating {}", cfg.node.pin_dir.display()))?;

        let ebpf = loader::open_object_pinned(&cfg.node.pin_dir)?;
        let tcx = KernelVersion::current()
            .map(|v| v >= KernelVersion::new(6, 6, 0))
            .unwrap_or(false);
        let mut dp = Dataplane {
            ebpf,
            pin_dir: cfg.node.pin_dir.clone(),
            state_dir: state_dir.to_path_buf(),
            nl,
            uplink,
            tunnel: None,
            mtu,
            mode: cfg.node.mode,
            uplink_nets,
            tcx,
            attachments: BTreeMap::new(),
            forward_was: None,
            logger: None,
            plan: Plan::default(),
        };
        if let Err(e) = dp.bring_up(cfg) {
            dp.teardown();
            return Err(e);
        }
        Ok(dp)
    }

    fn bring_up(&mut self, cfg: &Config) -> Result<()> {
        loader::load_all(&mut self.ebpf)?;
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(l) => self.logger = Some(l),
            Err(e) => log::warn!("the programs' log is not relayed: {e}"),
        }
        maps::set_config(
            &mut self.ebpf,
            &NodeConfig {
                node_ip: cfg.node.address.octets(),
                uplink_ifindex: self.uplink.index,
                mtu: self.mtu,
                mode: cfg.node.mode as u8,
                ready: 1,
                monitor: 0,
                _pad: 0,
                route_gen: 1,
                tunnel_ifindex: 0,
                tunnel_mac: [0; 6],
                _pad2: [0; 2],
            },
        )?;
        let prev = std::fs::read_to_string(IP_FORWARD)
            .unwrap_or_default()
            .trim()
            .to_string();
        if prev != "1" {
            std::fs::write(IP_FORWARD, "1").context("enabling net.ipv4.ip_forward")?;
            self.forward_was = Some(prev);
        }
        // Maps first, then the attachments: a program never sees a half-programmed node.
        self.reconcile(cfg)?;
        let up = self.uplink.clone();
        self.attach_tc(
            program_names::FROM_UPLINK,
            &up,
            TcAttachType::Ingress,
            Hook::FromUplink,
        )?;
        if cfg.node.xdp != CfgXdp::Off {
            self.attach_xdp(&up, cfg.node.xdp)?;
        }
        Ok(())
    }

    /// The tunnel device, ipipd's stand-in for tunl0, with to_tunnel on its egress: created
    /// when missing (at start, or when someone deleted it), and named in the config entry for
    /// the programs. A veth pair, both ends up and without ARP or IPv6; the routes to remote
    /// blocks point at it, and nothing ever crosses to the peer: to_tunnel encapsulates or
    /// drops everything the kernel sends into it. `links` are the interfaces as they are now;
    /// true when the device was (re)created, so that they are not any more.
    fn ensure_tunnel(&mut self, cfg: &Config, links: &[Link]) -> Result<bool> {
        let name = &cfg.node.tunnel;
        if let Some(t) = &self.tunnel
            && links.iter().any(|l| l.index == t.index && l.name == t.name)
        {
            return Ok(false);
        }
        let peer = crate::config::tunnel_peer(name);
        if links.iter().any(|l| l.name == *name || l.name == peer) {
            bail!("node.tunnel: interface {name} or {peer} already exists; it is not ipipd's");
        }
        self.nl.veth_add_noarp(name, &peer, self.mtu - 20)?;
        let links = self.nl.links()?;
        let (Some(t), Some(p)) = (
            links.iter().find(|l| l.name == *name).cloned(),
            links.iter().find(|l| l.name == peer),
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
                std::fs::write(&f, "1").with_context(|| format!("writing {f}"))?;
            }
        }
        self.nl.link_set_up(p.index)?;
        self.nl.link_set_up(t.index)?;
        let mac = t
            .mac
            .ok_or_else(|| anyhow!("node.tunnel: {name} has no MAC address"))?;
        self.update_config(|c| {
            c.tunnel_ifindex = t.index;
            c.tunnel_mac = mac;
        })?;
        log::info!(
            "tunnel device {name} (#{}, mtu {}) created",
            t.index,
            self.mtu - 20
        );
        self.attach_tc(
            program_names::TO_TUNNEL,
            &t,
            TcAttachType::Egress,
            Hook::ToTunnel,
        )?;
        Ok(true)
    }

    fn attach_tc(&mut self, prog: &str, link: &Link, at: TcAttachType, hook: Hook) -> Result<()> {
        let key = (link.index, hook as u8);
        if self.attachments.contains_key(&key) {
            return Ok(());
        }
        if !self.tcx {
            // Netlink needs the clsact qdisc; "exists" is fine.
            let _ = tc::qdisc_add_clsact(&link.name);
        }
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("no program {prog}"))?
            .try_into()?;
        let id = p
            .attach(&link.name, at)
            .with_context(|| format!("attaching {prog} to {}", link.name))?;
        let l = p.take_link(id)?;
        let att = if self.tcx {
            let link_id = <&FdLink>::try_from(&l)
                .map_err(|e| anyhow!("{e}"))?
                .info()?
                .id();
            let pin = self
                .pin_dir
                .join("links")
                .join(format!("{}-{}", link.index, hook.name()));
            let _ = std::fs::remove_file(&pin);
            bpfsys::pin_link(link_id, &pin)?;
            Attachment::Tcx { _link: l, pin }
        } else {
            let record = FilterRecord {
                ifindex: link.index,
                ifname: link.name.clone(),
                ingress: matches!(at, TcAttachType::Ingress),
                priority: l.priority()?,
                handle: u32::from(l.handle()?),
            };
            Attachment::Filter { link: l, record }
        };
        self.attachments.insert(key, att);
        self.save_filters()?;
        log::info!(
            "attached {prog} to {} ({}, {})",
            link.name,
            if self.tcx { "tcx" } else { "netlink" },
            hook.name()
        );
        Ok(())
    }

    fn attach_xdp(&mut self, link: &Link, mode: CfgXdp) -> Result<()> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(program_names::XDP_UPLINK)
            .ok_or_else(|| anyhow!("no xdp program"))?
            .try_into()?;
        let m = if mode == CfgXdp::Native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        let id = p
            .attach(&link.name, m)
            .with_context(|| format!("attaching xdp_uplink to {}", link.name))?;
        let prog_id = p.info()?.id();
        let l = p.take_link(id)?;
        // An XDP bpf_link (5.9+) is pinned; a netlink XDP attachment has no link to pin.
        let pin = match bpfsys::find_link(prog_id, link.index) {
            Ok(link_id) => {
                let pin = self
                    .pin_dir
                    .join("links")
                    .join(format!("{}-xdp_uplink", link.index));
                bpfsys::pin_link(link_id, &pin)?;
                Some(pin)
            }
            Err(_) => None,
        };
        self.attachments.insert(
            (link.index, Hook::XdpUplink as u8),
            Attachment::Xdp { _link: l, pin },
        );
        log::info!("attached xdp_uplink to {} ({mode:?})", link.name);
        Ok(())
    }

    fn detach(&mut self, key: (u32, u8)) {
        match self.attachments.remove(&key) {
            Some(Attachment::Tcx { pin, .. }) | Some(Attachment::Xdp { pin: Some(pin), .. }) => {
                let _ = std::fs::remove_file(pin);
            }
            Some(Attachment::Filter { link, .. }) => {
                use aya::programs::links::Link as _;
                let _ = link.detach();
            }
            _ => {}
        }
        let _ = self.save_filters();
    }

    fn save_filters(&self) -> Result<()> {
        let records: Vec<&FilterRecord> = self
            .attachments
            .values()
            .filter_map(|a| match a {
                Attachment::Filter { record, .. } => Some(record),
                _ => None,
            })
            .collect();
        let path = self.state_dir.join(FILTERS_FILE);
        if records.is_empty() {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        write_atomic(&path, &serde_json::to_vec_pretty(&records)?)
    }

    /// What `cfg` means for the maps and routes, given the interfaces as they are now.
    fn plan(&mut self, cfg: &Config, links: &[Link]) -> Result<Plan> {
        let next_hops = self.next_hops(cfg, links);
        let links: BTreeMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut p = Plan::default();
        let mtu = self.mtu;
        for b in &cfg.blocks {
            p.routes.insert(
                (b.addr, b.len),
                route_value(RouteKind::OwnBlock, 0, Ipv4Addr::UNSPECIFIED),
            );
            p.slow_path.insert(Route::Blackhole {
                dst: (b.addr, b.len),
            });
        }
        let tunnel = self.tunnel.as_ref().map_or(0, |t| t.index);
        for peer in &cfg.peers {
            let same_subnet = self.same_subnet(peer.address);
            let flags = if same_subnet {
                ROUTE_F_SAME_SUBNET
            } else {
                ROUTE_F_ENCAP
            };
            let NextHop { via, l2 } = next_hops[&peer.address];
            let targets =
                std::iter::once(Ipv4Net::host(peer.address)).chain(peer.blocks.iter().copied());
            for (i, net) in targets.enumerate() {
                let kind = if i == 0 {
                    RouteKind::PeerNode
                } else {
                    RouteKind::RemoteBlock
                };
                let mut v = route_value(kind, flags, peer.address);
                if let Some((dmac, smac)) = l2 {
                    v.flags |= ROUTE_F_L2;
                    v.ifindex = self.uplink.index;
                    v.pod_mac = dmac;
                    v.host_mac = smac;
                }
                p.routes.insert((net.addr, net.len), v);
                // What the kernel itself sends there goes into the tunnel device, as into tunl0;
                // the peer's own address too, so that pod packets to it that the kernel takes
                // (too big, TTL) are encapsulated (the node's own are sent on plain).
                p.slow_path.insert(if same_subnet {
                    Route::Via {
                        dst: (net.addr, net.len),
                        gateway: via,
                        oif: self.uplink.index,
                        mtu,
                    }
                } else {
                    Route::Tunnel {
                        dst: (net.addr, net.len),
                        oif: tunnel,
                        src: cfg.node.address,
                    }
                });
            }
        }
        for ep in &cfg.endpoints {
            let Some(&link) = links.get(ep.interface.as_str()) else {
                p.pending.insert(ep.address, ep.interface.clone());
                continue;
            };
            // The configured MAC, else the one already learnt for this veth (a recreated veth has
            // a new ifindex), else ask the kernel for the peer's.
            let pod_mac = match (ep.mac, self.plan.endpoints.get(&link.index)) {
                (Some(m), _) => Some(m),
                (None, Some(known)) if known.pod_ip == ep.address.octets() => Some(known.pod_mac),
                (None, _) => self.nl.peer_mac(link).unwrap_or(None),
            };
            let (Some(pod_mac), Some(host_mac)) = (pod_mac, link.mac) else {
                log::warn!(
                    "endpoint {}: the MAC of {}'s pod side is unknown; waiting",
                    ep.address,
                    ep.interface
                );
                p.pending.insert(ep.address, ep.interface.clone());
                continue;
            };
            p.endpoints.insert(
                link.index,
                Endpoint {
                    pod_ip: ep.address.octets(),
                    pod_mac,
                    host_mac,
                },
            );
            p.routes.insert(
                (ep.address, 32),
                RouteValue {
                    kind: RouteKind::LocalEndpoint as u8,
                    flags: 0,
                    _pad: [0; 2],
                    ifindex: link.index,
                    node_ip: [0; 4],
                    pod_mac,
                    host_mac,
                },
            );
            p.slow_path.insert(Route::Dev {
                dst: (ep.address, 32),
                oif: link.index,
            });
        }
        p.next_hops = next_hops;
        Ok(p)
    }

    /// Whether a peer shares the uplink's subnet in cross-subnet mode (routed, not tunnelled).
    fn same_subnet(&self, peer: Ipv4Addr) -> bool {
        self.mode == Mode::CrossSubnet && self.uplink_nets.iter().any(|n| n.contains(peer))
    }

    /// Every peer's next hop, from the kernel's routes and neighbours as they are now: via the
    /// peer itself when it shares the uplink's subnet in cross-subnet mode, else via whatever
    /// the kernel routes it through; its L2 when the neighbour table holds its MAC on the uplink.
    fn next_hops(&mut self, cfg: &Config, links: &[Link]) -> BTreeMap<Ipv4Addr, NextHop> {
        let uplink_mac = links
            .iter()
            .find(|l| l.index == self.uplink.index)
            .and_then(|l| l.mac);
        let mut out = BTreeMap::new();
        for peer in cfg.peers.iter().map(|p| p.address) {
            let (gw, oif) = self
                .nl
                .route_get(peer, self.uplink.index)
                .unwrap_or((None, None));
            let via = if self.same_subnet(peer) {
                peer
            } else {
                gw.unwrap_or(peer)
            };
            let mac = if oif == Some(self.uplink.index) {
                self.nl.neighbour(via, self.uplink.index).unwrap_or(None)
            } else {
                None
            };
            // Unknown: have the kernel resolve it now rather than on the first packet. A
            // packet the tunnel device sends (with that device's route attached) cannot wait
            // in the neighbour's queue, which would re-send it through the route's device:
            // to_tunnel drops it (drop_next_hop_unresolved) until this resolves. Its answer
            // is a neighbour event: the next check caches the MAC.
            if mac.is_none()
                && let Err(e) = self.nl.neighbour_resolve(via, self.uplink.index)
            {
                log::debug!("{e:#}");
            }
            out.insert(
                peer,
                NextHop {
                    via,
                    l2: mac.zip(uplink_mac),
                },
            );
        }
        out
    }

    /// Whether a peer's next hop (its address, its MAC, or the uplink's) is no longer the one
    /// the routes were built from: after neighbour and route events, and periodically.
    pub fn next_hops_changed(&mut self, cfg: &Config) -> bool {
        let links = self.nl.links().unwrap_or_default();
        self.next_hops(cfg, &links) != self.plan.next_hops
    }

    /// Makes maps, attachments and routes match `cfg`: inserts and updates what is missing,
    /// removes what is stale (whoever left it).
    pub fn reconcile(&mut self, cfg: &Config) -> Result<()> {
        let mut links = self.nl.links()?;
        if self.ensure_tunnel(cfg, &links)? {
            links = self.nl.links()?;
        }
        let plan = self.plan(cfg, &links)?;

        // Maps: write only what differs from what they hold, endpoints first (from_pod needs its
        // entry before it runs), then routes; stale routes go now, stale endpoints once detached.
        let current_eps: BTreeMap<u32, Endpoint> = maps::endpoints(&mut self.ebpf)?
            .iter()
            .collect::<Result<_, _>>()?;
        for (ifindex, ep) in &plan.endpoints {
            if current_eps.get(ifindex) != Some(ep) {
                maps::put_endpoint(&mut self.ebpf, *ifindex, ep)?;
            }
        }
        let current_routes: BTreeMap<(Ipv4Addr, u8), RouteValue> = maps::routes(&mut self.ebpf)?
            .iter()
            .map(|e| e.map(|(k, v)| ((Ipv4Addr::from(k.data()), k.prefix_len() as u8), v)))
            .collect::<Result<_, _>>()?;
        let mut routes_changed = false;
        for ((addr, len), v) in &plan.routes {
            if current_routes.get(&(*addr, *len)) != Some(v) {
                routes_changed = true;
                maps::put_route(&mut self.ebpf, addr.octets(), u32::from(*len), v)?;
            }
        }
        for (addr, len) in current_routes.keys() {
            if !plan.routes.contains_key(&(*addr, *len)) {
                routes_changed = true;
                maps::remove_route(&mut self.ebpf, addr.octets(), u32::from(*len))?;
            }
        }
        if routes_changed {
            self.next_route_gen()?;
        }

        // Attachments: from_pod on every live endpoint's veth, nowhere else.
        let links: BTreeMap<u32, Link> = links.into_iter().map(|l| (l.index, l)).collect();
        let stale: Vec<(u32, u8)> = self
            .attachments
            .keys()
            .filter(|(i, h)| {
                if *h == Hook::FromPod as u8 {
                    !plan.endpoints.contains_key(i)
                } else {
                    !links.contains_key(i)
                }
            })
            .copied()
            .collect();
        for key in stale {
            self.detach(key);
        }
        for ifindex in plan.endpoints.keys() {
            if let Some(link) = links.get(ifindex) {
                let link = link.clone();
                self.attach_tc(
                    program_names::FROM_POD,
                    &link,
                    TcAttachType::Ingress,
                    Hook::FromPod,
                )?;
            }
        }
        for &i in current_eps.keys() {
            if !plan.endpoints.contains_key(&i) {
                maps::endpoints(&mut self.ebpf)?
                    .remove(&i)
                    .with_context(|| format!("endpoints: removing {i}"))?;
                maps::forget_counters(&mut self.ebpf, i)?;
            }
        }

        // Slow-path routes, identified by their protocol.
        let owned: BTreeSet<Route> = self.nl.owned_routes()?.into_iter().collect();
        for r in owned.difference(&plan.slow_path) {
            // A route whose device vanished is gone with it.
            self.nl.route_delete(r)?;
        }
        for r in plan.slow_path.difference(&owned) {
            self.nl.route_replace(r)?;
        }

        for (addr, name) in &plan.pending {
            log::info!("endpoint {addr}: waiting for interface {name}");
        }
        self.plan = plan;
        Ok(())
    }

    /// Every attachment `cfg` asks for and whether it is in place; ready when all are (and the
    /// maps were programmed, which `start` did before any attachment).
    pub fn health(&self, cfg: &Config) -> crate::metrics::Health {
        let mut want = vec![(self.uplink.index, Hook::FromUplink)];
        if let Some(t) = &self.tunnel {
            want.push((t.index, Hook::ToTunnel));
        }
        if cfg.node.xdp != CfgXdp::Off {
            want.push((self.uplink.index, Hook::XdpUplink));
        }
        want.extend(self.plan.endpoints.keys().map(|i| (*i, Hook::FromPod)));
        let attachments: Vec<crate::metrics::Attachment> = want
            .into_iter()
            .map(|(i, h)| crate::metrics::Attachment {
                interface: crate::inspect::ifname(i),
                hook: h.name(),
                attached: self.attachments.contains_key(&(i, h as u8)),
            })
            .collect();
        let missing: Vec<String> = attachments
            .iter()
            .filter(|a| !a.attached)
            .map(|a| format!("{} on {}", a.hook, a.interface))
            .collect();
        crate::metrics::Health {
            ready: missing.is_empty(),
            waiting_for: missing.join(", "),
            attachments,
            pending: self
                .plan
                .pending
                .iter()
                .map(|(a, n)| (a.to_string(), n.clone()))
                .collect(),
            attach_mode: if self.tcx { "tcx" } else { "netlink" },
            monitors: 0,
        }
    }

    /// Detaches everything, removes the pins, the routes and the other kernel state `run` added.
    pub fn teardown(&mut self) {
        let keys: Vec<(u32, u8)> = self.attachments.keys().copied().collect();
        for k in keys {
            self.detach(k);
        }
        if let Ok(routes) = self.nl.owned_routes() {
            for r in routes {
                if let Err(e) = self.nl.route_delete(&r) {
                    log::warn!("{e:#}");
                }
            }
        }
        if let Some(t) = self.tunnel.take()
            && let Err(e) = self.nl.link_delete(t.index)
        {
            log::warn!("{e:#}");
        }
        if let Some(prev) = self.forward_was.take() {
            let _ = std::fs::write(IP_FORWARD, prev);
        }
        remove_pins(&self.pin_dir);
        let _ = std::fs::remove_file(self.state_dir.join(FILTERS_FILE));
        log::info!("data plane removed from {}", self.pin_dir.display());
    }

    /// The fd to poll for the programs' log lines, if relayed.
    pub fn log_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.logger.as_ref().map(|l| l.as_raw_fd())
    }

    /// Relays what the programs logged into this process's log.
    pub fn flush_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn route_value(kind: RouteKind, flags: u8, node: Ipv4Addr) -> RouteValue {
    RouteValue {
        kind: kind as u8,
        flags,
        _pad: [0; 2],
        ifindex: 0,
        node_ip: node.octets(),
        pod_mac: [0; 6],
        host_mac: [0; 6],
    }
}

/// Removes the link and map pins under `pin_dir`, and the directory.
fn remove_pins(pin_dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(pin_dir.join("links")) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(pin_dir.join("links"));
    // Every map pin of ours, of this layout or an older one (`ipipd_<map>_v<N>`).
    if let Ok(rd) = std::fs::read_dir(pin_dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ipipd_") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
}

/// Deletes the tunnel device a killed run left (a veth of that name); refuses an interface of
/// that name that is something else.
fn remove_previous_tunnel(nl: &mut Netlink, name: &str) -> Result<()> {
    let Some(l) = nl.link_by_name(name)? else {
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
    nl.link_delete(l.index)
}

/// What a killed ipipd left: its pinned links (unpinning detaches them), its netlink filters
/// (removed by their recorded handle), its pinned maps (recreated empty, then reconciled).
/// Its routes carry ipipd's protocol and are reconciled by [`Dataplane::reconcile`].
fn clear_previous(pin_dir: &Path, state_dir: &Path) -> Result<()> {
    if pin_dir.exists() {
        log::warn!(
            "found the pins of a previous run in {}: replacing them",
            pin_dir.display()
        );
        remove_pins(pin_dir);
    }
    let path = state_dir.join(FILTERS_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let records: Vec<FilterRecord> = serde_json::from_str(&text).unwrap_or_default();
        for r in records {
            let at = if r.ingress {
                TcAttachType::Ingress
            } else {
                TcAttachType::Egress
            };
            match SchedClassifierLink::attached(
                &r.ifname,
                at,
                r.priority,
                TcHandle::from(r.handle),
                None,
            ) {
                Ok(l) => {
                    use aya::programs::links::Link as _;
                    if let Err(e) = l.detach() {
                        log::warn!("removing the previous run's filter on {}: {e}", r.ifname);
                    }
                }
                Err(e) => log::debug!("previous filter on {}: {e}", r.ifname),
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    if pin_dir.exists() {
        bail!("could not clear {}", pin_dir.display());
    }
    Ok(())
}

pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}
