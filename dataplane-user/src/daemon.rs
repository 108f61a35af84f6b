//! `ipipd run`: the event loop. One thread, poll(2) over a signalfd (SIGHUP, SIGTERM, SIGINT),
//! a netlink socket with link events, the control socket, and the connections of `ipipd
//! monitor` clients (the programs emit events while one is connected). Every change goes through
//! [`Dataplane::reconcile`]; /metrics, /healthz and /readyz are served on a thread of their own
//! (see [`crate::metrics`]).

use std::{
    io::{BufRead, BufReader, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            fs::PermissionsExt,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
};

use dataplane_common::MonitorMode;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    dataplane::Dataplane,
    metrics::{Health, SharedHealth},
    netlink::{LinkEvent, Netlink},
    state::{Change, RuntimeChanges},
};

pub const SOCKET: &str = "ipipd.sock";

/// A control request that is not a change: it keeps its connection open.
#[derive(Debug, Serialize, Deserialize)]
pub enum Control {
    /// `ipipd monitor`: emit events while this connection is open.
    Monitor { drops_only: bool },
}

/// The answer to a control request.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// How often, without any event, the loop re-reads the peers' next hops (milliseconds).
/// Neighbour and route events trigger the same check at once.
const NEXT_HOP_RECHECK_MS: i32 = 5_000;

/// The state directory of a node: runtime changes, the control socket, netlink filter records.
pub fn default_state_dir(name: &str) -> PathBuf {
    PathBuf::from("/var/lib/ipipd").join(name)
}

