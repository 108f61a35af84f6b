//! The running data plane of one node and the only writer of its maps, attachments, slow-path
//! routes and tunnel device: [`Dataplane::reconcile`] reads the kernel ([`KernelView::read`]),
//! plans ([`plan::plan`], pure) and applies the difference; [`Dataplane::teardown`] is the
//! separate step that removes it all.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::TcAttachType, util::KernelVersion};
use dataplane_common::{Endpoint, Hook, NodeConfig, RouteValue, map_names, program_names};

use crate::{
    attach::{self, Attachments},
    config::{Config, XdpMode as CfgXdp},
    loader,
    lock::NodeLock,
    maps,
    netlink::{Link, Netlink},
    pins,
    plan::{self, KernelView, Plan, Underlay},
    tunnel,
};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub(crate) nl: Netlink,
    /// The uplink as last seen. Followed by name: when it is deleted the data plane waits for
    /// it ([`Dataplane::uplink_present`] false), and when an interface of that name comes back
    /// (a new ifindex) everything keyed by it is re-keyed and re-attached.
    pub uplink: Link,
    uplink_present: bool,
    /// The tunnel device, once created (see [`Dataplane::ensure_tunnel`]).
    pub tunnel: Option<Link>,
    pub mtu: u32,
    xdp: CfgXdp,
    pub(crate) attachments: Attachments,
    forward_was: Option<String>,
    /// What the last reconcile applied.
    pub plan: Plan,
    /// One daemon per node, for as long as this one runs.
    lock: NodeLock,
}

/// An attachment the config asks for, and whether it is in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub ifindex: u32,
    pub hook: Hook,
    pub attached: bool,
}

impl Dataplane {
    /// Changes the programs' config entry in place: read, `change`, written back.
    pub(crate) fn update_config(&mut self, change: impl FnOnce(&mut NodeConfig)) -> Result<()> {
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

    pub fn underlay(&self) -> Underlay {
        Underlay {
            uplink: if self.uplink_present {
                self.uplink.index
            } else {
                0
            },
            mtu: self.mtu,
        }
    }

    /// Whether the uplink exists (see [`Dataplane::uplink`]).
    pub fn uplink_present(&self) -> bool {
        self.uplink_present
    }

    /// Follows the uplink by name in this reconcile's `links`: gone, back under a new ifindex
    /// (the programs' config entry re-keyed, and the MTU re-read when the config does not fix
    /// it), or the same (its MAC and MTU refreshed).
    fn follow_uplink(&mut self, cfg: &Config, links: &plan::Links) -> Result<()> {
        let Some(now) = links.by_name(&cfg.node.uplink) else {
            if self.uplink_present {
                log::warn!(
                    "the uplink {} ({}) is gone: cross-node traffic stops until it is back",
                    self.uplink.name,
                    self.uplink.index
                );
                self.uplink_present = false;
            }
            return Ok(());
        };
        let mtu = cfg.node.mtu.unwrap_or(now.mtu).min(now.mtu);
        if !self.uplink_present || now.index != self.uplink.index || mtu != self.mtu {
            log::info!(
                "the uplink {} is ifindex {} (was {}), MTU {mtu}",
                now.name,
                now.index,
                self.uplink.index
            );
            self.update_config(|c| {
                c.uplink_ifindex = now.index;
                c.mtu = mtu;
            })?;
            self.mtu = mtu;
        }
        self.uplink = now.clone();
        self.uplink_present = true;
        Ok(())
    }

    /// Puts back what was removed from the pin directory under the running daemon: the
    /// directories, the maps' pins (the daemon still holds the maps: they are pinned again, as
    /// they are) and the links' (a link whose pin went was released and its program detached:
    /// it is forgotten here, and the reconcile that follows attaches it again). Says what was
    /// missing, nothing when all is there.
    pub fn repair_pins(&mut self) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        if !self.pin_dir.is_dir() {
            std::fs::create_dir_all(&self.pin_dir)
                .with_context(|| format!("creating {}", self.pin_dir.display()))?;
            // The lock was on the directory that went.
            self.lock.relock_pins(&self.pin_dir)?;
            missing.push(self.pin_dir.display().to_string());
        }
        let links = self.pin_dir.join("links");
        if !links.is_dir() {
            std::fs::create_dir_all(&links)
                .with_context(|| format!("creating {}", links.display()))?;
            missing.push(links.display().to_string());
        }
        for name in map_names::ALL {
            let path = self.pin_dir.join(name);
            if path.exists() {
                continue;
            }
            self.ebpf
                .map(name)
                .with_context(|| format!("no map {name}"))?
                .pin(&path)
                .with_context(|| format!("pinning {name} again at {}", path.display()))?;
            missing.push(format!("map {name}"));
        }
        for (ifindex, hook) in self.attachments.forget_unpinned() {
            let hook = Hook::from_u8(hook).map_or("?", Hook::name);
            missing.push(format!("{hook} on #{ifindex}"));
        }
        Ok(missing)
    }

