//! The node's address allocator (IPAM): pod addresses from the node's own blocks, one per
//! attachment (container ID, interface name), persisted in `<state_dir>/ipam.json`.
//!
//! - Reserved: the first and the last address of every block (its network and broadcast-style
//!   addresses) are never handed out, as neither is in a /24 a tool may treat as a subnet.
//! - Order: the next free address after the last one handed out (as the reference
//!   `host-local` does), wrapping around the blocks: a released address is not reused at once,
//!   so a stale neighbour entry or connection of a deleted pod does not reach a new one.
//! - An address some other endpoint of the desired state holds (the file's, one added with
//!   an explicit `--address`) is skipped.
//! - The daemon's owner task is the only user: allocations are serialized, and each is saved
//!   before its answer leaves, so concurrent ADDs never get one address twice and a restart
//!   loses none.
//!
//! Pure: the owner passes the blocks and the addresses in use; nothing here touches the kernel.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::{net::Ipv4Net, pins::write_atomic};

/// Who holds an address: the container runtime's attachment (CNI_CONTAINERID, CNI_IFNAME).
/// `ipipd endpoint add` without `--address` allocates as [`Attachment::cli`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The container ID of allocations made by `ipipd endpoint add` (its ifname is the interface).
pub const CLI_OWNER: &str = "ipipd-endpoint-add";

impl Attachment {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    pub fn cli(interface: &str) -> Self {
        Attachment::new(CLI_OWNER, interface)
    }

    pub fn is_cli(&self) -> bool {
        self.container_id == CLI_OWNER
    }
}

impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// One address handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    #[serde(flatten)]
    pub owner: Attachment,
    pub address: Ipv4Addr,
    /// `namespace/name` of the pod, when the runtime said (CNI_ARGS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The allocations, as saved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipam {
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    /// The address handed out last: the search for the next starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Ipv4Addr>,
}

const IPAM_FILE: &str = "ipam.json";

/// Why no address could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// Every usable address of the node's blocks is taken.
    Full {
        blocks: Vec<Ipv4Net>,
        allocated: usize,
        in_use: usize,
    },
    /// The node has no blocks to allocate from.
    NoBlocks,
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllocError::Full {
                blocks,
                allocated,
                in_use,
            } => {
                let b: Vec<String> = blocks.iter().map(|b| b.to_string()).collect();
                write!(
                    f,
                    "no free address in the node's blocks {} ({allocated} allocated, {in_use} \
                     held by other endpoints, first and last of each block reserved)",
                    b.join(", ")
                )
            }
            AllocError::NoBlocks => write!(f, "the node has no blocks to allocate from"),
        }
    }
}

impl std::error::Error for AllocError {}

/// The addresses of `block` that are handed out: all but the first and the last.
pub fn usable(block: &Ipv4Net) -> impl Iterator<Item = Ipv4Addr> + use<> {
    usable_range(block).map(|a| Ipv4Addr::from(a as u32))
}

/// How many addresses of `block` are handed out.
pub fn usable_count(block: &Ipv4Net) -> u64 {
    let r = usable_range(block);
    if r.is_empty() {
        0
    } else {
        r.end() - r.start() + 1
    }
}

/// Whether `a` is one of the addresses of `block` that are handed out.
pub fn usable_holds(block: &Ipv4Net, a: Ipv4Addr) -> bool {
    usable_range(block).contains(&u64::from(u32::from(a)))
}

fn usable_range(block: &Ipv4Net) -> std::ops::RangeInclusive<u64> {
    let first = u32::from(block.addr);
    let size = if block.len == 0 {
        u64::from(u32::MAX) + 1
    } else {
        1u64 << (32 - block.len)
    };
    // A /31 or /32 has no first-and-last to spare: nothing is handed out from it.
    if size < 4 {
        std::ops::RangeInclusive::new(1, 0)
    } else {
        u64::from(first) + 1..=u64::from(first) + size - 2
    }
}

