//! Where the programs are attached: TCX and XDP `bpf_link`s pinned with aya's own
//! `FdLink::pin` (the pin keeps the link; its fd is closed), and on kernels without TCX, netlink
//! `clsact` + `cls_bpf` filters, recorded in the state directory (a filter cannot be pinned).
//!
//! On a TCX kernel, a reconcile that finds many pod interfaces to attach at once (a large
//! node's first start) attaches their `from_pod` as netlink filters (~1 ms each, where a TCX
//! attach waits ~13 ms for an RCU grace period under the RTNL lock), so the node is ready in
//! about a second; so do pods that come faster than [`pace`] lets TCX attaches go (a churn).
//! The daemon then moves them to pinned TCX links one at a time, once they are due
//! ([`Attachments::promote`]): the TCX link first (TCX runs before cls_bpf, and from_pod's
//! verdicts are all final), then the filter and the `clsact` ipipd added go. No packet meets
//! neither program.
//!
//! Neither depends on the daemon: both stay when it exits, and the programs keep forwarding. A
//! new daemon adopts them ([`Attachments::adopt`]) and puts its own programs on them in place
//! ([`Attachments::swap_adopted`]): `BPF_LINK_UPDATE` on a link, a `cls_bpf` replace with the
//! same handle and priority on a filter. Either is atomic: a packet runs the old program or the
//! new one, never none.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link as _, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
    },
};
use dataplane_common::{Hook, program_names};
use serde::{Deserialize, Serialize};

use crate::{config::XdpMode as CfgXdp, netlink::Link, pins::write_atomic};

pub mod pace;
use pace::{PROMOTE_AFTER, Pace};

/// A netlink (pre-TCX) tc filter ipipd attached, recorded so a later run can adopt or remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRecord {
    pub ifindex: u32,
    pub ifname: String,
    pub ingress: bool,
    pub priority: u16,
    pub handle: u32,
    /// The hook's name; absent in the records of v0.1.0, whose hook is told by where the
    /// filter is (see [`Attachments::adopt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// ipipd added the interface's `clsact` qdisc for this filter (none was there): it goes
    /// when the filter does, where nothing else needs it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clsact: bool,
}

impl FilterRecord {
    /// The hook the filter serves: recorded, or (records of v0.1.0) told by where it is.
    pub fn hook_of(&self, uplink: &str) -> Hook {
        let named = self
            .hook
            .as_deref()
            .and_then(|h| Hook::ALL.into_iter().find(|k| k.name() == h));
        named.unwrap_or(if !self.ingress {
            Hook::ToTunnel
        } else if self.ifname == uplink {
            Hook::FromUplink
        } else {
            Hook::FromPod
        })
    }

    fn attach_type(&self) -> TcAttachType {
        if self.ingress {
            TcAttachType::Ingress
        } else {
            TcAttachType::Egress
        }
    }

    /// The filter as aya's link, to replace or remove it. None when its interface is gone or
    /// is another one now (same name, new ifindex): the filter went with the old one.
    fn link(&self) -> Option<SchedClassifierLink> {
        if ifindex_of(&self.ifname) != Some(self.ifindex) {
            return None;
        }
        SchedClassifierLink::attached(
            &self.ifname,
            self.attach_type(),
            self.priority,
            TcHandle::from(self.handle),
            None,
        )
        .ok()
    }

    /// Removes the filter (nothing when it is gone already).
    fn remove(&self) {
        if let Some(l) = self.link()
            && let Err(e) = l.detach()
        {
            log::debug!("removing the filter on {}: {e}", self.ifname);
        }
    }
}

enum Attachment {
    /// A TCX or XDP bpf_link, pinned: removing the pin detaches it.
    Pinned(PathBuf),
    /// netlink cls_bpf on clsact (kernels without TCX).
    Filter(FilterRecord),
}

/// The state directory's record of netlink filters.
pub const FILTERS_FILE: &str = "tc-filters.json";

