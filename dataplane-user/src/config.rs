//! The node config file (TOML): its sections, read into typed values one function each, then
//! held to [`crate::rules`]. What the file leaves out of `[node]` the host tells
//! ([`crate::host`]): the name (`$NODE_NAME`, the hostname), the uplink and the address
//! ([`crate::autodetect`]), so that one file serves every node.
//!
//! Errors are one line, name the key, and (for the file) the line: `FILE:LINE: key: message`.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow};
use dataplane_common::Mode;
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use crate::rules::{KeyError, validate};
use crate::{
    autodetect::{self, Method},
    datastore::model::{IpipMode, Pool},
    host::Host,
    net::{Ipv4Net, check_unicast, parse_mac},
    rules::err,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    Off,
    Native,
    Generic,
}

/// A peer node and the blocks it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub address: Ipv4Addr,
    pub blocks: Vec<Ipv4Net>,
}

/// A local pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointCfg {
    pub address: Ipv4Addr,
    pub interface: String,
    /// The pod side's MAC; found through the veth when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// `namespace/name` of the pod, when its CNI ADD said (shown by `ipipd endpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The container runtime's attachment that created it (CNI ADD); DEL and GC find it by
    /// this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<crate::ipam::Attachment>,
}

/// The node section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub uplink: String,
    pub address: Ipv4Addr,
    /// Where the name, the uplink and the address came from (the config, `$NODE_NAME`, the
    /// hostname, autodetection), for the log, `ipipd status` and `ipipd check`.
    pub found: String,
    /// Whether the file chose the uplink or the address (`uplink`, `address` or
    /// `autodetect`): with the calico-etcd datastore, otherwise, Calico's node record does.
    pub address_given: bool,
    pub mode: Mode,
    /// The underlay MTU; None means the uplink's.
    pub mtu: Option<u32>,
    pub xdp: XdpMode,
    pub pin_dir: PathBuf,
    /// The tunnel device ipipd creates (its stand-in for tunl0; a veth whose peer is
    /// `<tunnel>p`): the routes to remote blocks point at it.
    pub tunnel: String,
    /// false: the kernel forwards every pod packet (its FORWARD chain sees them all); ipipd
    /// still stands in for tunl0 and the routes.
    pub fast_path: bool,
    /// Traffic from the node's pods to destinations outside the pod network leaves with the
    /// node's address (Calico's natOutgoing for every block of the node).
    pub nat_outgoing: bool,
    /// Entries of the kernel-flows map; None: the node's conntrack limit.
    pub kernel_flows: Option<u32>,
}

/// Bounds of `[node] kernel_flows`.
pub const KERNEL_FLOWS_MIN: u32 = 1024;
pub const KERNEL_FLOWS_MAX: u32 = 1 << 24;

/// The tunnel device's name when the config does not give one.
pub const DEFAULT_TUNNEL: &str = "ipipd0";

/// The `[datastore]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreCfg {
    /// The members' client URLs (`http://…` or `https://…`).
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// TLS: the CA that signed the members' certificates, and this node's client certificate
    /// and key.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

pub const DEFAULT_PREFIX: &str = "/ipipd/v1";

/// `[datastore] kind`: whose keys the etcd members hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatastoreKind {
    /// ipipd's own (`/ipipd/v1`): nodes register and claim blocks.
    #[default]
    #[serde(rename = "ipipd")]
    Ipipd,
    /// Calico's (`/calico`), read only: its nodes, IPPools, block affinities and workload
    /// endpoints; ipipd writes nothing (see [`crate::datastore::calico`]).
    #[serde(rename = "calico-etcd")]
    CalicoEtcd,
}

impl DatastoreKind {
    pub fn name(self) -> &'static str {
        match self {
            DatastoreKind::Ipipd => "ipipd",
            DatastoreKind::CalicoEtcd => "calico-etcd",
        }
    }
}

impl DatastoreCfg {
    /// The section's own rules: (key, message) of the first one broken.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.endpoints.is_empty() {
            return Err(("datastore.etcd", "lists no member".into()));
        }
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .ok_or((
                    "datastore.etcd",
                    format!("{e:?}: not http://HOST:PORT or https://HOST:PORT"),
                ))?;
            if rest.is_empty() || rest.contains('/') && !rest.ends_with('/') {
                return Err(("datastore.etcd", format!("{e:?}: not http://HOST:PORT")));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 {
            return Err((
                "datastore.prefix",
                format!("{:?}: must start with / and name something", self.prefix),
            ));
        }
        for (k, p) in [
            ("datastore.ca", &self.ca),
            ("datastore.cert", &self.cert),
            ("datastore.key", &self.key),
        ] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err((k, format!("{} is not an absolute path", p.display())));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(("datastore.cert", "cert and key go together".into()));
        }
        let tls = self.endpoints.iter().any(|e| e.starts_with("https://"));
        if (self.ca.is_some() || self.cert.is_some()) && !tls {
            return Err((
                "datastore.etcd",
                "TLS files are given but no member is https://".into(),
            ));
        }
        Ok(())
    }
}

impl Node {
    /// calico-etcd mode: the node's address is the one Calico's node record gives, since
    /// every peer sends to that one. When the file chose neither the uplink nor the address,
    /// a different one is taken, with the interface holding it as the uplink; whether it was.
    /// Otherwise a difference is an error naming both.
    pub fn follow_calico(&mut self, record: Ipv4Addr, host: &dyn Host) -> Result<bool> {
        if record == self.address {
            return Ok(false);
        }
        if self.address_given {
            anyhow::bail!(
                "Calico's node record of {} says its address is {record}, and every peer sends to it; \
                 this node's is {} ({}): make [node] say {record}",
                self.name,
                self.address,
                self.found
            );
        }
        let uplink = host
            .interfaces()
            .map_err(|e| anyhow!("{e}"))?
            .into_iter()
            .find(|i| i.addrs.contains(&record))
            .map(|i| i.name)
            .ok_or_else(|| {
                anyhow!(
                    "Calico's node record of {} says its address is {record}, which is on no interface of this host",
                    self.name
                )
            })?;
        self.found = format!(
            "{}; address from Calico's node record, uplink the interface holding it",
            self.found
                .split_once(';')
                .map_or(self.found.as_str(), |(n, _)| n)
        );
        self.address = record;
        self.uplink = uplink;
        Ok(true)
    }
}

