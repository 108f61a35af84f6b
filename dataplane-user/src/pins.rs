//! The pin directory on bpffs: mounting bpffs when it is missing, removing what ipipd pinned,
//! and the state directory's atomic file writes.

use std::{ffi::CString, io, path::Path};

use anyhow::{Context as _, Result, bail};

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

/// Writes `data` to `path` through a temporary file and a rename: a reader sees the old
/// contents or the new, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}