impl Ipam {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(IPAM_FILE)
    }

    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = Self::path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("{}: not an ipipd IPAM file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow!("{}: {e}", path.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        write_atomic(&Self::path(state_dir), &serde_json::to_vec_pretty(self)?)
    }

    pub fn of(&self, owner: &Attachment) -> Option<&Allocation> {
        self.allocations.iter().find(|a| &a.owner == owner)
    }

    pub fn holder(&self, address: Ipv4Addr) -> Option<&Allocation> {
        self.allocations.iter().find(|a| a.address == address)
    }

    /// The address of `owner`: the one it holds already (an ADD retried), else the next free
    /// one of `blocks` not in `in_use` (the other endpoints' addresses).
    pub fn allocate(
        &mut self,
        owner: &Attachment,
        pod: Option<String>,
        blocks: &[Ipv4Net],
        in_use: &BTreeSet<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AllocError> {
        if let Some(a) = self.allocations.iter_mut().find(|a| &a.owner == owner) {
            if pod.is_some() {
                a.pod = pod;
            }
            return Ok(a.address);
        }
        if blocks.is_empty() {
            return Err(AllocError::NoBlocks);
        }
        let taken: BTreeSet<Ipv4Addr> = self.allocations.iter().map(|a| a.address).collect();
        let candidates: Vec<Ipv4Addr> = blocks.iter().flat_map(usable).collect();
        // After the last one handed out; from the start when it is no longer a candidate.
        let start = self
            .last
            .and_then(|l| candidates.iter().position(|c| *c == l))
            .map_or(0, |i| i + 1);
        let n = candidates.len();
        let free = (0..n)
            .map(|k| candidates[(start + k) % n])
            .find(|c| !taken.contains(c) && !in_use.contains(c));
        let Some(address) = free else {
            return Err(AllocError::Full {
                blocks: blocks.to_vec(),
                allocated: taken.len(),
                in_use: in_use.iter().filter(|a| !taken.contains(a)).count(),
            });
        };
        self.allocations.push(Allocation {
            owner: owner.clone(),
            address,
            pod,
        });
        self.last = Some(address);
        Ok(address)
    }

    /// Releases what `owner` holds; its address, or None when it held nothing (a DEL repeated).
    pub fn release(&mut self, owner: &Attachment) -> Option<Ipv4Addr> {
        let i = self.allocations.iter().position(|a| &a.owner == owner)?;
        Some(self.allocations.remove(i).address)
    }

    /// Releases the allocation of `address` when `of` holds for its owner; the owner.
    pub fn release_address(
        &mut self,
        address: Ipv4Addr,
        of: impl Fn(&Attachment) -> bool,
    ) -> Option<Attachment> {
        let i = self
            .allocations
            .iter()
            .position(|a| a.address == address && of(&a.owner))?;
        Some(self.allocations.remove(i).owner)
    }

    /// GC: releases every runtime allocation whose owner is not in `valid` (the CLI's are not
    /// the runtime's to collect); what was released.
    pub fn collect(&mut self, valid: &BTreeSet<Attachment>) -> Vec<Allocation> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.allocations)
            .into_iter()
            .partition(|a| !a.owner.is_cli() && !valid.contains(&a.owner));
        self.allocations = kept;
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn att(c: &str) -> Attachment {
        Attachment::new(c, "eth0")
    }

    #[test]
    fn a_blocks_usable_addresses_are_counted_and_held_as_they_are_handed_out() {
        for b in [
            "192.168.83.128/26",
            "10.128.0.0/17",
            "10.0.0.0/30",
            "10.0.0.4/31",
            "10.0.0.9/32",
        ] {
            let b = net(b);
            let all: Vec<Ipv4Addr> = usable(&b).collect();
            assert_eq!(usable_count(&b), all.len() as u64, "{b}");
            assert!(all.iter().all(|x| usable_holds(&b, *x)), "{b}");
            let (first, last) = (
                b.addr,
                Ipv4Addr::from(u32::from(b.addr) + ((1u64 << (32 - b.len)) - 1) as u32),
            );
            assert!(!usable_holds(&b, first) && !usable_holds(&b, last), "{b}");
        }
        assert_eq!(usable_count(&net("192.168.83.128/26")), 62);
    }

    #[test]
    fn the_first_and_last_of_a_block_are_reserved() {
        let u: Vec<Ipv4Addr> = usable(&net("10.9.0.64/26")).collect();
        assert_eq!(u.len(), 62);
        assert_eq!(u[0], a("10.9.0.65"));
        assert_eq!(u[61], a("10.9.0.126"));
        assert_eq!(usable(&net("10.9.0.4/30")).count(), 2);
        assert_eq!(usable(&net("10.9.0.4/31")).count(), 0);
        assert_eq!(usable(&net("10.9.0.4/32")).count(), 0);
    }

    #[test]
    fn a_block_fills_up_with_distinct_addresses_then_says_so() {
        let mut ipam = Ipam::default();
        let blocks = [net("10.9.0.0/28")];
        let mut got = BTreeSet::new();
        for i in 0..14 {
            let ad = ipam
                .allocate(&att(&format!("c{i}")), None, &blocks, &BTreeSet::new())
                .unwrap();
            assert!(got.insert(ad), "{ad} twice");
        }
        assert!(!got.contains(&a("10.9.0.0")) && !got.contains(&a("10.9.0.15")));
        let e = ipam
            .allocate(&att("c14"), None, &blocks, &BTreeSet::new())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no free address in the node's blocks 10.9.0.0/28 (14 allocated, 0 held by other \
             endpoints, first and last of each block reserved)"
        );
        // The same attachment asking again gets what it has (a retried ADD), even when full.
        let again = ipam
            .allocate(&att("c3"), None, &blocks, &BTreeSet::new())
            .unwrap();
        assert_eq!(Some(again), ipam.of(&att("c3")).map(|x| x.address));
    }

    #[test]
    fn addresses_in_use_are_skipped_and_a_released_one_is_not_reused_at_once() {
        let mut ipam = Ipam::default();
        let blocks = [net("10.9.0.0/29"), net("10.9.0.64/29")];
        let in_use: BTreeSet<_> = [a("10.9.0.1")].into();
        let first = ipam.allocate(&att("x"), None, &blocks, &in_use).unwrap();
        assert_eq!(first, a("10.9.0.2"));
        assert_eq!(ipam.release(&att("x")), Some(first));
        assert_eq!(ipam.release(&att("x")), None);
        let next = ipam.allocate(&att("y"), None, &blocks, &in_use).unwrap();
        assert_eq!(next, a("10.9.0.3"));
        // To the first block's end, into the second, then round to the start, where the
        // released .2 is free again.
        for c in ["p", "q", "r", "s"] {
            ipam.allocate(&att(c), None, &blocks, &in_use).unwrap();
        }
        assert_eq!(ipam.of(&att("r")).unwrap().address, a("10.9.0.6"));
        assert_eq!(ipam.of(&att("s")).unwrap().address, a("10.9.0.65"));
        for c in ["t", "u", "v", "w", "x2"] {
            ipam.allocate(&att(c), None, &blocks, &in_use).unwrap();
        }
        assert_eq!(ipam.of(&att("x2")).unwrap().address, a("10.9.0.70"));
        let wrapped = ipam.allocate(&att("y2"), None, &blocks, &in_use).unwrap();
        assert_eq!(wrapped, a("10.9.0.2"));
    }

    #[test]
    fn gc_keeps_the_valid_and_the_clis_allocations() {
        let mut ipam = Ipam::default();
        let blocks = [net("10.9.0.0/26")];
        let none = BTreeSet::new();
        for c in ["a", "b", "c"] {
            ipam.allocate(&att(c), Some(format!("ns/{c}")), &blocks, &none)
                .unwrap();
        }
        ipam.allocate(&Attachment::cli("veth9"), None, &blocks, &none)
            .unwrap();
        let valid: BTreeSet<_> = [att("b")].into();
        let gone: Vec<String> = ipam
            .collect(&valid)
            .into_iter()
            .map(|g| g.owner.container_id)
            .collect();
        assert_eq!(gone, ["a", "c"]);
        let left: Vec<String> = ipam
            .allocations
            .iter()
            .map(|g| g.owner.to_string())
            .collect();
        assert_eq!(left, ["b/eth0", "ipipd-endpoint-add/veth9"]);
    }

    #[test]
    fn allocations_persist() {
        let dir = std::env::temp_dir().join(format!("ipipd-ipam-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ipam = Ipam::default();
        ipam.allocate(
            &att("c0"),
            Some("default/web".into()),
            &[net("10.9.0.0/26")],
            &BTreeSet::new(),
        )
        .unwrap();
        ipam.save(&dir).unwrap();
        assert_eq!(Ipam::load(&dir).unwrap(), ipam);
        std::fs::write(Ipam::path(&dir), "{").unwrap();
        assert!(Ipam::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
