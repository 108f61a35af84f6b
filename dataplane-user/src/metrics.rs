//! `ipipd run --metrics-addr`: HTTP `/metrics` (OpenMetrics text, which Prometheus scrapes),
//! `/healthz` (the process is up) and `/readyz` (every configured interface attached and the
//! maps programmed; endpoints still waiting for their interface are listed, and do not hold it
//! back), served with hyper. Each connection is a task of its own with a deadline for its
//! request head and one for the whole exchange, and at most [`MAX_CONNECTIONS`] are served at
//! once: an idle or slow client delays nobody else. Each scrape reads the pinned maps, as
//! `ipipd stats` does.

use std::{
    convert::Infallible, fmt::Write as _, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};

use crate::{datastore::model::Conflict, inspect};

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may hold its slot in all (a client that stops reading its answer
/// would otherwise keep it for ever).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// One attachment the config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub hook: &'static str,
    /// How it is attached: "tcx", "netlink" (cls_bpf, until moved to TCX on a TCX kernel) or
    /// "xdp"; None while it is not.
    pub mode: Option<&'static str>,
}

/// What the daemon last published; each request reads the newest.
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
    /// With a datastore: whether it is reachable, and why not.
    pub datastore: Option<DatastoreHealth>,
}

/// The datastore's state, as /readyz, /metrics and the control socket's `node` report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatastoreHealth {
    /// Which datastore: its kind, members and prefix.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    pub up: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Resets of the store (emptied, restored from an older snapshot) detected since the
    /// daemon started, and what showed the last one.
    #[serde(default)]
    pub resets: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_reset: String,
    /// Within the grace after a reset: forwarding on the last view merged with the store's.
    #[serde(default)]
    pub grace: bool,
    /// Blocks in dispute that this node owns or holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
}

impl DatastoreHealth {
    /// Which datastore, and whether it answers.
    pub fn summary(&self) -> String {
        if self.up {
            format!("{}: up", self.source)
        } else {
            format!("{}: down ({})", self.source, self.reason)
        }
    }

    /// Lines for /readyz and `ipipd status`: the last reset, the grace, each conflict.
    pub fn details(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.resets > 0 {
            out.push(format!(
                "datastore reset {} time(s), last: {}{}",
                self.resets,
                self.last_reset,
                if self.grace {
                    "; forwarding on the last view until the nodes have put their blocks back"
                } else {
                    ""
                }
            ));
        }
        for c in &self.conflicts {
            out.push(format!(
                "datastore conflict: block {} is {} in the store, also held by {}",
                c.block,
                c.owner
                    .as_deref()
                    .map_or("nobody's".to_string(), |o| format!("node {o}'s")),
                c.claimants.join(", ")
            ));
        }
        out
    }
}

/// Binds `addr` (so a taken port fails the start, before anything is attached) and serves it
/// on the runtime for the life of the process.
pub async fn serve(
    addr: SocketAddr,
    pin_dir: PathBuf,
    health: watch::Receiver<Health>,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}: binding"))?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pin_dir = Arc::new(pin_dir);
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // (Out of fds, say: wait rather than spin.)
                    log::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (pin_dir, health) = (pin_dir.clone(), health.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (pin_dir, health) = (pin_dir.clone(), health.borrow().clone());
                    async move { Ok::<_, Infallible>(respond(req, pin_dir, health).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::debug!("metrics: {e}"),
                    Err(_) => log::debug!("metrics: a connection outlived its deadline"),
                }
                drop(permit);
            });
        }
    });
    log::info!("metrics on http://{addr}/metrics (/healthz, /readyz)");
    Ok(())
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

async fn respond(
    req: Request<Incoming>,
    pin_dir: Arc<PathBuf>,
    h: Health,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            // The maps are read with blocking syscalls: off the runtime's workers.
            let res = tokio::task::spawn_blocking(move || metrics_text(&pin_dir, &h)).await;
            match res {
                Ok(Ok(body)) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Ok(Err(e)) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e:#}\n"),
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (status, body) = readyz(&h);
            text(status, "text/plain", body)
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// /readyz's answer: 200 and "ready", or 503 and what is missing; then every attachment and
/// every pending endpoint.
pub fn readyz(h: &Health) -> (StatusCode, String) {
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
            a.mode
                .map_or("missing".to_string(), |m| format!("attached ({m})"))
        );
    }
    for (addr, ifc) in &h.pending {
        let _ = writeln!(body, "pending endpoint {addr} (waiting for {ifc})");
    }
    if let Some(d) = &h.datastore {
        let _ = writeln!(body, "datastore {}", d.summary());
        for line in d.details() {
            let _ = writeln!(body, "{line}");
        }
    }
    let status = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// A snapshot of everything /metrics reports, taken when the scrape comes in.
#[derive(Debug)]
struct Snapshot {
    counters: Vec<inspect::StatRow>,
    kernel_flows: Option<inspect::KernelFlows>,
    maps: Vec<(&'static str, u64, u64)>,
    health: Health,
    kernel: String,
}

fn metrics_text(pin_dir: &std::path::Path, health: &Health) -> Result<String> {
    let counters = inspect::stats(pin_dir).unwrap_or_default();
    let snap = Snapshot {
        kernel_flows: inspect::kernel_flows(pin_dir, &counters).ok(),
        counters,
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
                    (
                        "mode",
                        a.mode.unwrap_or(self.health.attach_mode).to_string(),
                    ),
                ];
                (l, ConstGauge::new(i64::from(a.mode.is_some())))
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
        if let Some(d) = &self.health.datastore {
            gauge(
                &mut enc,
                "ipipd_datastore_up",
                "1 while the datastore (etcd) is reachable and the node's view of it is current",
                i64::from(d.up),
            )?;
            ConstCounter::new(d.resets).encode(enc.encode_descriptor(
                "ipipd_datastore_reset",
                "Resets of the datastore detected (its identity gone or changed, its revision gone back)",
                None,
                MetricType::Counter,
            )?)?;
            gauge(
                &mut enc,
                "ipipd_datastore_grace",
                "1 while the node forwards on its last view merged with the store's, after a reset",
                i64::from(d.grace),
            )?;
            gauge(
                &mut enc,
                "ipipd_datastore_conflicts",
                "Blocks in dispute that this node owns or holds",
                d.conflicts.len() as i64,
            )?;
        }
        if let Some(f) = &self.kernel_flows {
            gauge(
                &mut enc,
                "ipipd_kernel_flows",
                "Entries of the kernel-flows map: ends of flows the kernel handles, whose replies go to it",
                f.entries as i64,
            )?;
            gauge(
                &mut enc,
                "ipipd_kernel_flows_capacity",
                "Entries the kernel-flows map holds (the node's conntrack limit)",
                f.capacity as i64,
            )?;
            for (name, help, v) in [
                (
                    "ipipd_kernel_flows_recorded",
                    "Flows recorded in the kernel-flows map",
                    f.recorded,
                ),
                (
                    "ipipd_kernel_flows_evicted",
                    "Flows the kernel-flows map's LRU evicted to make room (a live one's replies would take the fast path)",
                    f.evicted,
                ),
                (
                    "ipipd_kernel_flows_replies",
                    "Packets the fast path handed to the kernel because they belong to a recorded flow",
                    f.replies,
                ),
            ] {
                ConstCounter::new(v).encode(enc.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Counter,
                )?)?;
            }
        }
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