/// Pod interfaces a reconcile attaches with TCX links directly; more at once (~13 ms each) are
/// attached as netlink filters first and promoted to TCX links in the background.
pub const TCX_AT_ONCE: usize = 8;

/// Every attachment of the data plane, keyed by (ifindex, hook).
pub struct Attachments {
    pin_dir: PathBuf,
    state_dir: PathBuf,
    /// TCX (6.6+) or netlink filters.
    pub tcx: bool,
    map: BTreeMap<(u32, u8), Attachment>,
    /// Adopted from a previous run and still running its programs.
    adopted: BTreeSet<(u32, u8)>,
    /// Interfaces whose filter went and whose `clsact` ipipd had added: to remove.
    clsact_gone: Vec<u32>,
    /// Filters that may not move to a TCX link before a time: a pod's filter of a burst
    /// ([`pace`]), one whose move failed.
    promote_later: BTreeMap<(u32, u8), Instant>,
    /// The recent pod attaches, which tell TCX link or filter.
    pace: Pace,
}

/// How long a filter whose move to a TCX link failed stays a filter before the next try.
const PROMOTE_RETRY: Duration = Duration::from_secs(30);

/// The program each hook runs (the uplink's XDP: by its mode).
fn program_of(hook: Hook, xdp: CfgXdp) -> &'static str {
    match hook {
        Hook::FromPod => program_names::FROM_POD,
        Hook::FromUplink => program_names::FROM_UPLINK,
        Hook::ToTunnel => program_names::TO_TUNNEL,
        Hook::XdpUplink if xdp == CfgXdp::Generic => program_names::XDP_UPLINK_SKB,
        Hook::XdpUplink => program_names::XDP_UPLINK,
    }
}

/// Where each tc hook attaches.
pub fn attach_type_of(hook: Hook) -> TcAttachType {
    if hook == Hook::ToTunnel {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    }
}

impl Attachments {
    pub fn new(pin_dir: &Path, state_dir: &Path, tcx: bool) -> Self {
        Attachments {
            pin_dir: pin_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            tcx,
            map: BTreeMap::new(),
            adopted: BTreeSet::new(),
            clsact_gone: Vec::new(),
            promote_later: BTreeMap::new(),
            pace: Pace::default(),
        }
    }

