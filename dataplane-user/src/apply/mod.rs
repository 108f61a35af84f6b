//! The running data plane of one node and the only writer of its maps, attachments, slow-path
//! routes and tunnel device: [`Dataplane::reconcile`] reads the kernel ([`KernelView::read`]),
//! plans ([`plan::plan`], pure) and applies the difference; [`teardown`] is the separate step
//! that removes it all and puts back what it replaced.
//!
//! The data plane outlives the daemon: a daemon that exits (or dies) leaves the programs
//! attached, the maps pinned and the routes in place, and the next [`Dataplane::start`] adopts
//! them: the maps as they are when their layout is this build's, its programs swapped onto the
//! adopted links in place, then one reconcile for the difference.
//!
//! [`change`]: a change reconciled on the kept kernel view, planned whole or by parts;
//! [`write`]: what a plan or a change writes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{Ebpf, util::KernelVersion};
use dataplane_common::{Endpoint, Hook, NodeConfig, RouteValue, map_names};

use crate::{
    attach::Attachments,
    config::{Config, XdpMode as CfgXdp},
    incremental::Cache,
    loader,
    lock::NodeLock,
    maps,
    netlink::{Link, Netlink},
    pins,
    plan::{self, KernelView, Plan, Underlay},
    record::{NodeRecord, ReplacedRoute},
};

mod change;
mod write;

use write::Writes;

pub use crate::teardown::teardown;

pub(crate) const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

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
    /// The tunnel address last put on the tunnel device (None: not yet, or a new device).
    pub(crate) tunnel_address: Option<Option<Ipv4Addr>>,
    pub mtu: u32,
    xdp: CfgXdp,
    pub(crate) attachments: Attachments,
    /// What the last reconcile applied.
    pub plan: Plan,
    /// One daemon per node, for as long as this one runs.
    lock: NodeLock,
    /// What ipipd found and made on the node (the state directory's `node.json`).
    pub(crate) record: NodeRecord,
    /// This start found a data plane in place (pins of a previous run): a failed start leaves
    /// it as it was instead of rolling back.
    adopting: bool,
    /// The natOutgoing table as last applied (`Some(None)`: known absent); None before the
    /// first reconcile, which replaces whatever a previous run left.
    nat: Option<Option<crate::nat::Rules>>,
    /// The kernel view kept between full reconciles (see [`crate::incremental`]); None until
    /// a full one went through, and after any failure.
    cache: Option<Cache>,
}

/// A full reconcile's kernel dumps are transient (thousands of links and routes on a large
/// node): what they freed goes back to the system instead of staying in the heap. (Not after a
/// change: at 10,000 endpoints a trim costs more than the change.)
fn trim_heap() {
    // SAFETY: glibc's malloc_trim takes no pointers. (musl's allocator, in the image's static
    // build, has none: it returns freed memory by itself.)
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
}

