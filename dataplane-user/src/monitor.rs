//! `ipipd monitor`: one line per packet decision, from the programs' ring buffer. The client
//! asks the daemon (control socket) to turn the programs' monitor on and keeps that connection
//! open; when it goes, however it goes, the daemon turns the monitor off again.

use std::{io::Write as _, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData, RingBuf};
use dataplane_common::{Event, Hook, Reason, Tuple, map_names};
use serde::Serialize;
use tokio::io::{Interest, unix::AsyncFd};

use crate::control::{Client, Request};

pub struct Options {
    pub drops_only: bool,
    /// Only events whose outer or inner source or destination is this address.
    pub endpoint: Option<Ipv4Addr>,
    pub json: bool,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

#[derive(Debug, Serialize)]
pub struct Line {
    pub interface: String,
    pub hook: &'static str,
    pub direction: &'static str,
    pub verdict: &'static str,
    pub reason: &'static str,
    pub len: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer: Option<Flow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner: Option<Flow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<String>,
    /// The pod behind the interface (`namespace/name`), when its CNI ADD named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The pods' names by host-side interface, from the node's runtime changes; read again
/// (at most once a second) when an interface not seen before shows up.
struct Pods {
    state_dir: std::path::PathBuf,
    by_interface: std::collections::HashMap<String, Option<String>>,
    read_at: Option<std::time::Instant>,
}

impl Pods {
    fn new(state_dir: &Path) -> Self {
        Pods {
            state_dir: state_dir.to_path_buf(),
            by_interface: Default::default(),
            read_at: None,
        }
    }

    fn of(&mut self, interface: &str) -> Option<String> {
        if let Some(p) = self.by_interface.get(interface) {
            return p.clone();
        }
        if self
            .read_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.read_at = Some(std::time::Instant::now());
            if let Ok(rt) = crate::desired::RuntimeChanges::load(&self.state_dir) {
                for e in rt.endpoints_added {
                    self.by_interface.insert(e.interface, e.pod);
                }
            }
        }
        self.by_interface.get(interface).cloned().flatten()
    }
}

#[derive(Debug, Serialize)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
}

fn flow(t: &Tuple) -> Option<Flow> {
    if t.valid == 0 {
        return None;
    }
    let ports = t.proto == 6 || t.proto == 17;
    Some(Flow {
        src: Ipv4Addr::from(t.src),
        dst: Ipv4Addr::from(t.dst),
        proto: t.proto,
        sport: ports.then(|| u16::from_be_bytes(t.sport)),
        dport: ports.then(|| u16::from_be_bytes(t.dport)),
    })
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            1 => "icmp".to_string(),
            4 => "ipip".to_string(),
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            p => format!("proto {p}"),
        };
        match (self.sport, self.dport) {
            (Some(s), Some(d)) => write!(f, "{}:{s} -> {}:{d} {proto}", self.src, self.dst),
            _ => write!(f, "{} -> {} {proto}", self.src, self.dst),
        }
    }
}

fn line(ev: &Event) -> Line {
    let hook = Hook::from_u8(ev.hook);
    let reason = Reason::from_u8(ev.reason);
    let reason_name = reason.map_or("?", Reason::name);
    Line {
        interface: crate::inspect::ifname(ev.ifindex),
        hook: hook.map_or("?", Hook::name),
        direction: match hook {
            Some(Hook::FromPod) => "from pod",
            Some(Hook::FromUplink | Hook::XdpUplink) => "from network",
            Some(Hook::ToTunnel) => "into tunnel",
            None => "?",
        },
        verdict: reason.map_or("?", Reason::verdict),
        reason: reason_name,
        len: ev.len,
        outer: flow(&ev.outer),
        inner: flow(&ev.inner),
        ethertype: (ev.ethertype != [0x08, 0x00])
            .then(|| format!("0x{:02x}{:02x}", ev.ethertype[0], ev.ethertype[1])),
        pod: None,
    }
}

fn involves(ev: &Event, endpoint: Option<Ipv4Addr>) -> bool {
    let Some(ip) = endpoint else {
        return true;
    };
    let o = ip.octets();
    [&ev.outer, &ev.inner]
        .iter()
        .any(|t| t.valid != 0 && (t.src == o || t.dst == o))
}

/// The text form of one decision.
fn text(l: &Line) -> String {
    let mut text = format!(
        "{:<15} {:<11} {:<12} {:<7} {:<24} len {:<5}",
        l.interface, l.hook, l.direction, l.verdict, l.reason, l.len
    );
    if let Some(o) = &l.outer {
        text += &format!(" {o}");
    }
    if let Some(i) = &l.inner {
        text += &format!(" [inner {i}]");
    }
    if let Some(e) = &l.ethertype {
        text += &format!(" ethertype {e}");
    }
    if let Some(p) = &l.pod {
        text += &format!(" pod {p}");
    }
    text
}

pub async fn run(state_dir: &Path, pin_dir: &Path, opts: &Options) -> Result<()> {
    let path = pin_dir.join(map_names::EVENTS);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is ipipd running with this pin_dir?)",
            path.display()
        )
    })?;
    let mut ring: RingBuf<MapData> = RingBuf::try_from(Map::RingBuf(data))?;
    // What an earlier client left unread is not this session's.
    while ring.next().is_some() {}
    // SAFETY: the ring buffer owns its map's fd, open and the same for its life.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the ring buffer: {e}"))?;

    let mut client = Client::connect(state_dir).await?;
    client
        .call(&Request::Monitor {
            drops_only: opts.drops_only,
        })
        .await?;
    if !opts.json {
        eprintln!(
            "monitoring {} (Ctrl-C to stop)",
            if opts.drops_only {
                "drops"
            } else {
                "every decision"
            }
        );
    }

    let mut pods = Pods::new(state_dir);
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut seen = 0u64;
    loop {
        let mut guard = tokio::select! {
            g = ring.readable_mut() => g?,
            () = client.closed() => bail!("the daemon closed the monitor connection (did ipipd stop?)"),
            () = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => return Ok(()),
        };
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the programs write whole `Event`s; read_unaligned copes with alignment.
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if !involves(&ev, opts.endpoint) {
                continue;
            }
            let mut l = line(&ev);
            l.pod = pods.of(&l.interface);
            if opts.json {
                writeln!(out, "{}", serde_json::to_string(&l)?)?;
            } else {
                writeln!(out, "{}", text(&l))?;
            }
            seen += 1;
            if opts.count.is_some_and(|c| seen >= c) {
                out.flush()?;
                return Ok(());
            }
        }
        out.flush()?;
        guard.clear_ready();
    }
}
