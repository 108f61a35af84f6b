//! The pin directory on bpffs: mounting bpffs when it is missing, removing what ipipd pinned,
//! and the state directory's atomic file writes.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::{Interest, unix::AsyncFd};

/// The filesystem magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Whether `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is valid; c is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs at /sys/fs/bpf when it is not there.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    // Walk up to an existing ancestor and ask whether it is a bpffs.
    let mut p = pin_dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    if is_bpffs(&p) {
        return Ok(());
    }
    if !pin_dir.starts_with(root) {
        bail!(
            "node.pin_dir: {} is not on a bpffs (mount one there, or pin under /sys/fs/bpf)",
            pin_dir.display()
        );
    }
    std::fs::create_dir_all(root).ok();
    let src = CString::new("bpffs")?;
    let target = CString::new("/sys/fs/bpf")?;
    let fstype = CString::new("bpf")?;
    // SAFETY: valid C strings; plain mount(2).
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting bpffs at /sys/fs/bpf: {}",
            io::Error::last_os_error()
        );
    }
    log::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Removes the link and map pins under `pin_dir`, and the directory.
pub fn remove_pins(pin_dir: &Path) {
    clear_pins(pin_dir);
    let _ = std::fs::remove_dir(pin_dir);
}

/// Whether `pin_dir` holds any pin of ipipd's (links, or maps of any layout).
pub fn has_pins(pin_dir: &Path) -> bool {
    let ours = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("ipipd_"))
        })
    };
    let links = std::fs::read_dir(pin_dir.join("links")).is_ok_and(|mut rd| rd.next().is_some());
    links || ours(pin_dir)
}

/// Removes ipipd's pins from `pin_dir` (its links, then its maps), keeping the directory (a
/// running daemon holds its lock on it).
pub fn clear_pins(pin_dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(pin_dir.join("links")) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(pin_dir.join("links"));
    remove_previous(pin_dir);
    // Every map pin of ours, of this layout or an older one (`ipipd_<map>_v<N>`).
    if let Ok(rd) = std::fs::read_dir(pin_dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ipipd_") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Writes `data` to `path` through a temporary file and a rename: a reader sees the old
/// contents or the new, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

/// Watches the pin directory and its `links/` for removals (inotify), so that a pin deleted
/// under the running daemon is put back at once: a link's pin is its only reference, and the
/// kernel detaches the program when it goes.
pub struct PinWatch {
    fd: AsyncFd<OwnedFd>,
    pin_dir: PathBuf,
}

impl PinWatch {
    pub fn new(pin_dir: &Path) -> Result<Self> {
        // SAFETY: plain syscall; the fd is owned just below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            bail!("inotify_init1: {}", io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd is the watch's for its whole life, open and the same fd.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        let w = PinWatch {
            fd,
            pin_dir: pin_dir.to_path_buf(),
        };
        w.watch()?;
        Ok(w)
    }

    /// (Re)adds the watches: after a repair the directories may be new ones.
    pub fn watch(&self) -> Result<()> {
        let mask =
            libc::IN_DELETE | libc::IN_DELETE_SELF | libc::IN_MOVED_FROM | libc::IN_MOVE_SELF;
        for dir in [self.pin_dir.clone(), self.pin_dir.join("links")] {
            let c = CString::new(dir.as_os_str().as_bytes())?;
            // SAFETY: a valid fd and C string.
            if unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
                bail!("watching {}: {}", dir.display(), io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Waits until something under the pin directory is removed. The events are drained, not
    /// read one by one: what matters is to look at the pins again.
    pub async fn removed(&mut self) -> Result<()> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let mut buf = [0u8; 4096];
            let fd = guard.get_inner().as_raw_fd();
            // SAFETY: reading into a valid buffer of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(anyhow!("reading inotify events: {e}"));
            }
            guard.clear_ready();
        }
    }
}

/// Where [`set_aside_other_layouts`] moves the map pins this run cannot use.
pub const PREVIOUS: &str = "previous";

/// A map's shape as the kernel reports it: type, key size, value size, entries, flags.
type Shape = (u32, u32, u32, u32, u32);

/// The shapes the embedded object declares for ipipd's maps.
fn declared_shapes() -> Result<BTreeMap<String, Shape>> {
    let obj = aya_obj::Object::parse(crate::EBPF_OBJECT).context("parsing the embedded object")?;
    Ok(obj
        .maps
        .iter()
        .filter(|(n, _)| n.starts_with("ipipd_"))
        .map(|(n, m)| {
            (
                n.clone(),
                (
                    m.map_type(),
                    m.key_size(),
                    m.value_size(),
                    m.max_entries(),
                    m.map_flags(),
                ),
            )
        })
        .collect())
}

fn pinned_shape(path: &Path) -> Option<Shape> {
    let i = aya::maps::MapInfo::from_pin(path).ok()?;
    let t = i.map_type().ok()? as u32;
    Some((
        t,
        i.key_size(),
        i.value_size(),
        i.max_entries(),
        i.map_flags(),
    ))
}

/// What the pin directory holds of ipipd's maps, before this run loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No map pins: a first start (or one after a teardown).
    Nothing,
    /// Every map of this layout, of the shape this build declares: adopted as they are.
    SameLayout,
    /// Map pins of another layout (an older `_v<N>` in their names), or of this one in another
    /// shape: moved aside to `previous/`; this run builds new maps from the desired state.
    OtherLayout(Vec<String>),
}

/// Looks at the map pins in `pin_dir` and moves the ones this build cannot use to
/// `<pin_dir>/previous/` (bpffs renames in place: the programs of the running data plane keep
/// them until their links are updated, and [`remove_previous`] removes them after). A map of
/// this layout that is missing is created by the loader, empty.
pub fn set_aside_other_layouts(pin_dir: &Path) -> Result<Found> {
    let declared = declared_shapes()?;
    let mut ours = Vec::new();
    if let Ok(rd) = std::fs::read_dir(pin_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ipipd_") {
                ours.push(name);
            }
        }
    }
    if ours.is_empty() {
        return Ok(Found::Nothing);
    }
    let mut aside = Vec::new();
    for name in ours {
        let path = pin_dir.join(&name);
        // The kernel-flows map is sized when it is made (the node's conntrack limit): any size
        // is its shape, and it is kept across restarts whatever the limit says now.
        let sized = |s: Shape| match name == dataplane_common::map_names::KERNEL_FLOWS {
            true => (s.0, s.1, s.2, 0, s.4),
            false => s,
        };
        let fits = declared
            .get(&name)
            .is_some_and(|want| pinned_shape(&path).map(sized) == Some(sized(*want)));
        if fits {
            continue;
        }
        let prev = pin_dir.join(PREVIOUS);
        std::fs::create_dir_all(&prev).with_context(|| format!("creating {}", prev.display()))?;
        std::fs::rename(&path, prev.join(&name))
            .with_context(|| format!("moving {} aside", path.display()))?;
        aside.push(name);
    }
    Ok(if aside.is_empty() {
        Found::SameLayout
    } else {
        Found::OtherLayout(aside)
    })
}

/// Removes the pins [`set_aside_other_layouts`] moved aside (once no program uses them).
pub fn remove_previous(pin_dir: &Path) {
    let prev = pin_dir.join(PREVIOUS);
    if let Ok(rd) = std::fs::read_dir(&prev) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(prev);
}