    /// What a previous run left: its pinned links (`links/<ifindex>-<hook>`) and its recorded
    /// netlink filters. They keep running the previous programs until
    /// [`Attachments::swap_adopted`]. `uplink` tells the hook of a filter recorded without one.
    /// Returns how many were found.
    pub fn adopt(&mut self, uplink: &str) -> usize {
        let dir = self.pin_dir.join("links");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.split_once('-').and_then(|(i, h)| {
                    let hook = Hook::ALL.into_iter().find(|k| k.name() == h)?;
                    Some((i.parse::<u32>().ok()?, hook as u8))
                });
                match key {
                    Some(key) => {
                        self.map.insert(key, Attachment::Pinned(e.path()));
                        self.adopted.insert(key);
                    }
                    None => {
                        log::warn!("{}: not a link pin of ipipd's, removed", e.path().display());
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        for r in read_filters(&self.state_dir) {
            let key = (r.ifindex, r.hook_of(uplink) as u8);
            if matches!(self.map.get(&key), Some(Attachment::Pinned(_))) {
                // A promotion stopped between the TCX link and the filter's removal: the
                // link runs first and is kept.
                r.remove();
                if r.clsact {
                    self.clsact_gone.push(r.ifindex);
                }
                continue;
            }
            self.map.insert(key, Attachment::Filter(r));
            self.adopted.insert(key);
        }
        self.adopted.len()
    }

    pub fn contains(&self, ifindex: u32, hook: Hook) -> bool {
        self.map.contains_key(&(ifindex, hook as u8))
    }

    pub fn keys(&self) -> Vec<(u32, u8)> {
        self.map.keys().copied().collect()
    }

    fn link_pin(&self, ifindex: u32, hook: Hook) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{ifindex}-{}", hook.name()))
    }

    /// Puts this run's programs on every adopted attachment, in place. One that cannot be
    /// updated (its interface went while no daemon ran) is removed: the reconcile attaches
    /// afresh where one is wanted. `xdp` is the XDP mode (which program the uplink's XDP link
    /// runs). Returns how many were swapped.
    pub fn swap_adopted(&mut self, ebpf: &mut Ebpf, xdp: CfgXdp) -> usize {
        let mut swapped = 0;
        for key in std::mem::take(&mut self.adopted) {
            let Some(hook) = Hook::from_u8(key.1) else {
                continue;
            };
            let r = match self.map.get(&key) {
                Some(Attachment::Pinned(pin)) => swap_pinned(ebpf, program_of(hook, xdp), pin),
                Some(Attachment::Filter(rec)) => swap_filter(ebpf, program_of(hook, xdp), rec),
                None => continue,
            };
            match r {
                Ok(()) => swapped += 1,
                Err(e) => {
                    log::info!(
                        "{} on #{}: not adopted ({e:#}); attaching anew if wanted",
                        hook.name(),
                        key.0
                    );
                    self.detach(key);
                }
            }
        }
        if swapped > 0 {
            log::info!("{swapped} attachments of the previous run now run this run's programs");
        }
        let _ = self.save_filters();
        swapped
    }

    /// Attaches each hook's program to its interface where it is not yet: in order, and on a
    /// TCX kernel the pods' as netlink filters when more than [`TCX_AT_ONCE`] wait (they may
    /// move at once) or when [`pace`] says so (they move after [`PROMOTE_AFTER`]). The filter
    /// record is written once.
    pub fn attach_all(
        &mut self,
        ebpf: &mut Ebpf,
        want: &[(Link, Hook)],
        xdp: CfgXdp,
    ) -> Result<()> {
        let missing: Vec<&(Link, Hook)> = want
            .iter()
            .filter(|(l, h)| !self.contains(l.index, *h))
            .collect();
        let pods = missing.iter().filter(|(_, h)| *h == Hook::FromPod).count();
        let batch = self.tcx && pods > TCX_AT_ONCE;
        let started = std::time::Instant::now();
        let mut r = Ok(());
        for (link, hook) in missing {
            r = if *hook == Hook::XdpUplink {
                self.xdp(ebpf, link, xdp)
            } else {
                let pod = *hook == Hook::FromPod;
                let now = Instant::now();
                let paced = pod && self.tcx && !batch && !self.pace.tcx_now(now);
                let netlink = paced || (batch && pod);
                self.tc(ebpf, link.index, &link.name, *hook, netlink)
                    .inspect(|()| {
                        if pod {
                            self.pace.pod_attached(now);
                        }
                        if paced {
                            self.promote_later
                                .insert((link.index, *hook as u8), now + PROMOTE_AFTER);
                        }
                        if !(batch && pod) {
                            log::info!(
                                "attached {} to {} ({}, {}){}",
                                program_of(*hook, xdp),
                                link.name,
                                self.mode(link.index, *hook).unwrap_or("?"),
                                hook.name(),
                                if paced {
                                    "; pods come fast: a TCX link later"
                                } else {
                                    ""
                                }
                            );
                        }
                    })
            };
            if r.is_err() {
                break;
            }
        }
        if batch {
            log::info!(
                "attached from_pod to {pods} pod interfaces as netlink filters in {} ms; \
                 moving them to TCX links in the background",
                started.elapsed().as_millis()
            );
        }
        // Also after a failure: what was attached is recorded.
        self.save_filters().and(r)
    }

    /// Attaches `hook`'s program to `link`: a pinned TCX link, or a netlink filter on kernels
    /// without TCX and when `netlink` asks for one. The caller saves the filter record.
    fn tc(
        &mut self,
        ebpf: &mut Ebpf,
        ifindex: u32,
        ifname: &str,
        hook: Hook,
        netlink: bool,
    ) -> Result<()> {
        let prog = program_of(hook, CfgXdp::Off);
        let at = attach_type_of(hook);
        let tcx = self.tcx && !netlink;
        // Netlink needs the clsact qdisc; "exists" is fine (and then not ours to remove).
        let clsact = !tcx && tc::qdisc_add_clsact(ifname).is_ok();
        let p: &mut SchedClassifier = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("no program {prog}"))?
            .try_into()?;
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let id = p
            .attach_with_options(ifname, at, options)
            .with_context(|| format!("attaching {prog} to {ifname}"))?;
        let l = p.take_link(id)?;
        let att = if tcx {
            let pin = self.link_pin(ifindex, hook);
            let _ = std::fs::remove_file(&pin);
            FdLink::try_from(l)
                .map_err(|e| anyhow!("{prog} on {ifname}: not a bpf_link: {e}"))?
                .pin(&pin)
                .with_context(|| format!("pinning {prog}'s link at {}", pin.display()))?;
            Attachment::Pinned(pin)
        } else {
            let record = FilterRecord {
                ifindex,
                ifname: ifname.to_string(),
                ingress: matches!(at, TcAttachType::Ingress),
                priority: l.priority()?,
                handle: u32::from(l.handle()?),
                hook: Some(hook.name().to_string()),
                clsact,
            };
            // The filter outlives this process: aya's link would remove it when dropped.
            std::mem::forget(l);
            Attachment::Filter(record)
        };
        self.map.insert((ifindex, hook as u8), att);
        Ok(())
    }