/// An attachment the config asks for, and whether it is in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub ifindex: u32,
    pub hook: Hook,
    /// How it is attached ("tcx", "netlink", "xdp"); None while it is not.
    pub mode: Option<&'static str>,
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

    /// Loads, pins and attaches for `cfg`, adopting what a previous run left: the maps as
    /// they are when their layout is this build's (else new maps, built from `cfg`, and the old
    /// ones removed once no program uses them), the attachments updated in place to this
    /// build's programs, the tunnel device and the routes reconciled. A failed first start
    /// rolls back what it did; a failed adopting start leaves the running data plane alone.
    pub async fn start(cfg: &Config, state_dir: &Path) -> Result<Self> {
        let nl = Netlink::new()?;
        let (uplink, mtu) = crate::host::check_kernel(cfg, &nl).await?;
        pins::ensure_bpffs(&cfg.node.pin_dir)?;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        std::fs::create_dir_all(&cfg.node.pin_dir)
            .with_context(|| format!("creating {}", cfg.node.pin_dir.display()))?;
        // Nothing is touched before this: a second daemon for the node stops here.
        let lock = NodeLock::take(state_dir, &cfg.node.pin_dir)?;
        let record = NodeRecord::load(state_dir)?;
        let found = pins::set_aside_other_layouts(&cfg.node.pin_dir)?;
        std::fs::create_dir_all(cfg.node.pin_dir.join("links"))
            .with_context(|| format!("creating {}", cfg.node.pin_dir.display()))?;

        let kernel_flows = cfg
            .node
            .kernel_flows
            .unwrap_or_else(loader::kernel_flows_default);
        let ebpf = loader::open_object_pinned(&cfg.node.pin_dir, kernel_flows)?;
        let tcx = KernelVersion::current()
            .map(|v| v >= KernelVersion::new(6, 6, 0))
            .unwrap_or(false);
        let mut attachments = Attachments::new(&cfg.node.pin_dir, state_dir, tcx);
        let adopted = attachments.adopt(&cfg.node.uplink);
        match &found {
            pins::Found::Nothing if adopted == 0 => {}
            pins::Found::Nothing | pins::Found::SameLayout => log::info!(
                "adopting the data plane in {} ({adopted} attachments): maps kept as they are",
                cfg.node.pin_dir.display()
            ),
            pins::Found::OtherLayout(old) => log::info!(
                "upgrading the data plane in {} ({adopted} attachments): maps of another \
                 layout ({}) are rebuilt from the config",
                cfg.node.pin_dir.display(),
                old.join(", ")
            ),
        }
        let mut dp = Dataplane {
            ebpf,
            pin_dir: cfg.node.pin_dir.clone(),
            state_dir: state_dir.to_path_buf(),
            nl,
            uplink,
            uplink_present: true,
            tunnel: None,
            tunnel_address: None,
            mtu,
            xdp: cfg.node.xdp,
            attachments,
            plan: Plan::default(),
            lock,
            record,
            adopting: found != pins::Found::Nothing || adopted > 0,
            nat: None,
            cache: None,
        };
        if let Err(e) = dp.bring_up(cfg).await {
            if dp.adopting {
                log::error!("the start failed: the data plane in place is left as it is");
            } else {
                dp.teardown(cfg).await;
            }
            return Err(e);
        }
        Ok(dp)
    }

    async fn bring_up(&mut self, cfg: &Config) -> Result<()> {
        loader::load_all(&mut self.ebpf)?;
        // An adopted config entry keeps its route generation (raised: the cache's answers were
        // the old programs') and its tunnel device; the rest is the config's.
        let mut c = maps::config(&self.ebpf)?;
        if c.ready == 0 {
            c = NodeConfig {
                node_ip: [0; 4],
                uplink_ifindex: 0,
                mtu: 0,
                mode: 0,
                ready: 1,
                monitor: 0,
                flags: 0,
                route_gen: 1,
                tunnel_ifindex: 0,
                tunnel_mac: [0; 6],
                _pad2: [0; 2],
            };
        } else {
            c.route_gen = c.route_gen.checked_add(1).unwrap_or(1);
        }
        c.node_ip = cfg.node.address.octets();
        c.uplink_ifindex = self.uplink.index;
        c.mtu = self.mtu;
        c.mode = plan::program_mode(cfg) as u8;
        c.monitor = 0;
        c.flags = if cfg.node.fast_path {
            0
        } else {
            dataplane_common::NODE_F_SLOW_PATH
        };
        maps::set_config(&mut self.ebpf, &c)?;

        let xdp = match cfg.node.xdp {
            CfgXdp::Off => None,
            CfgXdp::Generic => Some("generic".to_string()),
            CfgXdp::Native => Some("native".to_string()),
        };
        if self.record.xdp != xdp {
            // An XDP link keeps its mode: a new mode is a new attachment.
            for key in self.attachments.keys() {
                if key.1 == Hook::XdpUplink as u8 {
                    self.attachments.detach(key);
                }
            }
            self.record.xdp = xdp;
            self.record.save(&self.state_dir)?;
        }
        let now = std::fs::read_to_string(IP_FORWARD)
            .unwrap_or_default()
            .trim()
            .to_string();
        if now != "1" {
            if self.record.ip_forward.is_none() {
                self.record.ip_forward = Some(now);
                self.record.save(&self.state_dir)?;
            }
            std::fs::write(IP_FORWARD, "1").context("enabling net.ipv4.ip_forward")?;
        }
        // Maps first, then the attachments (the uplink's last): a program never sees a
        // half-programmed node.
        self.reconcile(cfg).await?;
        // Every adopted link runs this build's programs now: the old maps can go, and a tunnel
        // device of another name (the config changed it) too. A build before the no-flow cache
        // wrote the kernel-flows map without raising its generation: whatever the new programs
        // cached beside it is stale from here on.
        maps::raise_kernel_flows_gen(&mut self.ebpf)?;
        pins::remove_previous(&self.pin_dir);
        if let Some(old) = self.record.tunnel.clone()
            && old != cfg.node.tunnel
        {
            crate::tunnel::remove(&self.nl, &old).await?;
            self.record.tunnel = Some(cfg.node.tunnel.clone());
            self.record.save(&self.state_dir)?;
        }
        Ok(())
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
        let r = self.reconcile_full(cfg).await;
        trim_heap();
        r
    }

    async fn reconcile_full(&mut self, cfg: &Config) -> Result<()> {
        self.cache = None;
        let known = self.known_endpoints()?;
        let links: plan::Links = self.nl.links().await?.into_iter().collect();
        self.follow_uplink(cfg, &links)?;
        let mut view = KernelView::read(&self.nl, cfg, self.underlay(), links, &known).await?;
        self.ensure_tunnel(cfg, &mut view.links).await?;
        self.ensure_tunnel_address(cfg).await?;
        let tunnel = self.tunnel.as_ref().map_or(0, |t| t.index);
        let plan = plan::plan(cfg, self.underlay(), tunnel, &view, &known);
        let current = maps::routes(&mut self.ebpf)?
            .iter()
            .map(|e| e.map(|(k, v)| ((Ipv4Addr::from(k.data()), k.prefix_len() as u8), v)))
            .collect::<Result<_, _>>()?;
        self.apply(plan, &view, &known, current).await?;
        self.apply_nat(cfg)?;
        self.cache = Some(Cache::new(view, &self.plan, self.underlay(), cfg));
        Ok(())
    }

    /// ipipd's nftables table as `cfg` wants it, when that changed (see [`crate::nat`]).
    fn apply_nat(&mut self, cfg: &Config) -> Result<()> {
        let want = crate::nat::desired(cfg);
        if self.nat.as_ref() == Some(&want) {
            return Ok(());
        }
        match &want {
            Some(r) => {
                crate::nat::apply(r)?;
                log::info!(
                    "natOutgoing: {} masqueraded out of the pod network ({} prefixes)",
                    r.sources
                        .iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.pod_network.len()
                );
            }
            None => crate::nat::remove()?,
        }
        self.nat = Some(want);
        Ok(())
    }

    /// A whole plan applied: what it changes against the endpoints and routes the maps hold
    /// (`known`, `current_routes`) and the kernel's routes and attachments (`view`, the
    /// attachments), written; then it is the plan.
    async fn apply(
        &mut self,
        plan: Plan,
        view: &KernelView,
        known: &BTreeMap<u32, Endpoint>,
        current_routes: BTreeMap<(Ipv4Addr, u8), RouteValue>,
    ) -> Result<()> {
        // Attachments: exactly the wanted ones (the pods', the tunnel device's, the uplink's).
        let mut attach: Vec<(Link, Hook)> = plan
            .endpoints
            .keys()
            .filter_map(|i| view.links.by_index(*i))
            .map(|l| (l.clone(), Hook::FromPod))
            .collect();
        if let Some(t) = &self.tunnel {
            attach.push((t.clone(), Hook::ToTunnel));
        }
        if self.uplink_present {
            attach.push((self.uplink.clone(), Hook::FromUplink));
            if self.xdp != CfgXdp::Off {
                attach.push((self.uplink.clone(), Hook::XdpUplink));
            }
        }
        let keys: BTreeSet<(u32, u8)> = attach.iter().map(|(l, h)| (l.index, *h as u8)).collect();
        let w = Writes {
            endpoints_put: differing(&plan.endpoints, known),
            routes_put: differing(&plan.routes, &current_routes),
            routes_removed: current_routes
                .keys()
                .filter(|k| !plan.routes.contains_key(k))
                .copied()
                .collect(),
            detach: self
                .attachments
                .keys()
                .into_iter()
                .filter(|k| !keys.contains(k))
                .collect(),
            attach,
            endpoints_removed: known
                .keys()
                .filter(|i| !plan.endpoints.contains_key(i))
                .copied()
                .collect(),
            slow_removed: view
                .owned_routes
                .difference(&plan.slow_path)
                .cloned()
                .collect(),
            slow_added: plan
                .slow_path
                .difference(&view.owned_routes)
                .cloned()
                .collect(),
            planned: plan.slow_path.iter().map(|r| r.dst()).collect(),
        };
        self.write(w, view, true).await?;
        self.log_pending(plan.pending.iter());
        // Next hops unresolved since this plan; those already were are asked for again by the
        // periodic next-hop check (the daemon's `next_hops` task), not by every change.
        let unresolved: BTreeSet<Ipv4Addr> = plan
            .unresolved()
            .difference(&self.plan.unresolved())
            .copied()
            .collect();
        self.resolve(&unresolved).await;
        self.plan = plan;
        Ok(())
    }

    /// Asks the kernel to resolve these next hops on the uplink now (`NTF_USE`). A packet the
    /// tunnel device sends toward an unresolved one is dropped (drop_next_hop_unresolved) until
    /// then; the answer is a neighbour event, after which the next check caches the MAC.
    async fn resolve(&self, vias: &BTreeSet<Ipv4Addr>) {
        self.nl
            .neighbours_resolve(vias.iter().copied(), self.uplink.index)
            .await;
    }

    /// When the next netlink filter may become a TCX link (see `attach`); None: none waits.
    pub fn next_promotion(&self) -> Option<std::time::Instant> {
        self.attachments.next_promotion()
    }

    /// How many netlink filters are attached.
    pub fn filters(&self) -> usize {
        self.attachments.filters()
    }

    /// Moves one netlink filter to a TCX link (~13 ms: an RCU grace period).
    pub async fn promote_one(&mut self) -> Result<()> {
        let Some(key) = self.attachments.promotable(std::time::Instant::now()) else {
            return Ok(());
        };
        let r = self.attachments.promote(&mut self.ebpf, key);
        self.remove_clsacts().await;
        r
    }

    /// The `clsact` qdiscs ipipd added for filters that are gone.
    async fn remove_clsacts(&mut self) {
        remove_clsacts(&self.nl, &mut self.attachments).await;
    }

    /// An interface's name as the kept kernel view has it (asked of the kernel when there is
    /// none): what /readyz lists for 10,000 attachments after every change.
    pub fn ifname(&self, index: u32) -> String {
        match self.cache.as_ref().and_then(|c| c.links().by_index(index)) {
            Some(l) => l.name.clone(),
            None => crate::inspect::ifname(index),
        }
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
                mode: self.attachments.mode(ifindex, hook),
            })
            .collect()
    }

    pub fn tcx(&self) -> bool {
        self.attachments.tcx
    }

    /// Before the daemon exits without a teardown: the programs stop emitting monitor events
    /// nobody reads. Everything else stays and keeps forwarding.
    pub fn leave(&mut self) {
        if let Err(e) = self.set_monitor(dataplane_common::MonitorMode::Off) {
            log::warn!("{e:#}");
        }
        log::info!(
            "the data plane in {} keeps forwarding (`ipipd teardown` removes it)",
            self.pin_dir.display()
        );
    }

    /// [`teardown`], for `run --teardown-on-exit` and a failed first start.
    pub async fn teardown(&mut self, cfg: &Config) {
        self.attachments.detach_all();
        self.remove_clsacts().await;
        self.tunnel = None;
        teardown(&self.nl, cfg, &self.state_dir).await;
    }
}

/// Removes the `clsact` qdiscs ipipd added for filters that are gone.
pub(crate) async fn remove_clsacts(nl: &Netlink, attachments: &mut Attachments) {
    for ifindex in attachments.take_clsact_gone() {
        if let Err(e) = nl.clsact_delete(ifindex).await {
            log::warn!("{e:#}");
        }
    }
}

/// The entries of `new` that `old` does not hold as they are.
fn differing<K: Ord + Copy, V: PartialEq + Copy>(
    new: &BTreeMap<K, V>,
    old: &BTreeMap<K, V>,
) -> Vec<(K, V)> {
    new.iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect()
}

pub(crate) fn device_is_there(r: &ReplacedRoute, links: &plan::Links) -> bool {
    match &r.device {
        Some((name, index)) => links.by_index(*index).is_some_and(|l| &l.name == name),
        None => true,
    }
}