/// The name of the tunnel device's veth peer.
pub fn tunnel_peer(tunnel: &str) -> String {
    format!("{tunnel}p")
}

/// A validated config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node: Node,
    pub blocks: Vec<Ipv4Net>,
    pub peers: Vec<Peer>,
    pub endpoints: Vec<EndpointCfg>,
    /// `[datastore]`: peers and blocks come from etcd.
    pub datastore: Option<DatastoreCfg>,
    /// `[datastore] kind`.
    pub datastore_kind: DatastoreKind,
    /// `[[pool]]`: created in the datastore when missing.
    pub pools: Vec<Pool>,
    /// Calico's ipipMode of pools (calico-etcd mode): a remote block in one of them leaves
    /// as its pool says; any other as `[node] mode` says.
    pub pool_modes: BTreeMap<Ipv4Net, IpipMode>,
    /// This node's tunnel address (Calico's `ipv4IPIPTunnelAddr`), put on the tunnel device:
    /// the source of the node's own traffic to remote pods.
    pub tunnel_address: Option<Ipv4Addr>,
    /// The file and where its keys stand, for errors found later (against the kernel).
    pub origin: Option<(PathBuf, Lines)>,
}

// ---- the file as written

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: Spanned<RawNode>,
    #[serde(default)]
    block: Vec<RawBlock>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    #[serde(default)]
    endpoint: Vec<RawEndpoint>,
    datastore: Option<Spanned<RawDatastore>>,
    #[serde(default)]
    pool: Vec<RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatastore {
    kind: Option<Spanned<String>>,
    etcd: Spanned<Vec<String>>,
    prefix: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    cidr: Spanned<String>,
    block_size: Spanned<i64>,
    nat_outgoing: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<Spanned<String>>,
    uplink: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    autodetect: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
    xdp: Option<Spanned<String>>,
    pin_dir: Option<Spanned<String>>,
    tunnel: Option<Spanned<String>>,
    fast_path: Option<Spanned<bool>>,
    nat_outgoing: Option<Spanned<bool>>,
    kernel_flows: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    cidr: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    address: Spanned<String>,
    #[serde(default)]
    blocks: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    address: Spanned<String>,
    interface: Spanned<String>,
    mac: Option<Spanned<String>>,
}

/// Where keys stand in the file, for error lines.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Lines(BTreeMap<String, usize>);

/// The byte offsets where the lines of a text start: a key's line is found by binary search,
/// so that noting every key of a large file stays linear in its size.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn of(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self(starts)
    }
    /// The 1-based line of byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

impl Lines {
    fn note<T>(&mut self, text: &LineStarts, key: String, s: &Spanned<T>) {
        self.0.insert(key, text.line_of(s.span().start));
    }
    pub fn get(&self, key: &str) -> Option<usize> {
        self.0.get(key).copied()
    }
}

pub fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::ALL
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| format!("{s:?}: expected \"always\" or \"cross-subnet\""))
}

impl Config {
    /// Reads, parses and validates a file (static checks; the kernel's are
    /// [`crate::host::check_kernel`]'s), asking this host for what the node section leaves out.
    pub fn load(path: &Path) -> Result<Config> {
        Self::load_on(path, &crate::host::System)
    }

    /// [`Config::load`] on `host`.
    pub fn load_on(path: &Path, host: &dyn Host) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let (mut cfg, lines) =
            Self::parse_with_lines(&text, host).map_err(|(line, e)| match line {
                Some(l) => anyhow!("{}:{l}: {e}", path.display()),
                None => anyhow!("{}: {e}", path.display()),
            })?;
        cfg.origin = Some((path.to_path_buf(), lines));
        Ok(cfg)
    }

    /// `FILE:LINE: key: msg` when the config came from a file.
    pub fn key_error(&self, key: &str, msg: String) -> anyhow::Error {
        match &self.origin {
            Some((path, lines)) => match lines.get(key) {
                Some(l) => anyhow!("{}:{l}: {key}: {msg}", path.display()),
                None => anyhow!("{}: {key}: {msg}", path.display()),
            },
            None => anyhow!("{key}: {msg}"),
        }
    }

    /// Parses and validates config text on this host; errors carry the line when one is known.
    pub fn parse(text: &str) -> Result<Config, (Option<usize>, String)> {
        Self::parse_on(text, &crate::host::System)
    }

    /// [`Config::parse`] on `host`.
    pub fn parse_on(text: &str, host: &dyn Host) -> Result<Config, (Option<usize>, String)> {
        Self::parse_with_lines(text, host).map(|(c, _)| c)
    }

    fn parse_with_lines(
        text: &str,
        host: &dyn Host,
    ) -> Result<(Config, Lines), (Option<usize>, String)> {
        let starts = LineStarts::of(text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| starts.line_of(s.start));
            (line, e.message().replace('\n', " "))
        })?;
        let mut r = Reader {
            text: &starts,
            lines: Lines::default(),
        };
        let cfg = r
            .config(raw, host)
            .map_err(|e| (r.lines.get(&e.key), format!("{}: {}", e.key, e.msg)))?;
        validate(&cfg).map_err(|e| (r.lines.get(&e.key), format!("{}: {}", e.key, e.msg)))?;
        Ok((cfg, r.lines))
    }
}

/// Reads the file's sections into typed values, noting where each key stands: syntax only (an
/// address, a CIDR, a number in range, one of the words). What the values mean is
/// [`validate`]'s, for every source alike.
struct Reader<'a> {
    text: &'a LineStarts,
    lines: Lines,
}

