//! The CNI specification's plugin protocol, as far as `ipipd-cni` speaks it (spec 1.1.0,
//! results also in 1.0.0, 0.4.0 and 0.3.1): the environment, the network configuration on
//! stdin, the result and the error objects. Pure: parsing and rendering only.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::ipam::Attachment;

/// The versions `ipipd-cni` speaks, oldest first (VERSION lists them).
pub const SUPPORTED: &[&str] = &["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The spec's error codes (`code` of an error object).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const BAD_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    // ipipd's own, 100 and up.
    /// The daemon refused the request (its message says why).
    pub const DAEMON_REFUSED: u32 = 100;
    /// No free address in the node's blocks.
    pub const NO_ADDRESS: u32 = 101;
    /// `CNI_IFNAME` already exists in the container.
    pub const IFNAME_TAKEN: u32 = 102;
    /// Setting up or removing the pod's interface, address or routes failed.
    pub const NETWORK: u32 = 103;
    /// CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 104;
    /// The delegated IPAM plugin could not be run or answered nonsense.
    pub const IPAM_PLUGIN: u32 = 105;
}

/// A spec error object; printed on stdout, and the plugin exits non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
    /// A delegate's own error object, passed through as it was.
    pub raw: Option<Value>,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
            raw: None,
        }
    }
    pub fn with_details(mut self, d: impl std::fmt::Display) -> Self {
        self.details = d.to_string();
        self
    }
    pub fn to_json(&self, version: &str) -> Value {
        if let Some(r) = &self.raw {
            return r.clone();
        }
        let mut o = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            o["details"] = json!(self.details);
        }
        o
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub type CniResult<T> = Result<T, CniError>;

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// The parameters a runtime passes in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS`, `K=V;K=V`.
    pub args: BTreeMap<String, String>,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// The environment as `get` gives it: what the command needs present, valid; the names of
    /// what is missing or invalid in the error (code 4).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> CniResult<Env> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    code::BAD_ENV,
                    format!(
                        "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                    ),
                ));
            }
            None => return Err(CniError::new(code::BAD_ENV, "CNI_COMMAND is not set")),
        };
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut missing = Vec::new();
        let container_id = nonempty("CNI_CONTAINERID").unwrap_or_default();
        let ifname = nonempty("CNI_IFNAME").unwrap_or_default();
        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        if per_container {
            if container_id.is_empty() {
                missing.push("CNI_CONTAINERID");
            }
            if ifname.is_empty() {
                missing.push("CNI_IFNAME");
            }
            if netns.is_none() && command != Command::Del {
                missing.push("CNI_NETNS");
            }
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                code::BAD_ENV,
                format!(
                    "required environment variables missing: {}",
                    missing.join(", ")
                ),
            ));
        }
        if per_container {
            if !valid_container_id(&container_id) {
                return Err(CniError::new(
                    code::BAD_ENV,
                    format!("CNI_CONTAINERID {container_id:?} is not [A-Za-z0-9][A-Za-z0-9_.-]*"),
                ));
            }
            if let Err(e) = crate::net::check_ifname(&ifname) {
                return Err(CniError::new(
                    code::BAD_ENV,
                    format!("CNI_IFNAME {ifname:?}: {e}"),
                ));
            }
        }
        let mut args = BTreeMap::new();
        for kv in get("CNI_ARGS").unwrap_or_default().split(';') {
            if kv.is_empty() {
                continue;
            }
            let Some((k, v)) = kv.split_once('=') else {
                return Err(CniError::new(
                    code::BAD_ENV,
                    format!("CNI_ARGS: {kv:?} is not KEY=VALUE"),
                ));
            };
            args.insert(k.to_string(), v.to_string());
        }
        let path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    pub fn attachment(&self) -> Attachment {
        Attachment::new(&self.container_id, &self.ifname)
    }

    /// `namespace/name` from `K8S_POD_NAMESPACE` and `K8S_POD_NAME`; the name alone when only
    /// it is given (podman passes `K8S_POD_NAME`).
    pub fn pod(&self) -> Option<String> {
        let name = self.args.get("K8S_POD_NAME").filter(|n| !n.is_empty())?;
        Some(
            match self.args.get("K8S_POD_NAMESPACE").filter(|n| !n.is_empty()) {
                Some(ns) => format!("{ns}/{name}"),
                None => name.clone(),
            },
        )
    }
}

fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The IPAM a network uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipam {
    /// The daemon's allocator, from the node's blocks (`"type": "ipipd"` or no `ipam`).
    Node,
    /// Another IPAM plugin, by its type (a binary in CNI_PATH).
    Delegate(String),
}

/// The network configuration on stdin: the keys `ipipd-cni` reads, and the whole object
/// (passed to a delegated IPAM plugin as it came).
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: String,
    pub name: String,
    pub socket: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub ipam: Ipam,
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<Attachment>>,
    pub raw: Vec<u8>,
}