    /// How many netlink filters are attached.
    pub fn filters(&self) -> usize {
        self.map
            .values()
            .filter(|a| matches!(a, Attachment::Filter(_)))
            .count()
    }

    /// When the next netlink filter may move to a TCX link, on a TCX kernel (None: no filter
    /// waits): when the earliest due one is due, and not while pods come fast ([`pace`]).
    pub fn next_promotion(&self) -> Option<Instant> {
        if !self.tcx {
            return None;
        }
        // Each filter's time, None for "now": the minimum is the earliest (None first), and a
        // filter due now ends the search (this runs at every turn of the owner's loop, and a
        // large first start's thousands of filters are all due now).
        let mut times = self
            .map
            .iter()
            .filter(|(_, a)| matches!(a, Attachment::Filter(_)))
            .map(|(k, _)| self.promote_later.get(k).copied());
        let mut due = times.next()?;
        while due.is_some()
            && let Some(t) = times.next()
        {
            due = due.min(t);
        }
        Some(due.max(self.pace.slow_from()).unwrap_or_else(Instant::now))
    }

    /// A netlink filter that may move to a TCX link at `now`.
    pub fn promotable(&self, now: Instant) -> Option<(u32, u8)> {
        if !self.tcx || self.pace.slow_from().is_some_and(|t| t > now) {
            return None;
        }
        self.map
            .iter()
            .find(|(k, a)| {
                matches!(a, Attachment::Filter(_))
                    && self.promote_later.get(k).is_none_or(|t| *t <= now)
            })
            .map(|(k, _)| *k)
    }

