//! The few bpf(2) commands aya 0.14 does not expose for links: find a link by id or by the
//! program it runs, and pin it. Pinned TCX and XDP links outlive the daemon's file descriptors.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

const BPF_OBJ_PIN: i64 = 6;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;
const BPF_LINK_GET_NEXT_ID: i64 = 31;

fn bpf(cmd: i64, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a zero-initialised 128-byte union large enough for these commands.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A new fd for the link with this id.
pub fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = id as u64;
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The next link id after `start`, or None at the end.
fn next_link_id(start: u32) -> io::Result<Option<u32>> {
    let mut attr = [0u64; 16];
    attr[0] = start as u64;
    match bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
        Ok(_) => Ok(Some((attr[0] >> 32) as u32)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// (link id, program id, ifindex) of a TCX or XDP link.
pub fn link_info(fd: &OwnedFd) -> io::Result<(u32, u32, u32)> {
    // struct bpf_link_info: type, id, prog_id, (pad), union { ... tcx/xdp: { ifindex, ... } } at 16.
    let mut info = [0u8; 64];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let u = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().unwrap());
    Ok((u(4), u(8), u(16)))
}

/// The id of the link that runs `prog_id` on `ifindex`.
pub fn find_link(prog_id: u32, ifindex: u32) -> Result<u32> {
    let mut id = 0;
    while let Some(next) = next_link_id(id)? {
        id = next;
        let Ok(fd) = link_fd_by_id(id) else { continue };
        if let Ok((_, p, i)) = link_info(&fd)
            && p == prog_id
            && i == ifindex
        {
            return Ok(id);
        }
    }
    bail!("no link of program {prog_id} on ifindex {ifindex}")
}

/// Pins the link with this id at `path` (on a bpffs; bpffs refuses names with dots).
pub fn pin_link(id: u32, path: &Path) -> Result<()> {
    let fd = link_fd_by_id(id).with_context(|| format!("link {id}"))?;
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u32 as u64;
    bpf(BPF_OBJ_PIN, &mut attr)
        .with_context(|| format!("pinning link {id} at {}", path.display()))?;
    Ok(())
}

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
