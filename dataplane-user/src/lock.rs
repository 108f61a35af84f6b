//! One daemon per node. Before `run` touches anything it takes three exclusive locks, held for
//! its life and released by the kernel when the process ends, however it ends:
//!
//! - the network namespace's: an abstract unix socket (`@ipipd`), bound and listening. Abstract
//!   names live in the network namespace, so two daemons never share an uplink, a tunnel
//!   device, the routes and `ip_forward`, whatever their names;
//! - the state directory's: `flock` on `<state_dir>/lock`;
//! - the pin directory's: `flock` on the directory itself (bpffs holds no regular files).
//!
//! A second daemon refuses with the holder's PID (the socket's peer credentials, or the lock's
//! line in `/proc/locks`) and leaves the first untouched. A lock whose holder died is simply
//! free: the next daemon takes it (and then adopts or replaces what the dead one left).

use std::{
    fs::File,
    os::{
        fd::AsRawFd as _,
        linux::net::SocketAddrExt as _,
        unix::{
            fs::MetadataExt as _,
            net::{SocketAddr, UnixListener, UnixStream},
        },
    },
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// The abstract socket name that marks a network namespace as taken.
const NAMESPACE_LOCK: &[u8] = b"ipipd";

/// The locks of a running daemon; dropping it releases them.
pub struct NodeLock {
    _namespace: UnixListener,
    _state: File,
    _pins: File,
}

impl NodeLock {
    /// Takes the three locks, in this order, or says who holds the first one that is taken.
    pub fn take(state_dir: &Path, pin_dir: &Path) -> Result<NodeLock> {
        let namespace = namespace_lock()?;
        let state_path = state_dir.join("lock");
        let state = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&state_path)
            .with_context(|| format!("opening {}", state_path.display()))?;
        flock(&state, || {
            format!("the state directory {}", state_dir.display())
        })?;
        let pins = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
        flock(&pins, || format!("the pin directory {}", pin_dir.display()))?;
        Ok(NodeLock {
            _namespace: namespace,
            _state: state,
            _pins: pins,
        })
    }
}

impl NodeLock {
    /// Locks the pin directory again, after it was removed and created anew under the daemon.
    pub fn relock_pins(&mut self, pin_dir: &Path) -> Result<()> {
        let pins = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
        flock(&pins, || format!("the pin directory {}", pin_dir.display()))?;
        self._pins = pins;
        Ok(())
    }
}

fn namespace_lock() -> Result<UnixListener> {
    let addr = SocketAddr::from_abstract_name(NAMESPACE_LOCK)?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let holder = UnixStream::connect_addr(&addr)
                .ok()
                .and_then(|s| peer_pid(&s));
            bail!(
                "another ipipd runs in this network namespace{}: one daemon per node",
                holder.map_or(String::new(), |p| format!(" (pid {p})"))
            )
        }
        Err(e) => Err(e).context("binding the namespace's lock (@ipipd)"),
    }
}

fn peer_pid(s: &UnixStream) -> Option<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
}

/// An exclusive, non-blocking flock on `f`; when another process holds it, an error naming
/// `what` and the holder.
fn flock(f: &File, what: impl Fn() -> String) -> Result<()> {
    // SAFETY: a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(e).with_context(|| format!("locking {}", what()));
    }
    let holder = f
        .metadata()
        .ok()
        .and_then(|m| flock_holder(m.dev(), m.ino()));
    bail!(
        "{} is in use by another ipipd{}: one daemon per node",
        what(),
        holder.map_or(String::new(), |p| format!(" (pid {p})"))
    )
}

/// The PID holding a FLOCK on the inode (`dev`, `ino`), from `/proc/locks`, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF` (device as hex major:minor).
fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    std::fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .filter(|l| l.contains("FLOCK"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = f.iter().position(|x| *x == "FLOCK")?;
            let pid = f.get(at + 3)?.parse().ok()?;
            (*f.get(at + 4)? == want).then_some(pid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second taker of a file's lock is refused and told who holds it (this process).
    #[test]
    fn a_held_flock_names_its_holder() {
        let dir = std::env::temp_dir().join(format!("ipipd-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let first = File::create(&path).unwrap();
        flock(&first, || "it".into()).unwrap();
        let second = File::open(&path).unwrap();
        let e = flock(&second, || "it".into()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "it is in use by another ipipd (pid {}): one daemon per node",
                std::process::id()
            )
        );
        drop(first);
        flock(&second, || "it".into()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
