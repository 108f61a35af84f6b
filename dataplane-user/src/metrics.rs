//! `ipipd run --metrics-addr`: HTTP `/metrics` (OpenMetrics text, which Prometheus scrapes),
//! `/healthz` (the process is up) and `/readyz` (every configured interface attached and the
//! maps programmed; endpoints still waiting for their interface are listed, and do not hold it
//! back). One thread; each scrape reads the pinned maps, as `ipipd stats` does.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::inspect;

/// One attachment the config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub hook: &'static str,
    pub attached: bool,
}

/// What the daemon's loop last saw; the HTTP thread reads it.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The maps are programmed and every configured attachment is in place.
    pub ready: bool,
    /// Why not, while not ready.
    pub waiting_for: String,
    pub attachments: Vec<Attachment>,
    /// Endpoints whose interface does not exist yet: (address, interface).
    pub pending: Vec<(String, String)>,
    /// "tcx" or "netlink".
    pub attach_mode: &'static str,
    /// `ipipd monitor` clients connected.
    pub monitors: usize,
}

pub type SharedHealth = Arc<Mutex<Health>>;

/// Binds `addr` (so a taken port fails the start, before anything is attached) and serves it
/// on a thread for the life of the process.
pub fn serve(addr: SocketAddr, pin_dir: PathBuf, health: SharedHealth) -> Result<()> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("--metrics-addr {addr}: binding"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = handle(stream, &pin_dir, &health) {
                    log::debug!("metrics: {e:#}");
                }
            }
        })?;
    log::info!("metrics on http://{addr}/metrics (/healthz, /readyz)");
    Ok(())
}

fn handle(stream: TcpStream, pin_dir: &std::path::Path, health: &SharedHealth) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The rest of the head, up to the empty line (bounded).
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let h = health.lock().map(|h| h.clone()).unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => match metrics_text(pin_dir, &h) {
            Ok(text) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("{e:#}\n"),
            ),
        },
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => {
            let mut body = String::new();
            if h.ready {
                body += "ready\n";
            } else {
                let _ = writeln!(body, "not ready: {}", h.waiting_for);
            }
            for a in &h.attachments {
                let _ = writeln!(
                    body,
                    "{} {} {}",
                    a.interface,
                    a.hook,
                    if a.attached { "attached" } else { "missing" }
                );
            }
            for (addr, ifc) in &h.pending {
                let _ = writeln!(body, "pending endpoint {addr} (waiting for {ifc})");
            }
            let status = if h.ready {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "text/plain", body)
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let mut s = &stream;
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// A snapshot of everything /metrics reports, taken when the scrape comes in.
#[derive(Debug)]
struct Snapshot {
    counters: Vec<inspect::StatRow>,
    maps: Vec<(&'static str, u64, u64)>,
    health: Health,
    kernel: String,
}

fn metrics_text(pin_dir: &std::path::Path, health: &Health) -> Result<String> {
    let snap = Snapshot {
        counters: inspect::stats(pin_dir).unwrap_or_default(),
        maps: inspect::occupancy(pin_dir).unwrap_or_default(),
        health: health.clone(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snap));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its descriptor, then one sample per label set.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One unlabelled gauge.
fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = |r: &inspect::StatRow| -> Labels {
            vec![
                ("interface", r.interface.clone()),
                ("hook", r.hook.to_string()),
                ("reason", r.reason.to_string()),
                ("verdict", r.verdict.to_string()),
            ]
        };
        family(
            &mut enc,
            "ipipd_packets",
            "Packets per decision of the data plane, by interface, hook and reason",
            MetricType::Counter,
            self.counters
                .iter()
                .map(|r| (labels(r), ConstCounter::new(r.packets))),
        )?;
        family(
            &mut enc,
            "ipipd_bytes",
            "Bytes per decision of the data plane (a GSO packet counts all its bytes)",
            MetricType::Counter,
            self.counters
                .iter()
                .map(|r| (labels(r), ConstCounter::new(r.bytes))),
        )?;
        let map = |name: &str| -> Labels { vec![("map", name.to_string())] };
        family(
            &mut enc,
            "ipipd_map_entries",
            "Entries in each map",
            MetricType::Gauge,
            self.maps
                .iter()
                .map(|(n, used, _)| (map(n), ConstGauge::new(*used as i64))),
        )?;
        family(
            &mut enc,
            "ipipd_map_capacity",
            "Maximum entries of each map",
            MetricType::Gauge,
            self.maps
                .iter()
                .map(|(n, _, cap)| (map(n), ConstGauge::new(*cap as i64))),
        )?;
        family(
            &mut enc,
            "ipipd_attached",
            "1 when the program is attached where the config asks for it",
            MetricType::Gauge,
            self.health.attachments.iter().map(|a| {
                let l: Labels = vec![
                    ("interface", a.interface.clone()),
                    ("hook", a.hook.to_string()),
                    ("mode", self.health.attach_mode.to_string()),
                ];
                (l, ConstGauge::new(i64::from(a.attached)))
            }),
        )?;
        gauge(
            &mut enc,
            "ipipd_ready",
            "1 when every configured interface is attached and the maps are programmed",
            i64::from(self.health.ready),
        )?;
        gauge(
            &mut enc,
            "ipipd_endpoints_pending",
            "Endpoints waiting for their interface",
            self.health.pending.len() as i64,
        )?;
        gauge(
            &mut enc,
            "ipipd_monitor_clients",
            "ipipd monitor clients connected (the programs emit events while above 0)",
            self.health.monitors as i64,
        )?;
        let mut m = enc.encode_descriptor(
            "ipipd_build",
            "Build and kernel information",
            None,
            MetricType::Info,
        )?;
        let l: Labels = vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("aya", "0.14.0".to_string()),
            ("kernel", self.kernel.clone()),
            ("attach_mode", self.health.attach_mode.to_string()),
        ];
        m.encode_info(&l)
    }
}
