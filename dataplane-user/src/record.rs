//! What ipipd found on the node before it changed it, and what it made, kept in
//! `<state_dir>/node.json` across any number of restarts, so that `ipipd teardown` puts the node
//! back as it was found: `net.ipv4.ip_forward`, and every route ipipd replaced with its own (a
//! CNI's `<pod>/32 dev <veth>`, a routing daemon's blackhole for the block), kept as the kernel's
//! own message so that it comes back with all its attributes.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::packet_core::{Emitable as _, Parseable as _};
use serde::{Deserialize, Serialize};

use crate::pins::write_atomic;

/// The record's file in the state directory.
pub const FILE: &str = "node.json";

/// What ipipd found and made on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `net.ipv4.ip_forward` as found, when ipipd changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_forward: Option<String>,
    /// The tunnel device ipipd created, by name (a restart with another name deletes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    /// The XDP mode of the uplink's xdp_uplink as attached ("generic" or "native").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<String>,
    /// The routes ipipd replaced, by prefix (`a.b.c.d/len`).
    #[serde(default)]
    pub replaced: BTreeMap<String, ReplacedRoute>,
}

/// A route as it was before ipipd replaced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedRoute {
    /// What it was, for the operator reading the file.
    pub summary: String,
    /// Its output device (name, ifindex), when it has one: it is put back only onto that same
    /// device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<(String, u32)>,
    /// The kernel's route message as dumped, in hex.
    pub message: String,
}

pub fn prefix_key(dst: (Ipv4Addr, u8)) -> String {
    format!("{}/{}", dst.0, dst.1)
}

impl ReplacedRoute {
    pub fn new(m: &RouteMessage, ifname: impl Fn(u32) -> Option<String>) -> Self {
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let device = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => ifname(*i).map(|n| (n, *i)),
            _ => None,
        });
        ReplacedRoute {
            summary: crate::netlink::route_summary(m),
            device,
            message: buf.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// The kernel message to put the route back.
    pub fn message(&self) -> Result<RouteMessage> {
        let bytes = (0..self.message.len())
            .step_by(2)
            .map(|i| {
                self.message
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| anyhow!("not hex"))
            })
            .collect::<Result<Vec<u8>>>()?;
        RouteMessage::parse(bytes.as_slice()).map_err(|e| anyhow!("{e}"))
    }
}

impl NodeRecord {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// The record, or an empty one when there is none (a first start).
    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = Self::path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not ipipd's node record (what teardown restores); fix or remove it",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        write_atomic(
            &Self::path(state_dir),
            &serde_json::to_vec_pretty(self).context("encoding the node record")?,
        )
    }

    pub fn remove(state_dir: &Path) {
        let _ = std::fs::remove_file(Self::path(state_dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::{RouteProtocol, RouteScope};
    use rtnetlink::RouteMessageBuilder;

    #[test]
    fn a_replaced_route_comes_back_byte_for_byte() {
        let m = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 1, 2, 3), 32)
            .output_interface(7)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Static)
            .build();
        let r = ReplacedRoute::new(&m, |i| Some(format!("cali{i}")));
        assert_eq!(r.device, Some(("cali7".to_string(), 7)));
        assert_eq!(r.message().unwrap(), m);
        assert!(r.summary.contains("10.1.2.3/32 dev #7"), "{}", r.summary);
        let rec = NodeRecord {
            ip_forward: Some("0".into()),
            tunnel: Some("ipipd0".into()),
            xdp: None,
            replaced: [(prefix_key((Ipv4Addr::new(10, 1, 2, 3), 32)), r)].into(),
        };
        let text = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<NodeRecord>(&text).unwrap(), rec);
    }

    #[test]
    fn a_damaged_record_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("ipipd-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), "{ not json").unwrap();
        let e = NodeRecord::load(&dir).unwrap_err();
        assert!(
            format!("{e:#}").contains("not ipipd's node record"),
            "{e:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(NodeRecord::load(&dir).unwrap(), NodeRecord::default());
    }
}