/// Blocks SIGHUP, SIGTERM and SIGINT in this thread (and the threads it spawns from now on);
/// returns the set, for the signalfd.
fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: plain signal-mask calls on a zeroed sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("blocking signals: {}", std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

fn signalfd() -> Result<OwnedFd> {
    let set = block_signals()?;
    // SAFETY: a valid sigset.
    unsafe {
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            bail!("signalfd: {}", std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn read_signal(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: zeroed siginfo buffer of the right size.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        )
    };
    (n == std::mem::size_of::<libc::signalfd_siginfo>() as isize).then_some(info.ssi_signo as i32)
}

/// Only root may change the node.
fn peer_is_root(stream: &std::os::unix::net::UnixStream) -> bool {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd and buffer.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    rc == 0 && cred.uid == 0
}

pub struct Daemon {
    config_path: PathBuf,
    file: Config,
    runtime: RuntimeChanges,
    dp: Dataplane,
    health: SharedHealth,
    /// Connected `ipipd monitor` clients, and whether each wants drops only.
    monitors: Vec<(UnixStream, bool)>,
}

impl Daemon {
    /// Validates everything, then brings the data plane up (rolling back on failure).
    pub fn start(
        config_path: &Path,
        state_dir: &Path,
        metrics: Option<std::net::SocketAddr>,
    ) -> Result<Self> {
        let file = Config::load(config_path)?;
        // Served from before the bring-up: /healthz answers at once, /readyz says not ready.
        let health = SharedHealth::new(std::sync::Mutex::new(Health {
            waiting_for: "starting".into(),
            ..Default::default()
        }));
        // The signals the loop takes through its signalfd are blocked from here on: a thread
        // spawned later (metrics) inherits the mask, so a SIGTERM is never delivered to it
        // (whose default action would end the process without a teardown). One arriving
        // during the bring-up waits for the loop, which then tears down.
        block_signals()?;
        if let Some(addr) = metrics {
            crate::metrics::serve(addr, file.node.pin_dir.clone(), health.clone())?;
        }
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let runtime = RuntimeChanges::load(state_dir)?;
        let desired = runtime.apply(&file).map_err(|e| {
            anyhow!(
                "{}: the runtime changes no longer fit the file: {e}",
                state_dir.display()
            )
        })?;
        let dp = Dataplane::start(&desired, state_dir)?;
        log::info!(
            "node {} up: uplink {} (mtu {}), {} endpoints live, {} pending, {} peers",
            file.node.name,
            dp.uplink.name,
            dp.mtu,
            dp.plan.endpoints.len(),
            dp.plan.pending.len(),
            desired.peers.len()
        );
        Ok(Daemon {
            config_path: config_path.to_path_buf(),
            file,
            runtime,
            dp,
            health,
            monitors: Vec::new(),
        })
    }

    /// What /readyz and /metrics report, after every change.
    fn publish(&self) {
        let mut h = self.dp.health(&self.file);
        h.monitors = self.monitors.len();
        if let Ok(mut shared) = self.health.lock() {
            *shared = h;
        }
    }

    /// The programs' monitor mode for the connected clients: all decisions if one wants them.
    fn update_monitor(&mut self) {
        let mode = if self.monitors.is_empty() {
            MonitorMode::Off
        } else if self.monitors.iter().any(|(_, drops)| !drops) {
            MonitorMode::All
        } else {
            MonitorMode::Drops
        };
        match self.dp.set_monitor(mode) {
            Ok(()) => log::info!("monitor {mode:?} ({} client(s))", self.monitors.len()),
            Err(e) => log::error!("setting the monitor mode: {e:#}"),
        }
        self.publish();
    }

    fn desired(&self) -> Result<Config> {
        self.runtime.apply(&self.file)
    }

    /// The one way a desired state is applied: the data plane reconciled, then what /readyz and
    /// /metrics say updated, whether or not the reconcile went through.
    fn reconcile(&mut self, desired: &Config) -> Result<()> {
        let applied = self.dp.reconcile(desired);
        self.publish();
        applied
    }

    /// Runs until SIGTERM or SIGINT, then tears the data plane down.
    pub fn run(mut self) -> Result<()> {
        let sig = signalfd()?;
        let mut events = Netlink::link_events()?;
        let sock_path = self.dp.state_dir.join(SOCKET);
        let _ = std::fs::remove_file(&sock_path);
        let listener = UnixListener::bind(&sock_path)
            .with_context(|| format!("binding {}", sock_path.display()))?;
        std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        // Interfaces may have come and gone while we started: look once more.
        // (The bring-up wrote the config entry with the monitor off: nobody watches yet.)
        let d = self.desired()?;
        self.reconcile(&d)?;
        log::info!("ready; control socket {}", sock_path.display());

        let result = loop {
            let log_fd = self.dp.log_fd().unwrap_or(-1);
            let mut fds = vec![
                libc::pollfd {
                    fd: sig.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: events.raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                // A negative fd is ignored by poll(2).
                libc::pollfd {
                    fd: log_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Monitor clients: readable means gone (they send nothing after their request).
            fds.extend(self.monitors.iter().map(|(s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            // SAFETY: valid pollfd array.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as u64, NEXT_HOP_RECHECK_MS) };
            if n == 0 {
                self.refresh_next_hops();
                continue;
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(anyhow!("poll: {e}"));
            }
            if fds[0].revents != 0 {
                match read_signal(&sig) {
                    Some(libc::SIGHUP) => self.reload(),
                    Some(s) => {
                        log::info!("signal {s}: stopping");
                        break Ok(());
                    }
                    None => {}
                }
            }
            if fds[1].revents != 0 {
                match events.events() {
                    Ok(evs) if !evs.is_empty() => {
                        for ev in &evs {
                            match ev {
                                LinkEvent::New(l) => {
                                    log::debug!("link {} ({}) is up or changed", l.name, l.index)
                                }
                                LinkEvent::Del { index, name } => {
                                    log::info!("link {name} ({index}) is gone")
                                }
                                LinkEvent::Resync => {
                                    log::warn!("netlink dropped link events: resyncing")
                                }
                                LinkEvent::NextHops => {}
                            }
                        }
                        if evs.iter().all(|e| matches!(e, LinkEvent::NextHops)) {
                            self.refresh_next_hops();
                        } else if let Err(e) = self.desired().and_then(|d| self.reconcile(&d)) {
                            log::error!("reconciling after link events: {e:#}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => log::error!("reading link events: {e:#}"),
                }
            }
            if fds[3].revents != 0 {
                self.dp.flush_log();
            }
            let gone: Vec<usize> = fds[4..]
                .iter()
                .enumerate()
                .filter(|(_, f)| f.revents != 0)
                .map(|(i, _)| i)
                .collect();
            if !gone.is_empty() {
                for i in gone.into_iter().rev() {
                    self.monitors.remove(i);
                }
                self.update_monitor();
            }
            if fds[2].revents != 0 {
                while let Ok((stream, _)) = listener.accept() {
                    self.serve(stream);
                }
            }
        };
        self.monitors.clear();
        let _ = std::fs::remove_file(&sock_path);
        self.shutdown();
        result
    }

    /// Re-reads the peers' next hops from the kernel; reconciles when one changed.
    fn refresh_next_hops(&mut self) {
        let Ok(d) = self.desired() else { return };
        if self.dp.next_hops_changed(&d) {
            log::info!("a peer's next hop changed: updating the routes");
            if let Err(e) = self.reconcile(&d) {
                log::error!("reconciling after a next-hop change: {e:#}");
            }
        }
    }

    /// SIGHUP: re-read the file; replace only its part; an invalid file changes nothing.
    fn reload(&mut self) {
        let file = match Config::load(&self.config_path) {
            Ok(f) => f,
            Err(e) => {
                log::error!("SIGHUP: config rejected, keeping the running state: {e:#}");
                return;
            }
        };
        if file.node != self.file.node {
            // (The rest of the file may change; [node] is what the programs were loaded with.)
            log::error!("SIGHUP: [node] changed; that needs a restart. Keeping the running state.");
            return;
        }
        let desired = match self.runtime.apply(&file) {
            Ok(d) => d,
            Err(e) => {
                log::error!(
                    "SIGHUP: config rejected with the runtime changes, keeping the running state: {e:#}"
                );
                return;
            }
        };
        match self.reconcile(&desired) {
            Ok(()) => {
                self.file = file;
                log::info!("SIGHUP: config reloaded");
            }
            Err(e) => log::error!("SIGHUP: applying the new config: {e:#}"),
        }
    }

    fn serve(&mut self, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let mut monitor = None;
        let reply = if !peer_is_root(&stream) {
            Reply {
                ok: false,
                error: "only root may change the node".into(),
            }
        } else {
            let mut line = String::new();
            match BufReader::new(&stream).read_line(&mut line) {
                Ok(_) if let Ok(Control::Monitor { drops_only }) = serde_json::from_str(&line) => {
                    monitor = Some(drops_only);
                    Reply {
                        ok: true,
                        error: String::new(),
                    }
                }
                Ok(_) => match serde_json::from_str::<Change>(&line) {
                    Ok(change) => match self.change(&change) {
                        Ok(()) => Reply {
                            ok: true,
                            error: String::new(),
                        },
                        Err(e) => Reply {
                            ok: false,
                            error: format!("{e:#}"),
                        },
                    },
                    Err(e) => Reply {
                        ok: false,
                        error: format!("bad request: {e}"),
                    },
                },
                Err(e) => Reply {
                    ok: false,
                    error: format!("reading the request: {e}"),
                },
            }
        };
        let mut s = &stream;
        let _ = writeln!(s, "{}", serde_json::to_string(&reply).unwrap_or_default());
        if let Some(drops_only) = monitor {
            self.monitors.push((stream, drops_only));
            self.update_monitor();
        }
    }

    /// A runtime change: validated whole with the file, applied, then persisted.
    fn change(&mut self, change: &Change) -> Result<()> {
        let rt = self.runtime.with(&self.file, change)?;
        let desired = rt.apply(&self.file)?;
        self.reconcile(&desired)?;
        rt.save(&self.dp.state_dir)?;
        self.runtime = rt;
        log::info!("applied {change:?}");
        Ok(())
    }

    /// The separate teardown step.
    fn shutdown(mut self) {
        self.dp.teardown();
    }
}

/// Sends one change to a running daemon and returns its answer.
pub fn request(state_dir: &Path, change: &Change) -> Result<()> {
    let path = state_dir.join(SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to {} (is ipipd running?)", path.display()))?;
    writeln!(stream, "{}", serde_json::to_string(change)?)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let reply: Reply =
        serde_json::from_str(&line).with_context(|| format!("bad reply {line:?}"))?;
    if reply.ok {
        Ok(())
    } else {
        bail!("{}", reply.error)
    }
}