    /// Moves the filter at `key` to a pinned TCX link: the link first, then the filter goes
    /// (see the module's note). A `clsact` ipipd had added for the filter is left to
    /// [`Attachments::take_clsact_gone`].
    pub fn promote(&mut self, ebpf: &mut Ebpf, key: (u32, u8)) -> Result<()> {
        let Some(Attachment::Filter(rec)) = self.map.get(&key) else {
            return Ok(());
        };
        let rec = rec.clone();
        let hook = Hook::from_u8(key.1).ok_or_else(|| anyhow!("hook {}", key.1))?;
        if ifindex_of(&rec.ifname) != Some(rec.ifindex) {
            // The interface went (or is another one now): the next reconcile sees to it.
            self.detach(key);
            return Ok(());
        }
        self.map.remove(&key);
        if let Err(e) = self.tc(ebpf, rec.ifindex, &rec.ifname, hook, false) {
            self.map.insert(key, Attachment::Filter(rec));
            self.promote_later
                .insert(key, Instant::now() + PROMOTE_RETRY);
            return Err(e.context(format!(
                "the filter stays (next try in {} s)",
                PROMOTE_RETRY.as_secs()
            )));
        }
        self.promote_later.remove(&key);
        log::debug!("{} on {}: now a TCX link", hook.name(), rec.ifname);
        rec.remove();
        if rec.clsact {
            self.clsact_gone.push(rec.ifindex);
        }
        self.save_filters()
    }

    /// The interfaces whose `clsact` ipipd added and no filter of ipipd's uses any more (the
    /// caller removes the qdiscs: netlink, async).
    pub fn take_clsact_gone(&mut self) -> Vec<u32> {
        let mut gone = std::mem::take(&mut self.clsact_gone);
        gone.retain(|i| {
            !self
                .map
                .iter()
                .any(|((j, _), a)| j == i && matches!(a, Attachment::Filter(_)))
        });
        gone
    }

    /// How the attachment at `key` is made: "tcx", "netlink" (cls_bpf) or "xdp".
    pub fn mode(&self, ifindex: u32, hook: Hook) -> Option<&'static str> {
        match self.map.get(&(ifindex, hook as u8))? {
            Attachment::Pinned(_) if hook == Hook::XdpUplink => Some("xdp"),
            Attachment::Pinned(_) => Some("tcx"),
            Attachment::Filter(_) => Some("netlink"),
        }
    }

    /// Attaches xdp_uplink to `link`: a pinned bpf_link.
    fn xdp(&mut self, ebpf: &mut Ebpf, link: &Link, mode: CfgXdp) -> Result<()> {
        let prog = program_of(Hook::XdpUplink, mode);
        let p: &mut Xdp = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("no program {prog}"))?
            .try_into()?;
        let m = if mode == CfgXdp::Native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        let id = p
            .attach(&link.name, m)
            .with_context(|| format!("attaching {prog} to {}", link.name))?;
        let l = p.take_link(id)?;
        // aya attaches XDP with a bpf_link on every kernel that can load xdp_uplink (it needs
        // xdp.frags, 5.18; XDP links came in 5.9).
        let pin = self.link_pin(link.index, Hook::XdpUplink);
        let _ = std::fs::remove_file(&pin);
        FdLink::try_from(l)
            .map_err(|e| anyhow!("xdp_uplink on {}: not a bpf_link: {e}", link.name))?
            .pin(&pin)
            .with_context(|| format!("pinning xdp_uplink's link at {}", pin.display()))?;
        self.map
            .insert((link.index, Hook::XdpUplink as u8), Attachment::Pinned(pin));
        log::info!("attached {prog} to {} ({mode:?})", link.name);
        Ok(())
    }

    pub fn detach(&mut self, key: (u32, u8)) {
        self.detach_many([key]);
    }

    /// Detaches these, then writes the filter record once.
    pub fn detach_many(&mut self, keys: impl IntoIterator<Item = (u32, u8)>) {
        for key in keys {
            self.detach_one(key);
        }
        let _ = self.save_filters();
    }

    fn detach_one(&mut self, key: (u32, u8)) {
        self.adopted.remove(&key);
        self.promote_later.remove(&key);
        match self.map.remove(&key) {
            Some(Attachment::Pinned(pin)) => {
                let _ = std::fs::remove_file(pin);
            }
            Some(Attachment::Filter(record)) => {
                record.remove();
                if record.clsact {
                    self.clsact_gone.push(record.ifindex);
                }
            }
            None => {}
        }
    }

    /// Forgets the pinned links whose pin is gone (removed under the running daemon: the
    /// kernel released the link, so the program is detached) and returns them as
    /// `(ifindex, hook)`; the next reconcile attaches them again.
    pub fn forget_unpinned(&mut self) -> Vec<(u32, u8)> {
        let gone: Vec<(u32, u8)> = self
            .map
            .iter()
            .filter(|(_, a)| matches!(a, Attachment::Pinned(pin) if !pin.exists()))
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            self.map.remove(k);
            self.adopted.remove(k);
        }
        gone
    }

    pub fn detach_all(&mut self) {
        self.detach_many(self.keys());
    }

    fn save_filters(&self) -> Result<()> {
        let records: Vec<&FilterRecord> = self
            .map
            .values()
            .filter_map(|a| match a {
                Attachment::Filter(record) => Some(record),
                Attachment::Pinned(_) => None,
            })
            .collect();
        let path = self.state_dir.join(FILTERS_FILE);
        if records.is_empty() {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        write_atomic(&path, &serde_json::to_vec_pretty(&records)?)
    }
}

fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// `BPF_LINK_UPDATE` of the pinned link at `pin` to this run's program `prog`.
fn swap_pinned(ebpf: &mut Ebpf, prog: &str, pin: &Path) -> Result<()> {
    let link: FdLink = PinnedLink::from_pin(pin)
        .with_context(|| format!("opening {}", pin.display()))?
        .into();
    let p = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("no program {prog}"))?;
    if program_names::is_xdp(prog) {
        let p: &mut Xdp = p.try_into()?;
        let l = XdpLink::try_from(link).map_err(|e| anyhow!("not an XDP link: {e}"))?;
        let id = p.attach_to_link(l).context("updating the XDP link")?;
        // The pin keeps the link; this run's fd closes.
        drop(FdLink::try_from(p.take_link(id)?));
    } else {
        let p: &mut SchedClassifier = p.try_into()?;
        let l = SchedClassifierLink::try_from(link).map_err(|e| anyhow!("not a TCX link: {e}"))?;
        let id = p.attach_to_link(l).context("updating the TCX link")?;
        drop(FdLink::try_from(p.take_link(id)?));
    }
    Ok(())
}

/// Replaces the recorded cls_bpf filter's program with `prog` in place (same handle and
/// priority).
fn swap_filter(ebpf: &mut Ebpf, prog: &str, rec: &FilterRecord) -> Result<()> {
    let link = rec
        .link()
        .ok_or_else(|| anyhow!("{} is gone", rec.ifname))?;
    let p: &mut SchedClassifier = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("no program {prog}"))?
        .try_into()?;
    let id = p
        .attach_to_link(link)
        .with_context(|| format!("replacing the filter on {}", rec.ifname))?;
    std::mem::forget(p.take_link(id)?);
    Ok(())
}