impl Reader<'_> {
    fn note<T>(&mut self, key: &str, s: &Spanned<T>) {
        self.lines.note(self.text, key.to_string(), s);
    }

    fn addr(&mut self, key: &str, s: &Spanned<String>) -> Result<Ipv4Addr, KeyError> {
        self.note(key, s);
        s.get_ref()
            .parse()
            .map_err(|_| err(key, format!("{:?} is not an IPv4 address", s.get_ref())))
    }

    fn net(&mut self, key: &str, s: &Spanned<String>) -> Result<Ipv4Net, KeyError> {
        self.note(key, s);
        s.get_ref().parse().map_err(|e| err(key, e))
    }

    fn flag(&mut self, key: &str, v: &Option<Spanned<bool>>, default: bool) -> bool {
        match v {
            Some(s) => {
                self.note(key, s);
                *s.get_ref()
            }
            None => default,
        }
    }

    /// A number in `range`, when given.
    fn number(
        &mut self,
        key: &str,
        v: &Option<Spanned<i64>>,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<u32>, KeyError> {
        let Some(s) = v else { return Ok(None) };
        self.note(key, s);
        let n = *s.get_ref();
        if !range.contains(&n) {
            return Err(err(
                key,
                format!("{n}: must be {}..={}", range.start(), range.end()),
            ));
        }
        Ok(Some(n as u32))
    }

    fn path(&mut self, key: &str, v: &Option<Spanned<String>>) -> Option<PathBuf> {
        v.as_ref().map(|s| {
            self.note(key, s);
            PathBuf::from(s.get_ref())
        })
    }

    fn config(&mut self, raw: RawConfig, host: &dyn Host) -> Result<Config, KeyError> {
        let node = self.node(raw.node.into_inner(), host)?;
        let blocks = self.blocks(&raw.block)?;
        let peers = self.peers(&raw.peer)?;
        let endpoints = self.endpoints(&raw.endpoint)?;
        let (datastore, datastore_kind) = self.datastore(raw.datastore)?;
        let pools = self.pools(&raw.pool)?;
        if datastore_kind == DatastoreKind::CalicoEtcd {
            if !pools.is_empty() {
                return Err(err(
                    "pool[0].cidr",
                    "[[pool]] is not allowed with the calico-etcd datastore: pools are Calico's IPPools",
                ));
            }
            if !blocks.is_empty() {
                return Err(err(
                    "block[0].cidr",
                    "[[block]] is not allowed with the calico-etcd datastore: blocks are Calico IPAM's",
                ));
            }
        }
        if datastore.is_none() && !pools.is_empty() {
            return Err(err(
                "pool[0].cidr",
                "[[pool]] needs a [datastore] to keep it in",
            ));
        }
        if datastore.is_some() && !peers.is_empty() {
            return Err(err(
                "peer[0].address",
                "[[peer]] is not allowed with [datastore]: peers come from the datastore",
            ));
        }
        Ok(Config {
            node,
            blocks,
            peers,
            endpoints,
            datastore,
            datastore_kind,
            pools,
            pool_modes: BTreeMap::new(),
            tunnel_address: None,
            origin: None,
        })
    }

    /// `[node]`: what it gives, and what `host` tells of the rest — the name (`$NODE_NAME`,
    /// then the hostname), the uplink and the address (see [`crate::autodetect`]).
    fn node(&mut self, n: RawNode, host: &dyn Host) -> Result<Node, KeyError> {
        let (name, name_from) = match &n.name {
            Some(s) => {
                self.note("node.name", s);
                (s.get_ref().clone(), "the config")
            }
            None => match host.env_node_name() {
                Some(env) => (env, "$NODE_NAME"),
                None => (host.hostname(), "the hostname"),
            },
        };
        check_node_name(&name).map_err(|e| err("node.name", e))?;
        let mode = match &n.mode {
            Some(s) => {
                self.note("node.mode", s);
                parse_mode(s.get_ref()).map_err(|e| err("node.mode", e))?
            }
            None => Mode::Always,
        };
        let mtu = self.number("node.mtu", &n.mtu, 576..=65535)?;
        let xdp = match &n.xdp {
            Some(s) => {
                self.note("node.xdp", s);
                match s.get_ref().as_str() {
                    "off" => XdpMode::Off,
                    "native" => XdpMode::Native,
                    "generic" => XdpMode::Generic,
                    o => {
                        return Err(err(
                            "node.xdp",
                            format!("{o:?}: expected \"off\", \"native\" or \"generic\""),
                        ));
                    }
                }
            }
            None => XdpMode::Off,
        };
        let pin_dir = match self.path("node.pin_dir", &n.pin_dir) {
            Some(p) if !p.is_absolute() => {
                return Err(err(
                    "node.pin_dir",
                    format!("{:?} is not an absolute path", p.display().to_string()),
                ));
            }
            Some(p) => p,
            None => PathBuf::from("/sys/fs/bpf/ipipd").join(&name),
        };
        let tunnel = match &n.tunnel {
            Some(s) => {
                self.note("node.tunnel", s);
                s.get_ref().clone()
            }
            None => DEFAULT_TUNNEL.to_string(),
        };
        let (uplink, address, found) = self.uplink(&n, &tunnel, host)?;
        Ok(Node {
            found: format!("name from {name_from}; {found}"),
            address_given: n.uplink.is_some() || n.address.is_some() || n.autodetect.is_some(),
            name,
            uplink,
            address,
            mode,
            mtu,
            xdp,
            pin_dir,
            tunnel,
            fast_path: self.flag("node.fast_path", &n.fast_path, true),
            nat_outgoing: self.flag("node.nat_outgoing", &n.nat_outgoing, false),
            kernel_flows: self.number(
                "node.kernel_flows",
                &n.kernel_flows,
                KERNEL_FLOWS_MIN as i64..=KERNEL_FLOWS_MAX as i64,
            )?,
        })
    }

    /// The uplink and the node's address: as given; the one the file leaves out from the
    /// other (the address on the uplink, the interface holding the address); both found by
    /// `[node] autodetect` (default `first-found`) when neither is given. With how.
    fn uplink(
        &mut self,
        n: &RawNode,
        tunnel: &str,
        host: &dyn Host,
    ) -> Result<(String, Ipv4Addr, String), KeyError> {
        let uplink = n.uplink.as_ref().map(|s| {
            self.note("node.uplink", s);
            s.get_ref().clone()
        });
        let address = n
            .address
            .as_ref()
            .map(|s| self.addr("node.address", s))
            .transpose()?;
        let method = match &n.autodetect {
            Some(s) => {
                self.note("node.autodetect", s);
                if uplink.is_some() || address.is_some() {
                    return Err(err(
                        "node.autodetect",
                        "give autodetect, or uplink and address, not both",
                    ));
                }
                s.get_ref()
                    .parse::<Method>()
                    .map_err(|e| err("node.autodetect", e))?
            }
            None => Method::FirstFound,
        };
        let ifaces = || host.interfaces().map_err(|e| err("node.uplink", e));
        Ok(match (uplink, address) {
            (Some(u), Some(a)) => (u, a, "uplink and address from the config".into()),
            (Some(u), None) => {
                let a = ifaces()?
                    .into_iter()
                    .find(|i| i.name == u)
                    .and_then(|i| i.addrs.into_iter().find(|a| check_unicast(*a).is_ok()))
                    .ok_or_else(|| {
                        err(
                            "node.uplink",
                            format!("{u}: no IPv4 address on it to use (give node.address)"),
                        )
                    })?;
                (u, a, "the address of the configured uplink".into())
            }
            (None, Some(a)) => {
                let u = ifaces()?
                    .into_iter()
                    .find(|i| i.addrs.contains(&a))
                    .map(|i| i.name)
                    .ok_or_else(|| {
                        err(
                            "node.address",
                            format!("{a} is on no interface of this host"),
                        )
                    })?;
                (u, a, "the interface of the configured address".into())
            }
            (None, None) => {
                let (u, a) =
                    autodetect::pick(&method, &ifaces()?, tunnel, |dst| host.source_toward(dst))
                        .map_err(|e| err("node.autodetect", e))?;
                (u, a, format!("uplink and address by autodetect {method}"))
            }
        })
    }

    fn blocks(&mut self, raw: &[RawBlock]) -> Result<Vec<Ipv4Net>, KeyError> {
        raw.iter()
            .enumerate()
            .map(|(i, b)| self.net(&format!("block[{i}].cidr"), &b.cidr))
            .collect()
    }

    fn peers(&mut self, raw: &[RawPeer]) -> Result<Vec<Peer>, KeyError> {
        let mut peers = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            let address = self.addr(&format!("peer[{i}].address"), &p.address)?;
            let mut blocks = Vec::with_capacity(p.blocks.len());
            for (j, b) in p.blocks.iter().enumerate() {
                blocks.push(self.net(&format!("peer[{i}].blocks[{j}]"), b)?);
            }
            peers.push(Peer { address, blocks });
        }
        Ok(peers)
    }

    fn endpoints(&mut self, raw: &[RawEndpoint]) -> Result<Vec<EndpointCfg>, KeyError> {
        let mut endpoints = Vec::with_capacity(raw.len());
        for (i, e) in raw.iter().enumerate() {
            let address = self.addr(&format!("endpoint[{i}].address"), &e.address)?;
            self.note(&format!("endpoint[{i}].interface"), &e.interface);
            let mac = match &e.mac {
                Some(m) => {
                    let key = format!("endpoint[{i}].mac");
                    self.note(&key, m);
                    Some(parse_mac(m.get_ref()).map_err(|e| err(key, e))?)
                }
                None => None,
            };
            endpoints.push(EndpointCfg {
                address,
                interface: e.interface.get_ref().clone(),
                mac,
                pod: None,
                attachment: None,
            });
        }
        Ok(endpoints)
    }

    fn datastore(
        &mut self,
        raw: Option<Spanned<RawDatastore>>,
    ) -> Result<(Option<DatastoreCfg>, DatastoreKind), KeyError> {
        let Some(d) = raw else {
            return Ok((None, DatastoreKind::Ipipd));
        };
        self.note("datastore", &d);
        let d = d.into_inner();
        self.note("datastore.etcd", &d.etcd);
        let kind = match &d.kind {
            Some(k) => {
                self.note("datastore.kind", k);
                match k.get_ref().as_str() {
                    "ipipd" => DatastoreKind::Ipipd,
                    "calico-etcd" => DatastoreKind::CalicoEtcd,
                    o => {
                        return Err(err(
                            "datastore.kind",
                            format!("{o:?}: expected \"ipipd\" or \"calico-etcd\""),
                        ));
                    }
                }
            }
            None => DatastoreKind::Ipipd,
        };
        let prefix = match &d.prefix {
            Some(p) => {
                self.note("datastore.prefix", p);
                p.get_ref().trim_end_matches('/').to_string()
            }
            None => match kind {
                DatastoreKind::Ipipd => DEFAULT_PREFIX.to_string(),
                DatastoreKind::CalicoEtcd => crate::datastore::calico::DEFAULT_PREFIX.to_string(),
            },
        };
        let ds = DatastoreCfg {
            endpoints: d.etcd.into_inner(),
            prefix,
            ca: self.path("datastore.ca", &d.ca),
            cert: self.path("datastore.cert", &d.cert),
            key: self.path("datastore.key", &d.key),
        };
        ds.check().map_err(|(k, m)| err(k, m))?;
        Ok((Some(ds), kind))
    }

    fn pools(&mut self, raw: &[RawPool]) -> Result<Vec<Pool>, KeyError> {
        let mut pools = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            let cidr = self.net(&format!("pool[{i}].cidr"), &p.cidr)?;
            let key = format!("pool[{i}].block_size");
            let bs = self
                .number(&key, &Some(p.block_size.clone()), 1..=32)?
                .unwrap_or(26) as u8;
            let nat = self.flag(&format!("pool[{i}].nat_outgoing"), &p.nat_outgoing, false);
            let pool = Pool::new(cidr, bs, nat);
            pool.check().map_err(|m| err(key, m))?;
            pools.push(pool);
        }
        Ok(pools)
    }
}

