//! Helpers for ipipd's privileged tests: network namespaces the test creates and always removes.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

pub mod calico;
pub mod cluster;
pub mod cni;
pub mod counters;
pub mod dns;
pub mod etcd;
pub mod netns;
pub mod services;
pub mod traffic;

/// Polls (bounded by `within`) until `f` holds; the bound is a deadline for failure, not a
/// measurement.
pub fn eventually_within(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// ipipd's default --metrics-addr: every node namespace has its own loopback.
pub const METRICS: &str = "127.0.0.1:9097";

/// (status code, body) of a GET of ipipd's metrics server inside `ns`; None while nothing
/// listens.
pub fn metrics_get(ns: &NetNs, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let path = path.to_string();
    ns.enter(move || -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(METRICS).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((code, body))
    })
    .expect("entering the namespace")
}

/// A number unique in this process, for file and namespace names.
pub fn seq() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Whether a privileged test (namespaces, BPF) can run here. As root it can. Without root it
/// fails loudly under CI (`CI=true`), where every privileged test must run; elsewhere it says
/// it is skipped, so that `cargo test` passes as any user with the unit tests.
#[must_use]
pub fn require_root() -> bool {
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if ci {
        panic!(
            "this test needs root (network namespaces, BPF) and CI runs every test: run it with `cargo xtask test` as root"
        );
    }
    eprintln!(
        "skipped: this test needs root (network namespaces, BPF); run `cargo xtask test` as root"
    );
    false
}

/// The ipipd of release v0.1.0 (`IPIPD_V010_BIN`, which `cargo xtask test` and `cargo xtask vm`
/// build from its commit), for the upgrade test. Missing: a loud failure under CI, a printed
/// skip elsewhere.
pub fn v0_1_0_binary() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("IPIPD_V010_BIN").map(std::path::PathBuf::from)
        && p.is_file()
    {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let msg = "no ipipd v0.1.0 (IPIPD_V010_BIN): `cargo xtask test` builds it from its commit";
    if ci {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

/// Whether the running kernel attaches tc programs with TCX (6.6+); before it, ipipd uses netlink
/// clsact filters, which have no bpf_link to pin.
pub fn kernel_has_tcx() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// Runs a command to its end, or kills it after `within` (None then): a bound in the test's
/// own hands, not an external `timeout` (the VM has busybox's, which runs its own applets,
/// `ip` among them, before the real tools).
pub fn output_within(cmd: &mut Command, within: std::time::Duration) -> Result<Option<Output>> {
    use std::io::Read as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    // The pipes are drained alongside, so that a chatty child never blocks on them.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let readers = (
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            b
        }),
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = err.read_to_end(&mut b);
            b
        }),
    );
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (stdout, stderr) = (
        readers.0.join().unwrap_or_default(),
        readers.1.join().unwrap_or_default(),
    );
    Ok(status.map(|status| Output {
        status,
        stdout,
        stderr,
    }))
}

/// Runs a command; a non-zero exit is an error with its stderr.
pub fn check(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

/// A network namespace named uniquely for this process, removed (with every device in it) on
/// drop by its owner.
pub struct NetNs {
    pub name: String,
    on_drop: OnDrop,
}

/// What dropping a [`NetNs`] does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// Nothing: someone else removes it.
    Keep,
    /// The name removed (a sandbox: nothing runs in it).
    Remove,
    /// Every process in it ended first (one left would keep it alive), then the name removed.
    EndProcessesAndRemove,
}

impl NetNs {
    /// Creates `ipipd-<tag>-<pid>-<n>`, brings lo up and turns IPv6 off (so router solicitations
    /// and DAD never move a counter). In this process, as a container runtime makes a pod's
    /// namespace (see [`netns`]): no `ip` or `sysctl` process per namespace.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("ipipd-{tag}-{}-{}", std::process::id(), seq());
        netns::add(&name)?;
        Ok(NetNs {
            name,
            on_drop: OnDrop::EndProcessesAndRemove,
        })
    }

    /// A pod sandbox's namespace, as [`NetNs::new`] makes it, in which the caller starts no
    /// process: its removal is a runtime's (the name unmounted and removed), without the scan
    /// of every process's namespace that [`NetNs::new`]'s makes (`ip netns pids`: at the
    /// churn's 100 pods a second, ~4 s of CPU a minute).
    pub fn sandbox(tag: &str) -> Result<Self> {
        let mut ns = NetNs::new(tag)?;
        ns.on_drop = OnDrop::Remove;
        Ok(ns)
    }

    /// A namespace someone else made and removes (`/run/netns/<name>`: a container's).
    pub fn existing(name: &str) -> NetNs {
        NetNs {
            name: name.to_string(),
            on_drop: OnDrop::Keep,
        }
    }

    /// A handle to the same namespace that does not remove it.
    pub fn view(&self) -> NetNs {
        NetNs {
            name: self.name.clone(),
            on_drop: OnDrop::Keep,
        }
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &str) -> Result<String> {
        let out = check(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(args.split_whitespace()),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A shell script run inside the namespace (`ip netns exec`, so /sys and sysctl are its own).
    pub fn sh(&self, script: &str) -> Result<String> {
        let out =
            check(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-ec", script]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// IPIP devices in use here: any but the fallback `tunl0` that a loaded ipip.ko puts in every
    /// namespace, and that one too once it is up.
    pub fn ipip_devices_in_use(&self) -> Result<Vec<String>> {
        Ok(self
            .ip("-o link show type ipip")?
            .lines()
            .filter(|l| !l.contains(" tunl0@NONE: ") || l.contains(",UP"))
            .map(str::to_string)
            .collect())
    }

    /// Runs `f` on a thread that has entered the namespace: sockets, netlink and ifindexes it
    /// uses are the namespace's.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this thread only, with a valid namespace fd.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns({path}): {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }

    /// The ifindex of a device in the namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let dev = std::ffi::CString::new(dev)?;
        let idx = self.enter(|| {
            // SAFETY: valid C string.
            unsafe { libc::if_nametoindex(dev.as_ptr()) }
        })?;
        if idx == 0 {
            bail!("no device {dev:?} in {}", self.name);
        }
        Ok(idx)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.on_drop == OnDrop::Keep {
            return;
        }
        if self.on_drop == OnDrop::EndProcessesAndRemove {
            netns::kill_processes_in(&self.name);
        }
        netns::delete(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sandbox is removed as a runtime removes a pod's namespace, and that is enough for the
    /// namespace to go, with its devices: the other end of a veth in it goes too.
    #[test]
    fn a_sandbox_goes_with_its_handle_and_its_devices_with_it() {
        let other = NetNs::new("sbpeer").expect("a namespace");
        let sandbox = NetNs::sandbox("sb").expect("a sandbox");
        other
            .ip(&format!(
                "link add sbv0 type veth peer name sbv1 netns {}",
                sandbox.name
            ))
            .expect("a veth across the two");
        assert!(sandbox.ip("-o link show sbv1").is_ok());
        let name = sandbox.name.clone();
        drop(sandbox);
        assert!(!std::path::Path::new("/run/netns").join(&name).exists());
        eventually_within(
            "the sandbox's veth end gone, and with it the other end",
            std::time::Duration::from_secs(10),
            || {
                other
                    .ip("-o link show type veth")
                    .is_ok_and(|l| l.trim().is_empty())
            },
        );
    }
}