/// The netlink filters the state directory records.
pub fn read_filters(state_dir: &Path) -> Vec<FilterRecord> {
    std::fs::read_to_string(state_dir.join(FILTERS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ifindex: u32, clsact: bool) -> FilterRecord {
        FilterRecord {
            ifindex,
            // No such interface: removing the filter is a no-op here.
            ifname: format!("ipipd-none{ifindex}"),
            ingress: true,
            priority: 1,
            handle: 1,
            hook: Some(Hook::FromPod.name().to_string()),
            clsact,
        }
    }

    fn dirs(tag: &str) -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("ipipd-attach-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (pins, state) = (base.join("pins"), base.join("state"));
        std::fs::create_dir_all(pins.join("links")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        (pins, state)
    }

    /// A promotion cut short between the TCX link and the filter's removal left both: the next
    /// run keeps the link, drops the filter from its record and removes the clsact ipipd added.
    #[test]
    fn a_link_and_a_filter_for_one_hook_adopt_the_link() {
        let (pins, state) = dirs("both");
        std::fs::write(pins.join("links/5-from_pod"), b"").unwrap();
        let filters = vec![record(5, true), record(6, false)];
        std::fs::write(
            state.join(FILTERS_FILE),
            serde_json::to_vec(&filters).unwrap(),
        )
        .unwrap();
        let mut a = Attachments::new(&pins, &state, true);
        assert_eq!(a.adopt("eth0"), 2);
        assert_eq!(a.mode(5, Hook::FromPod), Some("tcx"));
        assert_eq!(a.mode(6, Hook::FromPod), Some("netlink"));
        assert_eq!(a.take_clsact_gone(), vec![5]);
        // The one left to move to a TCX link, at once.
        let now = Instant::now();
        assert_eq!(a.promotable(now), Some((6, Hook::FromPod as u8)));
        assert!(a.next_promotion().is_some_and(|t| t <= Instant::now()));
        a.save_filters().unwrap();
        let saved = read_filters(&state);
        assert_eq!(saved, vec![record(6, false)]);
        // Without TCX, filters are where they stay.
        let mut b = Attachments::new(&pins, &state, false);
        b.adopt("eth0");
        assert_eq!(b.promotable(now), None);
        assert_eq!(b.next_promotion(), None);
        let _ = std::fs::remove_dir_all(pins.parent().unwrap());
    }

    /// A burst's filter moves when it is due and pods come slowly; a first start's (no time of
    /// its own) as soon as they do; none on a kernel without TCX.
    #[test]
    fn filters_move_when_due_and_pods_come_slowly() {
        let (pins, state) = dirs("due");
        let mut a = Attachments::new(&pins, &state, true);
        let t0 = Instant::now();
        let burst = (7, Hook::FromPod as u8);
        a.map.insert(burst, Attachment::Filter(record(7, true)));
        a.promote_later.insert(burst, t0 + PROMOTE_AFTER);
        a.pace.pod_attached(t0);
        assert_eq!(a.next_promotion(), Some(t0 + PROMOTE_AFTER));
        assert_eq!(a.promotable(t0 + PROMOTE_AFTER / 2), None);
        assert_eq!(a.promotable(t0 + PROMOTE_AFTER), Some(burst));
        // Pods came fast just before it was due: the move waits until they come slowly.
        let late = t0 + PROMOTE_AFTER - pace::WINDOW / 2;
        for i in 0..pace::PER_WINDOW as u32 {
            a.pace.pod_attached(late + Duration::from_millis(i.into()));
        }
        assert_eq!(a.promotable(t0 + PROMOTE_AFTER), None);
        assert_eq!(a.next_promotion(), Some(late + pace::WINDOW));
        // A first start's filter: due at once, so the quiet decides.
        let first = (8, Hook::FromPod as u8);
        a.map.insert(first, Attachment::Filter(record(8, true)));
        assert_eq!(a.next_promotion(), Some(late + pace::WINDOW));
        assert_eq!(a.promotable(late + pace::WINDOW), Some(burst));
        a.detach(burst);
        assert_eq!(a.promotable(late + pace::WINDOW), Some(first));
        a.detach(first);
        assert_eq!(a.next_promotion(), None);
        let mut b = Attachments::new(&pins, &state, false);
        b.map.insert(first, Attachment::Filter(record(8, true)));
        assert_eq!((b.next_promotion(), b.promotable(t0)), (None, None));
        let _ = std::fs::remove_dir_all(pins.parent().unwrap());
    }

    /// Records of earlier versions have no `clsact`: theirs is not ipipd's to remove.
    #[test]
    fn old_records_read_without_clsact() {
        let r: FilterRecord = serde_json::from_str(
            r#"{"ifindex":3,"ifname":"eth0","ingress":true,"priority":1,"handle":1}"#,
        )
        .unwrap();
        assert!(!r.clsact && r.hook.is_none());
        assert!(
            !serde_json::to_string(&record(3, false))
                .unwrap()
                .contains("clsact")
        );
    }
}
