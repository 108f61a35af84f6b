//! Named network namespaces (`/run/netns/<name>`, what `ip netns` and `ip -n` open) made and
//! removed in this process, as a container runtime makes a pod's: a thread unshares its
//! network namespace and bind-mounts it onto the name, the way `ip netns add` does. Tests and
//! the bench's pod churn make hundreds of them; an `ip` process per step cost more CPU than the
//! CNI plugin they measure.

use std::{
    ffi::{CStr, CString},
    io::Error,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Where `ip netns` keeps the names.
const RUN_DIR: &str = "/run/netns";

fn path_of(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).context("a path with a NUL byte")
}

/// `rc` of a libc call as a Result, with `what` and errno.
fn ok(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<()> {
    if rc != 0 {
        bail!("{}: {}", what(), Error::last_os_error());
    }
    Ok(())
}

/// mount(2) without a file system type or data: a bind (`from` onto `to`) or a propagation
/// change of `to` (`from` empty).
fn mount(from: &CStr, to: &CStr, flags: libc::c_ulong) -> libc::c_int {
    // SAFETY: valid C strings; no data argument.
    unsafe {
        libc::mount(
            from.as_ptr(),
            to.as_ptr(),
            c"none".as_ptr(),
            flags,
            std::ptr::null(),
        )
    }
}

/// [`RUN_DIR`] as `ip netns add` leaves it (and, as it does, checked at every add): a shared
/// mount point (a bind mount of itself when it is none), so that names mounted later show in
/// mount namespaces made after (a container's).
fn prepare_run_dir() -> Result<()> {
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let dir = c_path(Path::new(RUN_DIR))?;
    let shared = || mount(c"", &dir, libc::MS_SHARED | libc::MS_REC);
    if shared() == 0 {
        return Ok(());
    }
    if Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        bail!("making {RUN_DIR} shared: {}", Error::last_os_error());
    }
    // Not a mount point yet: bind it onto itself, then share it.
    ok(mount(&dir, &dir, libc::MS_BIND | libc::MS_REC), || {
        format!("binding {RUN_DIR} onto itself")
    })?;
    ok(shared(), || format!("making {RUN_DIR} shared"))
}

/// Makes the named namespace `name`, with lo up and IPv6 off. On error nothing is left.
pub fn add(name: &str) -> Result<()> {
    prepare_run_dir()?;
    let path = path_of(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // SAFETY: this thread alone moves to a new network namespace; it ends here.
            ok(unsafe { libc::unshare(libc::CLONE_NEWNET) }, || {
                "unshare(CLONE_NEWNET)".into()
            })?;
            ok(
                mount(c"/proc/thread-self/ns/net", &c_path(&path)?, libc::MS_BIND),
                || format!("binding the namespace onto {}", path.display()),
            )?;
            set_lo_up()?;
            // The thread's own namespace's sysctls (/proc/sys/net is the calling task's).
            for scope in ["all", "default"] {
                let f = format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6");
                std::fs::write(&f, "1").with_context(|| format!("writing {f}"))?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow!("the thread making namespace {name} panicked"))?
    });
    if let Err(e) = made {
        delete(name);
        return Err(e.context(format!("making network namespace {name}")));
    }
    Ok(())
}

/// `struct ifreq` with its flags member (`SIOCGIFFLAGS` / `SIOCSIFFLAGS`).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Sets lo of the calling thread's namespace up.
fn set_lo_up() -> Result<()> {
    // SAFETY: a plain socket call; the fd is owned (and closed) from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _rest: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: `req` is a valid ifreq for both requests.
    ok(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) },
        || "reading lo's flags".into(),
    )?;
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: as above.
    ok(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) },
        || "setting lo up".into(),
    )
}

/// SIGKILL to every process in the named namespace `name` (`ip netns pids`, then `kill -9`):
/// one left there would keep it alive.
pub fn kill_processes_in(name: &str) {
    let Ok(ns) = std::fs::metadata(path_of(name)) else {
        return;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(m) = std::fs::metadata(e.path().join("ns/net")) else {
            continue;
        };
        if (m.dev(), m.ino()) == (ns.dev(), ns.ino()) {
            // SAFETY: a plain kill call.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes the name `name` (`ip netns del`): the mount detached, the file removed. The
/// namespace goes with its last user.
pub fn delete(name: &str) {
    let path = path_of(name);
    if let Ok(p) = c_path(&path) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn ip(args: &[&str]) -> String {
        let out = crate::check(Command::new("ip").args(args)).expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_namespace_made_here_is_what_ip_netns_add_makes_and_goes_whole() {
        let name = format!("ipipd-nstest-{}-{}", std::process::id(), crate::seq());
        add(&name).expect("making the namespace");
        let names = ip(&["netns", "list"]);
        assert!(
            names
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&name)),
            "{names}"
        );
        let lo = ip(&["-n", &name, "-o", "link", "show", "lo"]);
        assert!(lo.contains("<LOOPBACK,UP,LOWER_UP>"), "{lo}");
        assert_eq!(ip(&["-n", &name, "-o", "link", "show"]).lines().count(), 1);
        for scope in ["all", "default"] {
            let key = format!("net.ipv6.conf.{scope}.disable_ipv6");
            let v = ip(&["netns", "exec", &name, "sysctl", "-n", &key]);
            assert_eq!(v.trim(), "1", "{key}");
        }
        // IPv6 off: not even lo's ::1.
        assert_eq!(ip(&["-n", &name, "-6", "addr", "show"]).trim(), "");
        // A process in it is ended with it.
        let mut sleeper = Command::new("ip")
            .args(["netns", "exec", &name, "sleep", "60"])
            .spawn()
            .expect("sleep in the namespace");
        crate::eventually_within(
            "the sleeper in the namespace",
            std::time::Duration::from_secs(10),
            || ip(&["netns", "pids", &name]).trim() == sleeper.id().to_string(),
        );
        kill_processes_in(&name);
        let status = sleeper.wait().expect("waiting for the sleeper");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        delete(&name);
        assert!(!path_of(&name).exists());
        assert!(
            !ip(&["netns", "list"])
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&name))
        );
    }
}