/// The version of a config that could not be read whole: for the error object's `cniVersion`.
pub fn version_of(raw: &[u8]) -> String {
    serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_else(|| SUPPORTED[SUPPORTED.len() - 1].to_string())
}

/// Whether `v` is at least `min` (both `x.y.z`).
pub fn at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

impl NetConf {
    /// Parses stdin: 6 when it is not JSON, 7 when a key is wrong, 1 when the version is not
    /// one `ipipd-cni` speaks.
    pub fn parse(raw: &[u8]) -> CniResult<NetConf> {
        let v: Value = serde_json::from_slice(raw).map_err(|e| {
            CniError::new(code::DECODE, "the network configuration is not JSON").with_details(e)
        })?;
        let Some(o) = v.as_object() else {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration is not a JSON object",
            ));
        };
        let bad = |m: String| CniError::new(code::INVALID_CONFIG, m);
        let string = |k: &str| -> CniResult<Option<String>> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(format!("{k}: expected a string, got {other}"))),
            }
        };
        let version = string("cniVersion")?.ok_or_else(|| bad("cniVersion is missing".into()))?;
        if !SUPPORTED.contains(&version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "incompatible CNI version {version:?}: ipipd-cni supports {}",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        let name = string("name")?.unwrap_or_default();
        let socket = string("socket")?.map(PathBuf::from);
        if socket.as_ref().is_some_and(|s| !s.is_absolute()) {
            return Err(bad("socket: must be an absolute path".into()));
        }
        let log_file = string("log_file")?.map(PathBuf::from);
        let ipam = match o.get("ipam") {
            None | Some(Value::Null) => Ipam::Node,
            Some(Value::Object(i)) => match i.get("type") {
                Some(Value::String(t)) if t == "ipipd" => Ipam::Node,
                Some(Value::String(t))
                    if !t.is_empty() && !t.contains('/') && t != "." && t != ".." =>
                {
                    Ipam::Delegate(t.clone())
                }
                Some(other) => return Err(bad(format!("ipam.type: not a plugin name: {other}"))),
                None => return Err(bad("ipam: has no type".into())),
            },
            Some(other) => return Err(bad(format!("ipam: expected an object, got {other}"))),
        };
        let prev_result = o.get("prevResult").filter(|p| !p.is_null()).cloned();
        let valid_attachments = match o.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (k, it) in items.iter().enumerate() {
                    let field = |f: &str| it.get(f).and_then(Value::as_str).map(String::from);
                    match (field("containerID"), field("ifname")) {
                        (Some(c), Some(i)) => out.push(Attachment::new(c, i)),
                        _ => {
                            return Err(bad(format!(
                                "cni.dev/valid-attachments[{k}]: needs containerID and ifname"
                            )));
                        }
                    }
                }
                Some(out)
            }
            Some(other) => {
                return Err(bad(format!(
                    "cni.dev/valid-attachments: expected a list, got {other}"
                )));
            }
        };
        Ok(NetConf {
            version,
            name,
            socket,
            log_file,
            ipam,
            prev_result,
            valid_attachments,
            raw: raw.to_vec(),
        })
    }
}

/// VERSION's answer.
pub fn version_result(asked: &str) -> Value {
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED})
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The netns path for the container's interface; None on the host's.
    pub sandbox: Option<String>,
}

/// What ADD set up, rendered in any supported version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddResult {
    pub host: Interface,
    pub container: Interface,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

impl AddResult {
    /// The result object in `version`'s format: 0.3.1 and 0.4.0 give each IP a `version`, 1.1.0
    /// adds interface MTUs and route scopes.
    pub fn to_json(&self, version: &str) -> Value {
        let v11 = at_least(version, "1.1.0");
        let v1 = at_least(version, "1.0.0");
        let iface = |i: &Interface| {
            let mut o = Map::new();
            o.insert("name".into(), json!(i.name));
            o.insert("mac".into(), json!(i.mac));
            if let Some(m) = i.mtu.filter(|_| v11) {
                o.insert("mtu".into(), json!(m));
            }
            if let Some(s) = &i.sandbox {
                o.insert("sandbox".into(), json!(s));
            }
            Value::Object(o)
        };
        let mut ip = json!({"address": format!("{}/32", self.address), "interface": 1});
        if !v1 {
            ip["version"] = json!("4");
        }
        let mut link = json!({"dst": format!("{}/32", self.gateway)});
        if v11 {
            // RT_SCOPE_LINK
            link["scope"] = json!(253);
        }
        json!({
            "cniVersion": version,
            "interfaces": [iface(&self.host), iface(&self.container)],
            "ips": [ip],
            "routes": [link, {"dst": "0.0.0.0/0", "gw": self.gateway.to_string()}],
            "dns": {},
        })
    }
}

/// The first IPv4 address (`a.b.c.d/len`) of a result (an IPAM plugin's, or a prevResult),
/// in any version's format.
pub fn first_ipv4(result: &Value) -> Option<(Ipv4Addr, u8)> {
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let s = ip.get("address")?.as_str()?;
        let (a, l) = s.split_once('/')?;
        Some((a.parse().ok()?, l.parse().ok().filter(|l: &u8| *l <= 32)?))
    })
}

