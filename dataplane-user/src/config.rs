//! The node config (TOML) and the validation every desired state goes through.
//!
//! Errors are one line, name the key, and (for the file) the line: `FILE:LINE: key: message`.

use std::{
    collections::BTreeMap,
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Result, anyhow};
use dataplane_common::Mode;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// An IPv4 prefix with its host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, len: u8) -> Self {
        Self { addr, len }
    }
    fn mask(len: u8) -> u32 {
        if len == 0 { 0 } else { u32::MAX << (32 - len) }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.len) == u32::from(self.addr)
    }
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let len = self.len.min(other.len);
        u32::from(self.addr) & Self::mask(len) == u32::from(other.addr) & Self::mask(len)
    }
    /// The subnet an address with this prefix length lies in (host bits cleared).
    pub fn containing(ip: Ipv4Addr, len: u8) -> Self {
        Self {
            addr: Ipv4Addr::from(u32::from(ip) & Self::mask(len)),
            len,
        }
    }
    pub fn host(ip: Ipv4Addr) -> Self {
        Self { addr: ip, len: 32 }
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..=32"))?;
        if u32::from(addr) & !Self::mask(len) != 0 {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{len}?)",
                Ipv4Addr::from(u32::from(addr) & Self::mask(len))
            ));
        }
        Ok(Self { addr, len })
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

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
    pub datastore: Option<crate::datastore::DatastoreCfg>,
    /// `[[pool]]`: created in the datastore when missing.
    pub pools: Vec<crate::datastore::model::Pool>,
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
    uplink: Spanned<String>,
    address: Spanned<String>,
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

/// A validation error naming its key.
#[derive(Debug, Clone)]
pub struct KeyError {
    pub key: String,
    pub msg: String,
}

fn err(key: impl Into<String>, msg: impl Into<String>) -> KeyError {
    KeyError {
        key: key.into(),
        msg: msg.into(),
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    Ok(mac)
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::ALL
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| format!("{s:?}: expected \"always\" or \"cross-subnet\""))
}

// ---- the rules: one place for the file, the control socket and the CLI

/// An interface name the kernel accepts (its `dev_valid_name`): 1 to 15 bytes, not "." or
/// "..", no '/', ':', whitespace or NUL.
pub fn check_ifname(s: &str) -> Result<(), String> {
    let bad = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
    if s.is_empty() || s.len() > 15 || s == "." || s == ".." || s.contains(bad) {
        return Err(format!("{s:?} is not an interface name"));
    }
    Ok(())
}

/// The ranges no node, pod or block address may come from, with what they are.
const NOT_UNICAST: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved or broadcast (240.0.0.0/4)"),
];

fn not_unicast() -> impl Iterator<Item = (Ipv4Net, &'static str)> {
    NOT_UNICAST
        .iter()
        .map(|(n, what)| (n.parse().expect("a CIDR"), *what))
}

/// A unicast host address: not unspecified, loopback, link-local, multicast, reserved or
/// broadcast.
pub fn check_unicast(a: Ipv4Addr) -> Result<(), String> {
    match not_unicast().find(|(n, _)| n.contains(a)) {
        Some((_, what)) => Err(format!("{a} is {what}, not a unicast host address")),
        None => Ok(()),
    }
}

/// A block of pod addresses: all of it unicast host addresses.
pub fn check_block(b: &Ipv4Net) -> Result<(), String> {
    match not_unicast().find(|(n, _)| n.overlaps(b)) {
        Some((n, what)) => Err(format!("{b} reaches into {n}, {what}")),
        None => Ok(()),
    }
}

/// A pod's MAC: unicast and not all zeros.
pub fn check_pod_mac(m: &[u8; 6]) -> Result<(), String> {
    if m[0] & 1 != 0 || *m == [0; 6] {
        return Err(format!("{} is not a unicast MAC", fmt_mac(m)));
    }
    Ok(())
}

