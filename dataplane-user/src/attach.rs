//! Where the programs are attached: TCX and XDP `bpf_link`s pinned with aya's own
//! `FdLink::pin` (the pin keeps the link; its fd is closed), and on kernels without TCX, netlink
//! `clsact` + `cls_bpf` filters, recorded in the state directory (a filter cannot be pinned).
//!
//! Neither depends on the daemon: both stay when it exits, and the programs keep forwarding. A
//! new daemon adopts them ([`Attachments::adopt`]) and puts its own programs on them in place
//! ([`Attachments::swap_adopted`]): `BPF_LINK_UPDATE` on a link, a `cls_bpf` replace with the
//! same handle and priority on a filter. Either is atomic: a packet runs the old program or the
//! new one, never none.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link as _, PinnedLink},
        tc::{self, SchedClassifierLink, TcHandle},
        xdp::XdpLink,
    },
};
use dataplane_common::{Hook, program_names};
use serde::{Deserialize, Serialize};

use crate::{config::XdpMode as CfgXdp, netlink::Link, pins::write_atomic};

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
}

impl FilterRecord {
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

/// Every attachment of the data plane, keyed by (ifindex, hook).
pub struct Attachments {
    pin_dir: PathBuf,
    state_dir: PathBuf,
    /// TCX (6.6+) or netlink filters.
    pub tcx: bool,
    map: BTreeMap<(u32, u8), Attachment>,
    /// Adopted from a previous run and still running its programs.
    adopted: BTreeSet<(u32, u8)>,
}

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
            let named = r
                .hook
                .as_deref()
                .and_then(|h| Hook::ALL.into_iter().find(|k| k.name() == h));
            let hook = named.unwrap_or(if !r.ingress {
                Hook::ToTunnel
            } else if r.ifname == uplink {
                Hook::FromUplink
            } else {
                Hook::FromPod
            });
            let key = (r.ifindex, hook as u8);
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

    /// Attaches `hook`'s program to `link` (once).
    pub fn attach(&mut self, ebpf: &mut Ebpf, link: &Link, hook: Hook, xdp: CfgXdp) -> Result<()> {
        if self.contains(link.index, hook) {
            return Ok(());
        }
        if hook == Hook::XdpUplink {
            self.xdp(ebpf, link, xdp)
        } else {
            self.tc(ebpf, link, hook)
        }
    }

    fn tc(&mut self, ebpf: &mut Ebpf, link: &Link, hook: Hook) -> Result<()> {
        let prog = program_of(hook, CfgXdp::Off);
        let at = attach_type_of(hook);
        if !self.tcx {
            // Netlink needs the clsact qdisc; "exists" is fine.
            let _ = tc::qdisc_add_clsact(&link.name);
        }
        let p: &mut SchedClassifier = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("no program {prog}"))?
            .try_into()?;
        let id = p
            .attach(&link.name, at)
            .with_context(|| format!("attaching {prog} to {}", link.name))?;
        let l = p.take_link(id)?;
        let att = if self.tcx {
            let pin = self.link_pin(link.index, hook);
            let _ = std::fs::remove_file(&pin);
            FdLink::try_from(l)
                .map_err(|e| anyhow!("{prog} on {}: not a bpf_link: {e}", link.name))?
                .pin(&pin)
                .with_context(|| format!("pinning {prog}'s link at {}", pin.display()))?;
            Attachment::Pinned(pin)
        } else {
            let record = FilterRecord {
                ifindex: link.index,
                ifname: link.name.clone(),
                ingress: matches!(at, TcAttachType::Ingress),
                priority: l.priority()?,
                handle: u32::from(l.handle()?),
                hook: Some(hook.name().to_string()),
            };
            // The filter outlives this process: aya's link would remove it when dropped.
            std::mem::forget(l);
            Attachment::Filter(record)
        };
        self.map.insert((link.index, hook as u8), att);
        self.save_filters()?;
        log::info!(
            "attached {prog} to {} ({}, {})",
            link.name,
            if self.tcx { "tcx" } else { "netlink" },
            hook.name()
        );
        Ok(())
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
        self.adopted.remove(&key);
        match self.map.remove(&key) {
            Some(Attachment::Pinned(pin)) => {
                let _ = std::fs::remove_file(pin);
            }
            Some(Attachment::Filter(record)) => record.remove(),
            None => {}
        }
        let _ = self.save_filters();
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
        for k in self.keys() {
            self.detach(k);
        }
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

fn read_filters(state_dir: &Path) -> Vec<FilterRecord> {
    std::fs::read_to_string(state_dir.join(FILTERS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Removes the netlink filters a run recorded (by handle), and the record: `ipipd teardown`.
pub fn remove_recorded_filters(state_dir: &Path) {
    for r in read_filters(state_dir) {
        r.remove();
    }
    let _ = std::fs::remove_file(state_dir.join(FILTERS_FILE));
}