    /// from_uplink (and xdp_uplink when configured) on the uplink, when it is there.
    fn attach_uplink(&mut self) -> Result<()> {
        if !self.uplink_present {
            return Ok(());
        }
        let up = self.uplink.clone();
        self.attachments.tc(
            &mut self.ebpf,
            program_names::FROM_UPLINK,
            &up,
            TcAttachType::Ingress,
            Hook::FromUplink,
        )?;
        if self.xdp != CfgXdp::Off {
            self.attachments.xdp(&mut self.ebpf, &up, self.xdp)?;
        }
        Ok(())
    }

    /// Loads, pins and attaches for `cfg`, after clearing what a killed run left. On failure,
    /// everything attached so far is rolled back.
    pub async fn start(cfg: &Config, state_dir: &Path) -> Result<Self> {
        let nl = Netlink::new()?;
        let (uplink, mtu) = cfg.check_kernel(&nl).await?;
        pins::ensure_bpffs(&cfg.node.pin_dir)?;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        std::fs::create_dir_all(&cfg.node.pin_dir)
            .with_context(|| format!("creating {}", cfg.node.pin_dir.display()))?;
        // Nothing is touched before this: a second daemon for the node stops here.
        let lock = NodeLock::take(state_dir, &cfg.node.pin_dir)?;
        clear_previous(&cfg.node.pin_dir, state_dir)?;
        tunnel::remove_previous(&nl, &cfg.node.tunnel).await?;
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
            uplink_present: true,
            tunnel: None,
            mtu,
            xdp: cfg.node.xdp,
            attachments: Attachments::new(&cfg.node.pin_dir, state_dir, tcx),
            forward_was: None,
            plan: Plan::default(),
            lock,
        };
        if let Err(e) = dp.bring_up(cfg).await {
            dp.teardown().await;
            return Err(e);
        }
        Ok(dp)
    }

    async fn bring_up(&mut self, cfg: &Config) -> Result<()> {
        loader::load_all(&mut self.ebpf)?;
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
        // Maps first, then the attachments (the uplink's last): a program never sees a
        // half-programmed node.
        self.reconcile(cfg).await
    }

    /// The programs' aya-log ring buffer, to be relayed into this process's log.
    pub fn logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("the programs' log is not relayed: {e}");
                None
            }
        }
    }

    fn known_endpoints(&mut self) -> Result<BTreeMap<u32, Endpoint>> {
        Ok(maps::endpoints(&mut self.ebpf)?
            .iter()
            .collect::<Result<_, _>>()?)
    }

    /// Makes maps, attachments and routes match `cfg`: read the kernel, plan, apply.
    pub async fn reconcile(&mut self, cfg: &Config) -> Result<()> {
        let known = self.known_endpoints()?;
        let links: plan::Links = self.nl.links().await?.into_iter().collect();
        self.follow_uplink(cfg, &links)?;
        let mut view = KernelView::read(&self.nl, cfg, self.underlay(), links, &known).await?;
        self.ensure_tunnel(cfg, &mut view.links).await?;
        let tunnel = self.tunnel.as_ref().map_or(0, |t| t.index);
        let plan = plan::plan(cfg, self.underlay(), tunnel, &view, &known);
        self.apply(plan, &view, &known).await?;
        self.attach_uplink()
    }

    /// The one writer: maps (endpoints first, from_pod needs its entry before it runs; then
    /// routes), attachments, stale endpoints once detached, slow-path routes, and the explicit
    /// resolution of unknown next hops.
    async fn apply(
        &mut self,
        plan: Plan,
        view: &KernelView,
        known: &BTreeMap<u32, Endpoint>,
    ) -> Result<()> {
        for (ifindex, ep) in &plan.endpoints {
            if known.get(ifindex) != Some(ep) {
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

        // Attachments: from_pod on every live endpoint's veth, nowhere else; anything on an
        // interface that is gone goes with it.
        let stale: Vec<(u32, u8)> = self
            .attachments
            .keys()
            .into_iter()
            .filter(|(i, h)| {
                if *h == Hook::FromPod as u8 {
                    !plan.endpoints.contains_key(i)
                } else {
                    view.links.by_index(*i).is_none()
                }
            })
            .collect();
        for key in stale {
            self.attachments.detach(key);
        }
        for ifindex in plan.endpoints.keys() {
            if let Some(link) = view.links.by_index(*ifindex) {
                self.attachments.tc(
                    &mut self.ebpf,
                    program_names::FROM_POD,
                    link,
                    TcAttachType::Ingress,
                    Hook::FromPod,
                )?;
            }
        }
        for &i in known.keys() {
            if !plan.endpoints.contains_key(&i) {
                maps::endpoints(&mut self.ebpf)?
                    .remove(&i)
                    .with_context(|| format!("endpoints: removing {i}"))?;
                maps::forget_counters(&mut self.ebpf, i)?;
            }
        }

        // Slow-path routes, identified by their protocol.
        for r in view.owned_routes.difference(&plan.slow_path) {
            // A route whose device vanished is gone with it.
            self.nl.route_delete(r).await?;
        }
        for r in plan.slow_path.difference(&view.owned_routes) {
            self.nl.route_replace(r).await?;
        }

        for (addr, name) in &plan.pending {
            if self.plan.pending.get(addr) != Some(name) {
                log::info!("endpoint {addr}: waiting for interface {name}");
            }
        }
        self.resolve(&plan.unresolved()).await;
        self.plan = plan;
        Ok(())
    }

    /// Asks the kernel to resolve these next hops on the uplink now (`NTF_USE`). A packet the
    /// tunnel device sends toward an unresolved one is dropped (drop_next_hop_unresolved) until
    /// then; the answer is a neighbour event, after which the next check caches the MAC.
    async fn resolve(&self, vias: &BTreeSet<Ipv4Addr>) {
        for via in vias {
            if let Err(e) = self.nl.neighbour_resolve(*via, self.uplink.index).await {
                log::debug!("{e:#}");
            }
        }
    }

    /// Re-reads the peers' next hops (after neighbour and route events, and periodically):
    /// asks for the unknown ones to be resolved, and says whether one is no longer what the
    /// routes were built from (its address, its MAC, or the uplink's).
    pub async fn next_hops_changed(&mut self, cfg: &Config) -> Result<bool> {
        let view = KernelView::read_next_hops(&self.nl, cfg, self.underlay()).await?;
        let hops = plan::next_hops(cfg, self.underlay(), &view);
        self.resolve(&plan::unresolved(&hops)).await;
        Ok(hops != self.plan.next_hops)
    }

    /// Every attachment the node needs and whether it is in place.
    pub fn wanted(&self) -> Vec<Wanted> {
        let mut want = vec![(self.uplink.index, Hook::FromUplink)];
        if let Some(t) = &self.tunnel {
            want.push((t.index, Hook::ToTunnel));
        }
        if self.xdp != CfgXdp::Off {
            want.push((self.uplink.index, Hook::XdpUplink));
        }
        want.extend(self.plan.endpoints.keys().map(|i| (*i, Hook::FromPod)));
        want.into_iter()
            .map(|(ifindex, hook)| Wanted {
                ifindex,
                hook,
                attached: self.attachments.contains(ifindex, hook),
            })
            .collect()
    }

    pub fn tcx(&self) -> bool {
        self.attachments.tcx
    }

    /// Detaches everything, removes the pins, the routes and the other kernel state `run` added.
    pub async fn teardown(&mut self) {
        self.attachments.detach_all();
        if let Ok(routes) = self.nl.owned_routes().await {
            for r in routes {
                if let Err(e) = self.nl.route_delete(&r).await {
                    log::warn!("{e:#}");
                }
            }
        }
        if let Some(t) = self.tunnel.take()
            && let Err(e) = self.nl.link_delete(t.index).await
        {
            log::warn!("{e:#}");
        }
        if let Some(prev) = self.forward_was.take() {
            let _ = std::fs::write(IP_FORWARD, prev);
        }
        pins::remove_pins(&self.pin_dir);
        let _ = std::fs::remove_file(self.state_dir.join(attach::FILTERS_FILE));
        log::info!("data plane removed from {}", self.pin_dir.display());
    }
}

/// What a killed ipipd left: its pinned links (unpinning detaches them), its netlink filters
/// (removed by their recorded handle), its pinned maps (recreated empty, then reconciled).
/// Its routes carry ipipd's protocol and are reconciled by [`Dataplane::reconcile`].
fn clear_previous(pin_dir: &Path, state_dir: &Path) -> Result<()> {
    if pins::has_pins(pin_dir) {
        log::warn!(
            "found the pins of a previous run in {}: replacing them",
            pin_dir.display()
        );
        pins::clear_pins(pin_dir);
    }
    attach::remove_recorded_filters(state_dir);
    if pins::has_pins(pin_dir) {
        anyhow::bail!("could not clear {}", pin_dir.display());
    }
    Ok(())
}