impl Node {
    /// The node's own rules: (key, message) of the first one broken.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        check_ifname(&self.uplink).map_err(|e| ("node.uplink", e))?;
        if self.uplink == "lo" {
            return Err(("node.uplink", "is the loopback device".into()));
        }
        check_unicast(self.address).map_err(|e| ("node.address", e))?;
        // The tunnel device's peer adds a character to its name.
        if check_ifname(&tunnel_peer(&self.tunnel)).is_err() {
            return Err((
                "node.tunnel",
                format!(
                    "{:?} is not an interface name of at most 14 characters",
                    self.tunnel
                ),
            ));
        }
        if self.tunnel == self.uplink || tunnel_peer(&self.tunnel) == self.uplink {
            return Err(("node.tunnel", "is the uplink (or its peer would be)".into()));
        }
        Ok(())
    }
}

impl EndpointCfg {
    /// One endpoint's rules that need no node: (field, message) of the first one broken.
    pub fn check_alone(&self) -> Result<(), (&'static str, String)> {
        check_unicast(self.address).map_err(|e| ("address", e))?;
        check_ifname(&self.interface).map_err(|e| ("interface", e))?;
        if self.interface == "lo" {
            return Err(("interface", "is the loopback device".into()));
        }
        if let Some(m) = &self.mac {
            check_pod_mac(m).map_err(|e| ("mac", e))?;
        }
        Ok(())
    }

    /// One endpoint's own rules on `node`. The file, the control socket and the CLI all check
    /// endpoints with this.
    pub fn check(&self, node: &Node) -> Result<(), (&'static str, String)> {
        self.check_alone()?;
        if self.interface == node.uplink {
            return Err(("interface", "is the uplink".into()));
        }
        if self.interface == node.tunnel || self.interface == tunnel_peer(&node.tunnel) {
            return Err((
                "interface",
                "is the tunnel device (node.tunnel) or its peer".into(),
            ));
        }
        Ok(())
    }
}

impl Peer {
    /// One peer's rules that need no node: (field, message) of the first one broken, the
    /// field being `address` or `blocks[k]`.
    pub fn check_alone(&self) -> Result<(), (String, String)> {
        check_unicast(self.address).map_err(|e| ("address".to_string(), e))?;
        for (k, b) in self.blocks.iter().enumerate() {
            check_block(b).map_err(|e| (format!("blocks[{k}]"), e))?;
            if b.contains(self.address) {
                return Err((format!("blocks[{k}]"), format!("{b} holds a node address")));
            }
        }
        Ok(())
    }