/// A node's name: what names its pin and state directories, and its keys in the datastore.
fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!("{name:?}: use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "[node]\nname = \"bad\"\nuplink = \"eth0\"\naddress = \"172.31.242.156\"\n";
    const BLOCK: &str = "\n[[block]]\ncidr = \"192.168.83.128/26\"\n";
    const PEER: &str =
        "\n[[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"192.168.179.0/26\"]\n";

    fn endpoint(address: &str, interface: &str) -> String {
        format!("\n[[endpoint]]\naddress = \"{address}\"\ninterface = \"{interface}\"\n")
    }

    const BLOCK_ONLY_NODE: &str = "[node]\n\n[[block]]\ncidr = \"192.168.83.128/26\"\n";

    /// A host with lo, eth0 (172.31.242.156) and eth1 (192.0.2.10, the route toward
    /// 192.0.2.0/24), named "testhost".
    #[derive(Default)]
    struct TestHost {
        env_name: Option<String>,
    }

    impl Host for TestHost {
        fn interfaces(&self) -> Result<Vec<crate::autodetect::HostInterface>, String> {
            let i = |index, name: &str, addr: &str| crate::autodetect::HostInterface {
                name: name.into(),
                index,
                up: true,
                addrs: vec![addr.parse().unwrap()],
            };
            Ok(vec![
                i(1, "lo", "127.0.0.1"),
                i(2, "eth0", "172.31.242.156"),
                i(3, "eth1", "192.0.2.10"),
            ])
        }
        fn source_toward(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
            (dst.octets()[..3] == [192, 0, 2]).then(|| "192.0.2.10".parse().unwrap())
        }
        fn env_node_name(&self) -> Option<String> {
            self.env_name.clone()
        }
        fn hostname(&self) -> String {
            "testhost".into()
        }
    }

    /// The error `text` gets: (line, message).
    fn rejected(text: &str) -> (Option<usize>, String) {
        match Config::parse_on(text, &TestHost::default()) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    /// One test per bad config: the exact line and message.
    macro_rules! bad_config {
        ($($name:ident: $text:expr => $line:expr, $msg:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(rejected(&$text), ($line, $msg.to_string()));
            }
        )*};
    }

    bad_config! {
        a_prefix_length_above_32:
            format!("{NODE}\n[[block]]\ncidr = \"192.168.83.128/33\"\n")
            => Some(7), "block[0].cidr: \"192.168.83.128/33\": prefix length must be 0..=32";
        a_cidr_with_host_bits:
            format!("{NODE}\n[[block]]\ncidr = \"192.168.83.129/26\"\n")
            => Some(7), "block[0].cidr: \"192.168.83.129/26\" has host bits set (did you mean 192.168.83.128/26?)";
        a_cidr_without_a_prefix:
            format!("{NODE}\n[[block]]\ncidr = \"192.168.83.128\"\n")
            => Some(7), "block[0].cidr: \"192.168.83.128\" is not a CIDR (address/prefix)";
        an_invalid_node_address:
            NODE.replace("172.31.242.156", "172.31.242.300")
            => Some(4), "node.address: \"172.31.242.300\" is not an IPv4 address";
        overlapping_blocks:
            format!("{NODE}{BLOCK}\n[[block]]\ncidr = \"192.168.83.0/24\"\n")
            => Some(10), "block[1].cidr: 192.168.83.0/24 overlaps block[0] 192.168.83.128/26";
        an_endpoint_outside_the_blocks:
            format!("{NODE}{BLOCK}{}", endpoint("10.1.1.1", "cali1"))
            => Some(10), "endpoint[0].address: 10.1.1.1 is outside this node's blocks";
        a_peer_block_overlapping_the_own:
            format!("{NODE}{BLOCK}\n[[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"192.168.83.128/27\"]\n")
            => Some(11), "peer[0].blocks[0]: 192.168.83.128/27 overlaps this node's block 192.168.83.128/26";
        a_peer_with_the_nodes_address:
            format!("{NODE}{BLOCK}\n[[peer]]\naddress = \"172.31.242.156\"\n")
            => Some(10), "peer[0].address: 172.31.242.156 is this node's own address";
        a_peer_block_holding_a_node_address:
            format!("{NODE}{BLOCK}\n[[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"172.31.242.128/26\"]\n")
            => Some(11), "peer[0].blocks[0]: 172.31.242.128/26 holds a node address";
        two_peers_with_one_address:
            format!("{NODE}{BLOCK}{PEER}\n[[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"192.168.1.0/26\"]\n")
            => Some(14), "peer[1].address: 172.31.242.157 is also peer[0]";
        a_block_claimed_by_two_peers:
            format!("{NODE}{BLOCK}{PEER}\n[[peer]]\naddress = \"172.31.242.158\"\nblocks = [\"192.168.179.0/26\"]\n")
            => Some(15), "peer[1].blocks[0]: 192.168.179.0/26 is also claimed by peer[0] (192.168.179.0/26)";
        duplicate_endpoint_addresses:
            format!("{NODE}{BLOCK}{}{}", endpoint("192.168.83.129", "cali1"), endpoint("192.168.83.129", "cali2"))
            => Some(14), "endpoint[1].address: 192.168.83.129 is also endpoint[0]";
        duplicate_endpoint_interfaces:
            format!("{NODE}{BLOCK}{}{}", endpoint("192.168.83.129", "cali1"), endpoint("192.168.83.130", "cali1"))
            => Some(15), "endpoint[1].interface: cali1 is also endpoint[0]'s interface";
        an_endpoint_on_the_uplink:
            format!("{NODE}{BLOCK}{}", endpoint("192.168.83.129", "eth0"))
            => Some(11), "endpoint[0].interface: is the uplink";
        an_endpoint_on_the_tunnel_device:
            format!("{NODE}{BLOCK}{}", endpoint("192.168.83.129", "ipipd0"))
            => Some(11), "endpoint[0].interface: is the tunnel device (node.tunnel) or its peer";
        an_endpoint_on_the_tunnel_devices_peer:
            format!("{NODE}{BLOCK}{}", endpoint("192.168.83.129", "ipipd0p"))
            => Some(11), "endpoint[0].interface: is the tunnel device (node.tunnel) or its peer";
        an_endpoint_interface_name_too_long:
            format!("{NODE}{BLOCK}{}", endpoint("192.168.83.129", "cali0123456789abcdef"))
            => Some(11), "endpoint[0].interface: \"cali0123456789abcdef\" is not an interface name";
        an_endpoint_interface_name_with_a_slash:
            format!("{NODE}{BLOCK}{}", endpoint("192.168.83.129", "a/b"))
            => Some(11), "endpoint[0].interface: \"a/b\" is not an interface name";
        a_bad_mac:
            format!("{NODE}{BLOCK}{}mac = \"zz\"\n", endpoint("192.168.83.129", "cali1"))
            => Some(12), "endpoint[0].mac: \"zz\" is not a MAC address (aa:bb:cc:dd:ee:ff)";
        a_mac_with_a_bad_byte:
            format!("{NODE}{BLOCK}{}mac = \"02:00:00:00:00:zz\"\n", endpoint("192.168.83.129", "cali1"))
            => Some(12), "endpoint[0].mac: \"02:00:00:00:00:zz\" is not a MAC address";
        a_tunnel_name_too_long_for_its_peers:
            format!("{NODE}tunnel = \"ipipd012345678x\"\n{BLOCK}")
            => Some(5), "node.tunnel: \"ipipd012345678x\" is not an interface name of at most 14 characters";
        a_tunnel_named_like_the_uplink:
            format!("{NODE}tunnel = \"eth0\"\n{BLOCK}")
            => Some(5), "node.tunnel: is the uplink (or its peer would be)";
        a_bad_mode:
            format!("{NODE}mode = \"sometimes\"\n{BLOCK}")
            => Some(5), "node.mode: \"sometimes\": expected \"always\" or \"cross-subnet\"";
        a_bad_xdp_mode:
            format!("{NODE}xdp = \"fast\"\n{BLOCK}")
            => Some(5), "node.xdp: \"fast\": expected \"off\", \"native\" or \"generic\"";
        an_mtu_out_of_range:
            format!("{NODE}mtu = 100\n{BLOCK}")
            => Some(5), "node.mtu: 100: must be 576..=65535";
        a_relative_pin_dir:
            format!("{NODE}pin_dir = \"bpf/ipipd\"\n{BLOCK}")
            => Some(5), "node.pin_dir: \"bpf/ipipd\" is not an absolute path";
        a_bad_node_name:
            NODE.replace("\"bad\"", "\"a b\"")
            => Some(2), "node.name: \"a b\": use letters, digits, '-', '_' and '.'";
        a_bad_uplink_name:
            NODE.replace("\"eth0\"", "\"eth/0\"")
            => Some(3), "node.uplink: \"eth/0\" is not an interface name";
        an_uplink_name_with_a_colon:
            NODE.replace("\"eth0\"", "\"eth0:1\"")
            => Some(3), "node.uplink: \"eth0:1\" is not an interface name";
        the_loopback_as_uplink:
            NODE.replace("\"eth0\"", "\"lo\"")
            => Some(3), "node.uplink: is the loopback device";
        an_unspecified_node_address:
            format!("{}{BLOCK}", NODE.replace("172.31.242.156", "0.0.0.0"))
            => Some(4), "node.address: 0.0.0.0 is \"this network\" (0.0.0.0/8), not a unicast host address";
        a_broadcast_node_address:
            format!("{}{BLOCK}", NODE.replace("172.31.242.156", "255.255.255.255"))
            => Some(4), "node.address: 255.255.255.255 is reserved or broadcast (240.0.0.0/4), not a unicast host address";
        a_multicast_node_address:
            format!("{}{BLOCK}", NODE.replace("172.31.242.156", "224.0.0.5"))
            => Some(4), "node.address: 224.0.0.5 is multicast, not a unicast host address";
        a_loopback_node_address:
            format!("{}{BLOCK}", NODE.replace("172.31.242.156", "127.0.0.1"))
            => Some(4), "node.address: 127.0.0.1 is loopback, not a unicast host address";
        a_loopback_peer_address:
            format!("{NODE}{BLOCK}\n[[peer]]\naddress = \"127.0.0.2\"\n")
            => Some(10), "peer[0].address: 127.0.0.2 is loopback, not a unicast host address";
        a_multicast_peer_address:
            format!("{NODE}{BLOCK}\n[[peer]]\naddress = \"239.1.2.3\"\n")
            => Some(10), "peer[0].address: 239.1.2.3 is multicast, not a unicast host address";
        a_broadcast_peer_address:
            format!("{NODE}{BLOCK}\n[[peer]]\naddress = \"255.255.255.255\"\n")
            => Some(10), "peer[0].address: 255.255.255.255 is reserved or broadcast (240.0.0.0/4), not a unicast host address";
        a_block_in_loopback_space:
            format!("{NODE}\n[[block]]\ncidr = \"127.0.0.0/26\"\n")
            => Some(7), "block[0].cidr: 127.0.0.0/26 reaches into 127.0.0.0/8, loopback";
        a_block_holding_link_local_space:
            format!("{NODE}\n[[block]]\ncidr = \"160.0.0.0/3\"\n")
            => Some(7), "block[0].cidr: 160.0.0.0/3 reaches into 169.254.0.0/16, link-local";
        a_peer_block_in_multicast_space:
            format!("{NODE}{BLOCK}\n[[peer]]\naddress = \"172.31.242.157\"\nblocks = [\"224.0.0.0/26\"]\n")
            => Some(11), "peer[0].blocks[0]: 224.0.0.0/26 reaches into 224.0.0.0/4, multicast";
        an_endpoint_on_the_loopback:
            format!("{NODE}{BLOCK}{}", endpoint("192.168.83.129", "lo"))
            => Some(11), "endpoint[0].interface: is the loopback device";
        an_endpoint_interface_with_a_space:
            format!("{NODE}{BLOCK}{}", endpoint("192.168.83.129", "cali 1"))
            => Some(11), "endpoint[0].interface: \"cali 1\" is not an interface name";
        a_multicast_pod_mac:
            format!("{NODE}{BLOCK}{}mac = \"01:00:5e:00:00:01\"\n", endpoint("192.168.83.129", "cali1"))
            => Some(12), "endpoint[0].mac: 01:00:5e:00:00:01 is not a unicast MAC";
        a_block_inside_another_peers_block_listed_first:
            format!("{NODE}{BLOCK}{PEER}\n[[peer]]\naddress = \"172.31.242.158\"\nblocks = [\"192.168.0.0/16\"]\n")
            => Some(15), "peer[1].blocks[0]: 192.168.0.0/16 overlaps this node's block 192.168.83.128/26";
    }

    const DS: &str = "\n[datastore]\netcd = [\"http://10.9.0.1:2379\"]\n";

    bad_config! {
        a_peer_with_a_datastore:
            format!("{NODE}{DS}{PEER}")
            => Some(10), "peer[0].address: [[peer]] is not allowed with [datastore]: peers come from the datastore";
        a_datastore_without_members:
            format!("{NODE}\n[datastore]\netcd = []\n")
            => Some(7), "datastore.etcd: lists no member";
        a_member_that_is_not_a_url:
            format!("{NODE}\n[datastore]\netcd = [\"10.9.0.1:2379\"]\n")
            => Some(7), "datastore.etcd: \"10.9.0.1:2379\": not http://HOST:PORT or https://HOST:PORT";
        a_relative_prefix:
            format!("{NODE}{DS}prefix = \"ipipd\"\n")
            => Some(8), "datastore.prefix: \"ipipd\": must start with / and name something";
        a_cert_without_its_key:
            format!("{NODE}\n[datastore]\netcd = [\"https://10.9.0.1:2379\"]\ncert = \"/etc/ipipd/c.pem\"\n")
            => Some(8), "datastore.cert: cert and key go together";
        tls_files_for_plain_http:
            format!("{NODE}{DS}ca = \"/etc/ipipd/ca.pem\"\n")
            => Some(7), "datastore.etcd: TLS files are given but no member is https://";
        a_pool_without_a_datastore:
            format!("{NODE}\n[[pool]]\ncidr = \"10.244.0.0/16\"\nblock_size = 26\n")
            => Some(7), "pool[0].cidr: [[pool]] needs a [datastore] to keep it in";
        a_block_size_wider_than_the_pool:
            format!("{NODE}{DS}\n[[pool]]\ncidr = \"10.244.0.0/16\"\nblock_size = 12\n")
            => Some(11), "pool[0].block_size: block_size 12 must be between the pool's /16 and /30";
    }

    /// With a datastore, blocks and peers may be absent, and an endpoint waits for the
    /// node's claimed blocks to be checked against them.
    #[test]
    fn a_datastore_node_needs_no_blocks_or_peers() {
        let c = Config::parse_on(
            &format!(
                "{NODE}{DS}prefix = \"/ipipd/test/\"\n\n[[pool]]\ncidr = \"10.244.0.0/16\"\nblock_size = 26\n{}",
                endpoint("10.244.0.5", "cali1")
            ),
            &TestHost::default(),
        )
        .unwrap();
        let d = c.datastore.unwrap();
        assert_eq!(d.prefix, "/ipipd/test");
        assert_eq!(c.pools.len(), 1);
        assert!(c.blocks.is_empty() && c.peers.is_empty());
    }

    /// A large node: 100,000 endpoints and 2,000 peers check, and an error deep in it names
    /// its exact line (the line index and the sweeps are what keep this linear).
    #[test]
    fn a_hundred_thousand_endpoints_check_and_a_late_error_names_its_line() {
        let mut text = format!("{NODE}\n[[block]]\ncidr = \"10.0.0.0/14\"\n");
        for p in 0..2000u32 {
            let (a, b) = (p / 250, p % 250);
            text += &format!(
                "\n[[peer]]\naddress = \"172.16.{a}.{b}\"\nblocks = [\"10.{}.{}.0/24\"]\n",
                16 + p / 256,
                p % 256
            );
        }
        for i in 0..100_000u32 {
            let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 1)) + i);
            text += &endpoint(&a.to_string(), &format!("cali{i}"));
        }
        let cfg = Config::parse_on(&text, &TestHost::default()).expect("valid");
        assert_eq!((cfg.peers.len(), cfg.endpoints.len()), (2000, 100_000));
        let lines = text.lines().count();
        let late = format!("{text}{}", endpoint("10.0.0.5", "cali-late"));
        assert_eq!(
            rejected(&late),
            (
                Some(lines + 3),
                "endpoint[100000].address: 10.0.0.5 is also endpoint[4]".to_string()
            )
        );
    }

    #[test]
    fn an_unknown_key_names_itself_and_its_line() {
        let (line, msg) = rejected(&format!("{NODE}colour = \"blue\"\n{BLOCK}"));
        assert_eq!(line, Some(5));
        assert!(msg.starts_with("unknown field `colour`"), "{msg}");
    }

    #[test]
    fn a_missing_node_section_or_an_address_no_interface_has_is_named() {
        let (_, msg) = rejected(BLOCK);
        assert!(msg.contains("missing field `node`"), "{msg}");
        let (line, msg) = rejected("[node]\nuplink = \"eth7\"\n");
        assert_eq!(line, Some(2));
        assert!(msg.contains("node.uplink: eth7: no IPv4 address"), "{msg}");
        let (line, msg) = rejected("[node]\naddress = \"10.9.9.9\"\n");
        assert_eq!(line, Some(2));
        assert!(msg.contains("10.9.9.9 is on no interface"), "{msg}");
        let (line, msg) = rejected("[node]\nuplink = \"eth0\"\nautodetect = \"first-found\"\n");
        assert_eq!(line, Some(3));
        assert!(msg.contains("not both"), "{msg}");
        let (_, msg) = rejected("[node]\nautodetect = \"nearest\"\n");
        assert!(
            msg.starts_with("node.autodetect: \"nearest\": expected first-found"),
            "{msg}"
        );
    }

    #[test]
    fn one_file_serves_every_node_the_host_tells_the_name_uplink_and_address() {
        let host = TestHost {
            env_name: Some("worker-7".into()),
        };
        let c = Config::parse_on(BLOCK_ONLY_NODE, &host).unwrap();
        assert_eq!(
            (c.node.name.as_str(), c.node.uplink.as_str(), c.node.address),
            ("worker-7", "eth0", "172.31.242.156".parse().unwrap())
        );
        assert_eq!(c.node.pin_dir, PathBuf::from("/sys/fs/bpf/ipipd/worker-7"));
        assert!(c.node.found.contains("$NODE_NAME"), "{}", c.node.found);
        assert!(
            c.node.found.contains("autodetect first-found"),
            "{}",
            c.node.found
        );
        // No NODE_NAME: the hostname.
        let c = Config::parse_on(BLOCK_ONLY_NODE, &TestHost::default()).unwrap();
        assert_eq!(c.node.name, "testhost");
        // Another method; the uplink alone; the address alone.
        let c = Config::parse_on(
            "[node]\nautodetect = \"interface=eth1\"\n",
            &TestHost::default(),
        )
        .unwrap();
        assert_eq!(
            (c.node.uplink.as_str(), c.node.address),
            ("eth1", "192.0.2.10".parse().unwrap())
        );
        let c = Config::parse_on("[node]\nuplink = \"eth1\"\n", &TestHost::default()).unwrap();
        assert_eq!(c.node.address, "192.0.2.10".parse::<Ipv4Addr>().unwrap());
        let c =
            Config::parse_on("[node]\naddress = \"192.0.2.10\"\n", &TestHost::default()).unwrap();
        assert_eq!(c.node.uplink, "eth1");
        let c = Config::parse_on(
            "[node]\nautodetect = \"can-reach=192.0.2.99\"\n",
            &TestHost::default(),
        )
        .unwrap();
        assert_eq!(c.node.uplink, "eth1");
    }

    #[test]
    fn with_calicos_datastore_the_node_follows_calicos_record_and_the_file_holds_no_pool_or_block()
    {
        const DS: &str =
            "[datastore]\nkind = \"calico-etcd\"\netcd = [\"http://127.0.0.1:2379\"]\n";
        let host = TestHost::default();
        let mut c = Config::parse_on(&format!("[node]\n{DS}"), &host).unwrap();
        assert_eq!(c.datastore_kind, DatastoreKind::CalicoEtcd);
        assert_eq!(c.datastore.as_ref().unwrap().prefix, "/calico");
        // first-found took eth0; Calico's record says eth1's address: followed.
        assert_eq!(
            c.node.address,
            "172.31.242.156".parse::<Ipv4Addr>().unwrap()
        );
        assert!(
            c.node
                .follow_calico("192.0.2.10".parse().unwrap(), &host)
                .unwrap()
        );
        assert_eq!(
            (c.node.uplink.as_str(), c.node.address),
            ("eth1", "192.0.2.10".parse().unwrap())
        );
        assert!(
            c.node.found.contains("Calico's node record"),
            "{}",
            c.node.found
        );
        assert!(
            !c.node
                .follow_calico("192.0.2.10".parse().unwrap(), &host)
                .unwrap()
        );
        // An address on no interface, or one the file chose, is an error naming both.
        let e = c
            .node
            .follow_calico("198.51.100.1".parse().unwrap(), &host)
            .unwrap_err();
        assert!(e.to_string().contains("on no interface"), "{e}");
        let mut c = Config::parse_on(&format!("[node]\nuplink = \"eth0\"\n{DS}"), &host).unwrap();
        let e = c
            .node
            .follow_calico("192.0.2.10".parse().unwrap(), &host)
            .unwrap_err();
        assert!(e.to_string().contains("make [node] say 192.0.2.10"), "{e}");
        // Pools and blocks are Calico's; a kind is one of two.
        let (_, e) = rejected(&format!("{NODE}{BLOCK}{DS}"));
        assert!(e.contains("blocks are Calico IPAM's"), "{e}");
        let (_, e) = rejected(&format!(
            "{NODE}{DS}[[pool]]\ncidr = \"10.0.0.0/16\"\nblock_size = 26\n"
        ));
        assert!(e.contains("pools are Calico's IPPools"), "{e}");
        let (line, e) = rejected(&format!(
            "{NODE}[datastore]\nkind = \"calico-kdd\"\netcd = [\"http://127.0.0.1:2379\"]\n"
        ));
        assert_eq!(line, Some(6));
        assert!(e.contains("expected \"ipipd\" or \"calico-etcd\""), "{e}");
    }

    #[test]
    fn the_seeds_worker_parses_with_its_defaults() {
        let c = Config::parse_on(
            &format!("{NODE}{BLOCK}{PEER}{}", endpoint("192.168.83.129", "cali1")),
            &TestHost::default(),
        )
        .unwrap();
        assert_eq!(c.node.mode, Mode::Always);
        assert_eq!(c.node.xdp, XdpMode::Off);
        assert_eq!(c.node.mtu, None);
        assert_eq!(c.node.tunnel, "ipipd0");
        assert_eq!(c.node.pin_dir, PathBuf::from("/sys/fs/bpf/ipipd/bad"));
        assert_eq!(c.peers[0].blocks, vec!["192.168.179.0/26".parse().unwrap()]);
        assert_eq!(c.endpoints[0].mac, None);
    }

    #[test]
    fn errors_from_a_file_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("ipipd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, format!("{NODE}mode = \"sometimes\"\n")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:5: node.mode: \"sometimes\": expected \"always\" or \"cross-subnet\"",
                path.display()
            )
        );
        let e = Config::load(&dir.join("absent.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: ", dir.join("absent.toml").display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