/// The container interface's MAC in a prevResult: the interface with a sandbox.
pub fn sandbox_mac(result: &Value) -> Option<String> {
    result.get("interfaces")?.as_array()?.iter().find_map(|i| {
        i.get("sandbox")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())?;
        i.get("mac")?.as_str().map(String::from)
    })
}

/// The host-side veth of an attachment: `cali` and 11 hex digits of a hash of (container ID,
/// interface name), 15 characters, so that DEL and GC find it with no state (Calico names its
/// veths `cali` + 11 hex digits too).
pub fn host_veth(a: &Attachment) -> String {
    // FNV-1a, 64 bits: stable across builds and Rust versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in a
        .container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(a.ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("cali{:011x}", h >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> CniResult<Env> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::parse(|k| m.get(k).cloned())
    }

    #[test]
    fn the_environment_names_what_is_missing() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(e.code, code::BAD_ENV);
        assert_eq!(
            e.msg,
            "required environment variables missing: CNI_CONTAINERID, CNI_NETNS"
        );
        // DEL needs no netns.
        let d = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(d.netns, None);
        assert_eq!(env(&[]).unwrap_err().msg, "CNI_COMMAND is not set");
        assert_eq!(
            env(&[("CNI_COMMAND", "REBOOT")]).unwrap_err().code,
            code::BAD_ENV
        );
        let bad_id = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "-x"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(bad_id.msg.contains("CNI_CONTAINERID"), "{bad_id}");
        let long_if = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "a-very-long-interface"),
        ])
        .unwrap_err();
        assert!(long_if.msg.starts_with("CNI_IFNAME"), "{long_if}");
        // VERSION, STATUS and GC need no container.
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn cni_args_give_the_pod() {
        let e = env(&[
            ("CNI_COMMAND", "VERSION"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
            ),
        ])
        .unwrap();
        assert_eq!(e.pod().as_deref(), Some("shop/web-0"));
        let p = env(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "K8S_POD_NAME=c1")]).unwrap();
        assert_eq!(p.pod().as_deref(), Some("c1"));
        let bad = env(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "junk")]).unwrap_err();
        assert_eq!(bad.code, code::BAD_ENV);
    }

    #[test]
    fn configs_are_decoded_checked_and_versioned() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, code::DECODE);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"0.2.0","name":"n"}"#)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","socket":"rel/x"}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","ipam":{"type":"../evil"}}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"pods","type":"ipipd-cni","ipam":{"type":"host-local"},
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(c.ipam, Ipam::Delegate("host-local".into()));
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment::new("a", "eth0")])
        );
        let d = NetConf::parse(br#"{"cniVersion":"0.3.1","ipam":{"type":"ipipd"}}"#).unwrap();
        assert_eq!(d.ipam, Ipam::Node);
        assert_eq!(version_of(br#"{"cniVersion":"0.4.0","x":"#), "1.1.0");
        assert_eq!(version_of(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
    }

    #[test]
    fn results_follow_the_version_asked_for() {
        let r = AddResult {
            host: Interface {
                name: "cali0123456789a".into(),
                mac: "ee:00:00:00:00:01".into(),
                mtu: Some(1480),
                sandbox: None,
            },
            container: Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:02".into(),
                mtu: Some(1480),
                sandbox: Some("/run/netns/p".into()),
            },
            address: "10.9.0.5".parse().unwrap(),
            gateway: "169.254.1.1".parse().unwrap(),
        };
        let old = r.to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][1].get("mtu").is_none());
        let v1 = r.to_json("1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["routes"][0].get("scope").is_none());
        let v11 = r.to_json("1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 1480);
        assert_eq!(v11["routes"][0]["scope"], 253);
        assert_eq!(v11["ips"][0]["address"], "10.9.0.5/32");
        assert_eq!(v11["ips"][0]["interface"], 1);
        assert_eq!(v11["routes"][1]["gw"], "169.254.1.1");
        assert_eq!(first_ipv4(&v11), Some(("10.9.0.5".parse().unwrap(), 32)));
        assert_eq!(sandbox_mac(&v11).as_deref(), Some("02:00:00:00:00:02"));
    }

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth(&Attachment::new("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("cali"));
        assert_eq!(a, host_veth(&Attachment::new("abc", "eth0")));
        assert_ne!(a, host_veth(&Attachment::new("abc", "eth1")));
        assert_ne!(
            host_veth(&Attachment::new("ab", "ceth0")),
            host_veth(&Attachment::new("abc", "eth0"))
        );
        // Pinned: DEL after an upgrade must find the veths an older plugin made.
        assert_eq!(a, "cali540c4ae81be");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(at_least("1.1.0", "1.0.0"));
        assert!(at_least("0.4.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(at_least("0.10.0", "0.4.0"));
    }
}
