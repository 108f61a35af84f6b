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
}

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

impl Lines {
    fn line_of(text: &str, offset: usize) -> usize {
        text[..offset.min(text.len())].matches('\n').count() + 1
    }
    fn note<T>(&mut self, text: &str, key: String, s: &Spanned<T>) {
        self.0.insert(key, Self::line_of(text, s.span().start));
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

fn valid_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() < 16 && !s.contains(['/', ' ', '\0']) && s != "." && s != ".."
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| Lines::line_of(text, s.start));
            (line, e.message().replace('\n', " "))
        })?;
        let mut lines = Lines::default();
        let cfg = Self::convert(text, raw, &mut lines)
            .map_err(|e| (lines.get(&e.key), format!("{}: {}", e.key, e.msg)))?;
        validate(&cfg).map_err(|e| (lines.get(&e.key), format!("{}: {}", e.key, e.msg)))?;
        Ok((cfg, lines))
    }

    fn convert(text: &str, raw: RawConfig, lines: &mut Lines) -> Result<Config, KeyError> {
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
        if !valid_ifname(n.uplink.get_ref()) {
            return Err(err(
                "node.uplink",
                format!("{:?} is not an interface name", n.uplink.get_ref()),
            ));
        }
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
                // Its peer's name adds a character.
                if !valid_ifname(&tunnel_peer(s.get_ref())) {
                    return Err(err(
                        "node.tunnel",
                        format!(
                            "{:?} is not an interface name of at most 14 characters",
                            s.get_ref()
                        ),
                    ));
                }
                s.get_ref().clone()
            }
            None => DEFAULT_TUNNEL.to_string(),
        };
        if tunnel == *n.uplink.get_ref() || tunnel_peer(&tunnel) == *n.uplink.get_ref() {
            return Err(err("node.tunnel", "is the uplink (or its peer would be)"));
        }
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
            let key = format!("endpoint[{i}].interface");
            lines.note(text, key.clone(), &e.interface);
            if !valid_ifname(e.interface.get_ref()) {
                return Err(err(
                    key,
                    format!("{:?} is not an interface name", e.interface.get_ref()),
                ));
            }
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
            });
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
            },
            blocks,
            peers,
            endpoints,
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

/// The rules every desired state obeys, the file's and the one after runtime changes alike.
pub fn validate(cfg: &Config) -> Result<(), KeyError> {
    for (i, a) in cfg.blocks.iter().enumerate() {
        for (j, b) in cfg.blocks.iter().enumerate().take(i) {
            if a.overlaps(b) {
                return Err(err(
                    format!("block[{i}].cidr"),
                    format!("{a} overlaps block[{j}] {b}"),
                ));
            }
        }
    }
    let mut owners: Vec<(Ipv4Net, usize)> = Vec::new();
    for (i, p) in cfg.peers.iter().enumerate() {
        if p.address == cfg.node.address {
            return Err(err(
                format!("peer[{i}].address"),
                format!("{} is this node's own address", p.address),
            ));
        }
        if let Some(j) = cfg
            .peers
            .iter()
            .take(i)
            .position(|q| q.address == p.address)
        {
            return Err(err(
                format!("peer[{i}].address"),
                format!("{} is also peer[{j}]", p.address),
            ));
        }
        for (k, b) in p.blocks.iter().enumerate() {
            if let Some(own) = cfg.blocks.iter().find(|o| o.overlaps(b)) {
                return Err(err(
                    format!("peer[{i}].blocks[{k}]"),
                    format!("{b} overlaps this node's block {own}"),
                ));
            }
            if let Some((o, j)) = owners.iter().find(|(o, _)| o.overlaps(b)) {
                return Err(err(
                    format!("peer[{i}].blocks[{k}]"),
                    format!("{b} is also claimed by peer[{j}] ({o})"),
                ));
            }
            if b.contains(p.address) || b.contains(cfg.node.address) {
                return Err(err(
                    format!("peer[{i}].blocks[{k}]"),
                    format!("{b} holds a node address"),
                ));
            }
            owners.push((*b, i));
        }
    }
    for (i, e) in cfg.endpoints.iter().enumerate() {
        if !cfg.blocks.iter().any(|b| b.contains(e.address)) {
            return Err(err(
                format!("endpoint[{i}].address"),
                format!("{} is outside this node's blocks", e.address),
            ));
        }
        if let Some(j) = cfg
            .endpoints
            .iter()
            .take(i)
            .position(|f| f.address == e.address)
        {
            return Err(err(
                format!("endpoint[{i}].address"),
                format!("{} is also endpoint[{j}]", e.address),
            ));
        }
        if let Some(j) = cfg
            .endpoints
            .iter()
            .take(i)
            .position(|f| f.interface == e.interface)
        {
            return Err(err(
                format!("endpoint[{i}].interface"),
                format!("{} is also endpoint[{j}]'s interface", e.interface),
            ));
        }
        if e.interface == cfg.node.uplink {
            return Err(err(format!("endpoint[{i}].interface"), "is the uplink"));
        }
        if e.interface == cfg.node.tunnel || e.interface == tunnel_peer(&cfg.node.tunnel) {
            return Err(err(
                format!("endpoint[{i}].interface"),
                "is the tunnel device (node.tunnel) or its peer",
            ));
        }
    }
    Ok(())
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