    /// One peer's own rules against `node`.
    pub fn check(&self, node: &Node) -> Result<(), (String, String)> {
        self.check_alone()?;
        if self.address == node.address {
            return Err((
                "address".into(),
                format!("{} is this node's own address", self.address),
            ));
        }
        for (k, b) in self.blocks.iter().enumerate() {
            if b.contains(node.address) {
                return Err((format!("blocks[{k}]"), format!("{b} holds a node address")));
            }
        }
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

impl Config {
    /// Reads, parses and validates a file (static checks; see [`Config::check_kernel`]).
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let (mut cfg, lines) = Self::parse_with_lines(&text).map_err(|(line, e)| match line {
            Some(l) => anyhow!("{}:{l}: {e}", path.display()),
            None => anyhow!("{}: {e}", path.display()),
        })?;
        cfg.origin = Some((path.to_path_buf(), lines));
        Ok(cfg)
    }

    /// `FILE:LINE: key: msg` when the config came from a file.
    fn key_error(&self, key: &str, msg: String) -> anyhow::Error {
        match &self.origin {
            Some((path, lines)) => match lines.get(key) {
                Some(l) => anyhow!("{}:{l}: {key}: {msg}", path.display()),
                None => anyhow!("{}: {key}: {msg}", path.display()),
            },
            None => anyhow!("{key}: {msg}"),
        }
    }

    /// Parses and validates config text; errors carry the line when one is known.
    pub fn parse(text: &str) -> Result<Config, (Option<usize>, String)> {
        Self::parse_with_lines(text).map(|(c, _)| c)
    }

    fn parse_with_lines(text: &str) -> Result<(Config, Lines), (Option<usize>, String)> {
        let starts = LineStarts::of(text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| starts.line_of(s.start));
            (line, e.message().replace('\n', " "))
        })?;
        let mut lines = Lines::default();
        let cfg = Self::convert(&starts, raw, &mut lines)
            .map_err(|e| (lines.get(&e.key), format!("{}: {}", e.key, e.msg)))?;
        validate(&cfg).map_err(|e| (lines.get(&e.key), format!("{}: {}", e.key, e.msg)))?;
        Ok((cfg, lines))
    }

    /// The file's values, typed: syntax only (an address, a CIDR, a number in range, one of the
    /// words). What the values mean is [`validate`]'s, for every source alike.
    fn convert(text: &LineStarts, raw: RawConfig, lines: &mut Lines) -> Result<Config, KeyError> {
        let n = raw.node.into_inner();
        let addr =
            |key: &str, s: &Spanned<String>, lines: &mut Lines| -> Result<Ipv4Addr, KeyError> {
                lines.note(text, key.to_string(), s);
                s.get_ref()
                    .parse()
                    .map_err(|_| err(key, format!("{:?} is not an IPv4 address", s.get_ref())))
            };
        let net =
            |key: &str, s: &Spanned<String>, lines: &mut Lines| -> Result<Ipv4Net, KeyError> {
                lines.note(text, key.to_string(), s);
                s.get_ref().parse().map_err(|e| err(key, e))
            };
        let name = match &n.name {
            Some(s) => {
                lines.note(text, "node.name".into(), s);
                if !s
                    .get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    || s.get_ref().is_empty()
                    || s.get_ref().starts_with('.')
                {
                    return Err(err(
                        "node.name",
                        format!("{:?}: use letters, digits, '-', '_' and '.'", s.get_ref()),
                    ));
                }
                s.get_ref().clone()
            }
            None => hostname(),
        };
        lines.note(text, "node.uplink".into(), &n.uplink);
        let address = addr("node.address", &n.address, lines)?;
        let mode = match &n.mode {
            Some(s) => {
                lines.note(text, "node.mode".into(), s);
                parse_mode(s.get_ref()).map_err(|e| err("node.mode", e))?
            }
            None => Mode::Always,
        };
        let mtu = match &n.mtu {
            Some(s) => {
                lines.note(text, "node.mtu".into(), s);
                let v = *s.get_ref();
                if !(576..=65535).contains(&v) {
                    return Err(err("node.mtu", format!("{v}: must be 576..=65535")));
                }
                Some(v as u32)
            }
            None => None,
        };
        let xdp = match &n.xdp {
            Some(s) => {
                lines.note(text, "node.xdp".into(), s);
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
        let pin_dir = match &n.pin_dir {
            Some(s) => {
                lines.note(text, "node.pin_dir".into(), s);
                let p = PathBuf::from(s.get_ref());
                if !p.is_absolute() {
                    return Err(err(
                        "node.pin_dir",
                        format!("{:?} is not an absolute path", s.get_ref()),
                    ));
                }
                p
            }
            None => PathBuf::from("/sys/fs/bpf/ipipd").join(&name),
        };
        let tunnel = match &n.tunnel {
            Some(s) => {
                lines.note(text, "node.tunnel".into(), s);
                s.get_ref().clone()
            }
            None => DEFAULT_TUNNEL.to_string(),
        };
        let mut flag = |key: &str, v: &Option<Spanned<bool>>, default: bool| match v {
            Some(s) => {
                lines.note(text, format!("node.{key}"), s);
                *s.get_ref()
            }
            None => default,
        };
        let fast_path = flag("fast_path", &n.fast_path, true);
        let nat_outgoing = flag("nat_outgoing", &n.nat_outgoing, false);
        let kernel_flows = match &n.kernel_flows {
            Some(s) => {
                lines.note(text, "node.kernel_flows".into(), s);
                let v = *s.get_ref();
                if !(KERNEL_FLOWS_MIN as i64..=KERNEL_FLOWS_MAX as i64).contains(&v) {
                    return Err(err(
                        "node.kernel_flows",
                        format!("{v}: must be {KERNEL_FLOWS_MIN}..={KERNEL_FLOWS_MAX}"),
                    ));
                }
                Some(v as u32)
            }
            None => None,
        };
        let mut blocks = Vec::new();
        for (i, b) in raw.block.iter().enumerate() {
            blocks.push(net(&format!("block[{i}].cidr"), &b.cidr, lines)?);
        }
        let mut peers = Vec::new();
        for (i, p) in raw.peer.iter().enumerate() {
            let address = addr(&format!("peer[{i}].address"), &p.address, lines)?;
            let mut bl = Vec::new();
            for (j, b) in p.blocks.iter().enumerate() {
                bl.push(net(&format!("peer[{i}].blocks[{j}]"), b, lines)?);
            }
            peers.push(Peer {
                address,
                blocks: bl,
            });
        }
        let mut endpoints = Vec::new();
        for (i, e) in raw.endpoint.iter().enumerate() {
            let address = addr(&format!("endpoint[{i}].address"), &e.address, lines)?;
            lines.note(text, format!("endpoint[{i}].interface"), &e.interface);
            let mac = match &e.mac {
                Some(m) => {
                    let key = format!("endpoint[{i}].mac");
                    lines.note(text, key.clone(), m);
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
        let datastore = match &raw.datastore {
            Some(d) => {
                lines.note(text, "datastore".into(), d);
                let d = d.get_ref();
                lines.note(text, "datastore.etcd".into(), &d.etcd);
                let path = |k: &str, v: &Option<Spanned<String>>, lines: &mut Lines| {
                    v.as_ref().map(|s| {
                        lines.note(text, k.to_string(), s);
                        PathBuf::from(s.get_ref())
                    })
                };
                let prefix = match &d.prefix {
                    Some(p) => {
                        lines.note(text, "datastore.prefix".into(), p);
                        p.get_ref().trim_end_matches('/').to_string()
                    }
                    None => crate::datastore::DEFAULT_PREFIX.to_string(),
                };
                let ds = crate::datastore::DatastoreCfg {
                    endpoints: d.etcd.get_ref().clone(),
                    prefix,
                    ca: path("datastore.ca", &d.ca, lines),
                    cert: path("datastore.cert", &d.cert, lines),
                    key: path("datastore.key", &d.key, lines),
                };
                ds.check().map_err(|(k, m)| err(k, m))?;
                Some(ds)
            }
            None => None,
        };
        let mut pools = Vec::new();
        for (i, p) in raw.pool.iter().enumerate() {
            let cidr = net(&format!("pool[{i}].cidr"), &p.cidr, lines)?;
            let key = format!("pool[{i}].block_size");
            lines.note(text, key.clone(), &p.block_size);
            let bs = *p.block_size.get_ref();
            if !(1..=32).contains(&bs) {
                return Err(err(key, format!("{bs}: must be 1..=32")));
            }
            let nat_outgoing = match &p.nat_outgoing {
                Some(s) => {
                    lines.note(text, format!("pool[{i}].nat_outgoing"), s);
                    *s.get_ref()
                }
                None => false,
            };
            let pool = crate::datastore::model::Pool {
                cidr,
                block_size: bs as u8,
                nat_outgoing,
            };
            pool.check().map_err(|m| err(key, m))?;
            pools.push(pool);
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
            node: Node {
                name,
                uplink: n.uplink.into_inner(),
                address,
                mode,
                mtu,
                xdp,
                pin_dir,
                tunnel,
                fast_path,
                nat_outgoing,
                kernel_flows,
            },
            blocks,
            peers,
            endpoints,
            datastore,
            pools,
            origin: None,
        })
    }

    /// Checks against the running kernel: the uplink exists, the mtu fits it. Returns the
    /// uplink and the effective underlay MTU.
    pub async fn check_kernel(
        &self,
        nl: &crate::netlink::Netlink,
    ) -> Result<(crate::netlink::Link, u32)> {
        let Some(up) = nl.link_by_name(&self.node.uplink).await? else {
            let msg = format!("no interface {:?} on this host", self.node.uplink);
            return Err(self.key_error("node.uplink", msg));
        };
        let mtu = match self.node.mtu {
            Some(m) if m > up.mtu => {
                let msg = format!("{m} is above the uplink {}'s MTU {}", up.name, up.mtu);
                return Err(self.key_error("node.mtu", msg));
            }
            Some(m) => m,
            None => up.mtu,
        };
        Ok((up, mtu))
    }
}

/// The rules every desired state obeys, the file's and the one after runtime changes alike:
/// each item's own ([`Node::check`], [`Peer::check`], [`EndpointCfg::check`]) and those
/// between items (no two blocks overlap, no address or interface twice, endpoints inside the
/// node's blocks). Linear in the number of items (sorted once), so that a node of 100,000
/// endpoints is checked in a fraction of a second.
pub fn validate(cfg: &Config) -> Result<(), KeyError> {
    cfg.node.check().map_err(|(k, m)| err(k, m))?;
    for (i, b) in cfg.blocks.iter().enumerate() {
        check_block(b).map_err(|m| err(format!("block[{i}].cidr"), m))?;
    }
    overlapping_blocks(cfg)?;
    let mut peers = std::collections::HashMap::with_capacity(cfg.peers.len());
    for (i, p) in cfg.peers.iter().enumerate() {
        p.check(&cfg.node)
            .map_err(|(f, m)| err(format!("peer[{i}].{f}"), m))?;
        if let Some(j) = peers.insert(p.address, i) {
            return Err(err(
                format!("peer[{i}].address"),
                format!("{} is also peer[{j}]", p.address),
            ));
        }
    }
    let mut addresses = std::collections::HashMap::with_capacity(cfg.endpoints.len());
    let mut interfaces = std::collections::HashMap::with_capacity(cfg.endpoints.len());
    for (i, e) in cfg.endpoints.iter().enumerate() {
        e.check(&cfg.node)
            .map_err(|(f, m)| err(format!("endpoint[{i}].{f}"), m))?;
        // (With a datastore the node's blocks may not be claimed yet when the file is read.)
        let unclaimed = cfg.datastore.is_some() && cfg.blocks.is_empty();
        if !unclaimed && !cfg.blocks.iter().any(|b| b.contains(e.address)) {
            return Err(err(
                format!("endpoint[{i}].address"),
                format!("{} is outside this node's blocks", e.address),
            ));
        }
        if let Some(j) = addresses.insert(e.address, i) {
            return Err(err(
                format!("endpoint[{i}].address"),
                format!("{} is also endpoint[{j}]", e.address),
            ));
        }
        if let Some(j) = interfaces.insert(e.interface.as_str(), i) {
            return Err(err(
                format!("endpoint[{i}].interface"),
                format!("{} is also endpoint[{j}]'s interface", e.interface),
            ));
        }
    }
    Ok(())
}

/// Where a block comes from, in file order (the node's own first, then each peer's).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum BlockOf {
    Own(usize),
    Peer(usize, usize),
}

/// No two blocks overlap, the node's own and every peer's together: sorted by start (the
/// larger first at a tie), a CIDR overlaps an earlier one exactly when it starts inside the
/// one that reaches furthest so far (two CIDRs are nested or apart). Of the overlaps found, the
/// one whose later block comes first in the file is reported, naming the other.
fn overlapping_blocks(cfg: &Config) -> Result<(), KeyError> {
    let mut all: Vec<(Ipv4Net, BlockOf)> = cfg
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (*b, BlockOf::Own(i)))
        .chain(cfg.peers.iter().enumerate().flat_map(|(i, p)| {
            p.blocks
                .iter()
                .enumerate()
                .map(move |(k, b)| (*b, BlockOf::Peer(i, k)))
        }))
        .collect();
    all.sort_by_key(|(n, _)| (u32::from(n.addr), n.len));
    let end = |n: &Ipv4Net| u64::from(u32::from(n.addr)) + (1u64 << (32 - n.len)) - 1;
    let mut reach: Option<(u64, usize)> = None;
    let mut worst: Option<(BlockOf, BlockOf, usize, usize)> = None;
    for (x, (net, _)) in all.iter().enumerate() {
        match reach {
            Some((r, y)) if u64::from(u32::from(net.addr)) <= r => {
                let (a, b) = (all[x].1, all[y].1);
                let (later, earlier, l, e) = if a > b { (a, b, x, y) } else { (b, a, y, x) };
                if worst.is_none_or(|w| later < w.0) {
                    worst = Some((later, earlier, l, e));
                }
            }
            _ => reach = Some((end(net), x)),
        }
    }
    let Some((later, earlier, l, e)) = worst else {
        return Ok(());
    };
    let (ln, en) = (all[l].0, all[e].0);
    Err(match (later, earlier) {
        (BlockOf::Own(i), BlockOf::Own(j)) => err(
            format!("block[{i}].cidr"),
            format!("{ln} overlaps block[{j}] {en}"),
        ),
        (BlockOf::Peer(i, k), BlockOf::Own(_)) => err(
            format!("peer[{i}].blocks[{k}]"),
            format!("{ln} overlaps this node's block {en}"),
        ),
        (BlockOf::Peer(i, k), BlockOf::Peer(j, _)) => err(
            format!("peer[{i}].blocks[{k}]"),
            format!("{ln} is also claimed by peer[{j}] ({en})"),
        ),
        (BlockOf::Own(_), BlockOf::Peer(..)) => unreachable!("the node's blocks come first"),
    })
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.msg)
    }
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

    /// The error `text` gets: (line, message).
    fn rejected(text: &str) -> (Option<usize>, String) {
        match Config::parse(text) {
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
        let c = Config::parse(&format!(
            "{NODE}{DS}prefix = \"/ipipd/test/\"\n\n[[pool]]\ncidr = \"10.244.0.0/16\"\nblock_size = 26\n{}",
            endpoint("10.244.0.5", "cali1")
        ))
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
        let cfg = Config::parse(&text).expect("valid");
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
    fn a_missing_node_section_or_address_is_named() {
        let (_, msg) = rejected(BLOCK);
        assert!(msg.contains("missing field `node`"), "{msg}");
        let (_, msg) = rejected("[node]\nuplink = \"eth0\"\n");
        assert!(msg.contains("missing field `address`"), "{msg}");
    }

    #[test]
    fn the_seeds_worker_parses_with_its_defaults() {
        let c = Config::parse(&format!(
            "{NODE}{BLOCK}{PEER}{}",
            endpoint("192.168.83.129", "cali1")
        ))
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

    #[test]
    fn cidr_arithmetic() {
        let n: Ipv4Net = "192.168.83.128/26".parse().unwrap();
        assert!(n.contains("192.168.83.191".parse().unwrap()));
        assert!(!n.contains("192.168.83.192".parse().unwrap()));
        assert!(n.overlaps(&"192.168.83.0/24".parse().unwrap()));
        assert!(!n.overlaps(&"192.168.83.192/26".parse().unwrap()));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("255.255.255.255".parse().unwrap()));
        assert_eq!(n.to_string(), "192.168.83.128/26");
        assert_eq!(
            Ipv4Net::containing("192.168.83.150".parse().unwrap(), 26),
            n
        );
        assert_eq!(Ipv4Net::containing("10.1.2.3".parse().unwrap(), 0), all);
    }

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Ok([2, 0, 10, 255, 0, 1]));
        assert_eq!(fmt_mac(&[2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
        assert!(parse_mac("02:00:0a:ff:00").is_err());
    }
}
