//! Where the programs are attached: TCX and XDP `bpf_link`s pinned with aya's own
//! `FdLink::pin` (the pin keeps the link; its fd is closed), and on kernels without TCX, netlink
//! `clsact` + `cls_bpf` filters, recorded in the state directory so that a later run can remove
//! them by handle (a filter cannot be pinned).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link as _},
        tc::{self, SchedClassifierLink, TcHandle},
    },
};
use dataplane_common::{Hook, program_names};
use serde::{Deserialize, Serialize};

use crate::{config::XdpMode as CfgXdp, netlink::Link, pins::write_atomic};

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
    /// A TCX or XDP bpf_link, pinned: removing the pin detaches it.
    Pinned(PathBuf),
    /// netlink cls_bpf on clsact (kernels without TCX).
    Filter {
        link: SchedClassifierLink,
        record: FilterRecord,
    },
}

/// The state directory's record of netlink filters.
pub const FILTERS_FILE: &str = "tc-filters.json";

/// Every attachment of the running data plane, keyed by (ifindex, hook).
pub struct Attachments {
    pin_dir: PathBuf,
    state_dir: PathBuf,
    /// TCX (6.6+) or netlink filters.
    pub tcx: bool,
    map: BTreeMap<(u32, u8), Attachment>,
}

impl Attachments {
    pub fn new(pin_dir: &Path, state_dir: &Path, tcx: bool) -> Self {
        Attachments {
            pin_dir: pin_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            tcx,
            map: BTreeMap::new(),
        }
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

    /// Attaches `prog` to `link` at `at` (once).
    pub fn tc(
        &mut self,
        ebpf: &mut Ebpf,
        prog: &str,
        link: &Link,
        at: TcAttachType,
        hook: Hook,
    ) -> Result<()> {
        let key = (link.index, hook as u8);
        if self.map.contains_key(&key) {
            return Ok(());
        }
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
            };
            Attachment::Filter { link: l, record }
        };
        self.map.insert(key, att);
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
    pub fn xdp(&mut self, ebpf: &mut Ebpf, link: &Link, mode: CfgXdp) -> Result<()> {
        if self.map.contains_key(&(link.index, Hook::XdpUplink as u8)) {
            return Ok(());
        }
        let p: &mut Xdp = ebpf
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
        let l = p.take_link(id)?;
        // aya attaches XDP with a bpf_link on every kernel that can load xdp_uplink (it needs
        // xdp.frags, 5.18; XDP links came in 5.9).
        let pin = self.link_pin(link.index, Hook::XdpUplink);
        let _ = std::fs::remove_file(&pin);
        FdLink::try_from(l)
            .map_err(|e| anyhow!("xdp_uplink on {}: not a bpf_link: {e}", link.name))?
            .pin(&pin)
            .with_context(|| format!("pinning xdp_uplink's link at {}", pin.display()))?;
        let att = Attachment::Pinned(pin);
        self.map.insert((link.index, Hook::XdpUplink as u8), att);
        log::info!("attached xdp_uplink to {} ({mode:?})", link.name);
        Ok(())
    }

    pub fn detach(&mut self, key: (u32, u8)) {
        match self.map.remove(&key) {
            Some(Attachment::Pinned(pin)) => {
                let _ = std::fs::remove_file(pin);
            }
            Some(Attachment::Filter { link, .. }) => {
                let _ = link.detach();
            }
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
}

/// Removes the netlink filters a previous run recorded (by handle), and the record.
pub fn remove_recorded_filters(state_dir: &Path) {
    let path = state_dir.join(FILTERS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
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
                if let Err(e) = l.detach() {
                    log::warn!("removing the previous run's filter on {}: {e}", r.ifname);
                }
            }
            Err(e) => log::debug!("previous filter on {}: {e}", r.ifname),
        }
    }
    let _ = std::fs::remove_file(&path);
}
