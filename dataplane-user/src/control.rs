//! The control protocol of a node's socket (`<state_dir>/ipipd.sock`, root only): one JSON
//! request per line, one JSON reply per line, framed by `tokio-util`'s line codec with a bound
//! on a line's length. A change gets its reply and the connection ends; `monitor` keeps its
//! connection open, and the daemon turns the programs' monitor off when it closes.
//!
//! The one client, [`Client`], serves the CLI's changes and `ipipd monitor`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

use crate::{
    desired::Change,
    ipam::{Allocation, Attachment},
    net::Ipv4Net,
};

/// The socket's file name in the state directory.
pub const SOCKET: &str = "ipipd.sock";

/// The longest request line the daemon reads (bytes); a longer one is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// A runtime change to the desired state.
    Change(Change),
    /// `ipipd monitor`: the programs emit decisions while this connection stays open.
    Monitor { drops_only: bool },
    /// The node as the CNI plugin needs it ([`Answer::Node`]).
    Node,
    /// An address from the node's blocks for an attachment ([`Answer::Address`]); the one it
    /// holds when it has one.
    Allocate {
        owner: Attachment,
        #[serde(default)]
        pod: Option<String>,
    },
    /// Forget an attachment: its endpoint goes, its address is released
    /// ([`Answer::Detached`]). Nothing to forget is not an error (CNI DEL is idempotent).
    Detach { owner: Attachment },
    /// What the daemon has for an attachment ([`Answer::Attachment`]; CNI CHECK).
    Lookup { owner: Attachment },
    /// CNI GC: every runtime attachment not in `valid` is detached ([`Answer::Collected`]).
    Gc { valid: Vec<Attachment> },
}

/// The node, for the CNI plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    #[serde(default)]
    pub waiting_for: String,
    /// The pods' MTU: the tunnel's (the node's MTU less the outer header's 20 bytes).
    pub pod_mtu: u32,
    pub blocks: Vec<Ipv4Net>,
    /// Addresses the allocator can still hand out.
    pub free: usize,
    /// With a datastore: whether it is reachable, and why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<crate::metrics::DatastoreHealth>,
    /// Where the node's name, uplink and address came from (the config, `$NODE_NAME`, the
    /// hostname, autodetection).
    #[serde(default)]
    pub found: String,
    /// The tunnel device's address (calico-etcd mode: Calico's `ipv4IPIPTunnelAddr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<std::net::Ipv4Addr>,
    /// The datastore's pools, as the node read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolInfo>,
    /// What of the datastore's view the node leaves out (a Calico workload endpoint it cannot
    /// take), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<(String, String)>,
}

/// A pool as a node read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub cidr: Ipv4Net,
    pub block_size: u8,
    pub nat_outgoing: bool,
    /// calico-etcd mode: the IPPool's name, ipipMode and whether it is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico: Option<crate::datastore::model::CalicoPool>,
}

/// An endpoint as the daemon holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointState {
    pub address: std::net::Ipv4Addr,
    pub interface: String,
    /// Attached and in the maps (not waiting for its interface).
    pub live: bool,
}

/// What the daemon has for an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub allocated: Option<std::net::Ipv4Addr>,
    pub endpoint: Option<EndpointState>,
}

/// A reply's content, by request. (One per request, serialised at once: the node's
/// information being the largest costs nothing worth a box.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    Node(NodeInfo),
    Address(std::net::Ipv4Addr),
    /// An endpoint added: whether it is live at once.
    Endpoint {
        live: bool,
    },
    Detached {
        released: Option<std::net::Ipv4Addr>,
        endpoint: Option<std::net::Ipv4Addr>,
    },
    Attachment(AttachmentInfo),
    Collected {
        released: Vec<Allocation>,
        /// The attachments whose endpoints went (their veths are the plugin's to delete).
        endpoints: Vec<Attachment>,
    },
}

/// Why a request was refused, where a client acts on the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The node's blocks have no free address.
    NoAddress,
    /// The daemon is not ready (still starting, or stopping).
    NotReady,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
}

impl Reply {
    pub fn ok() -> Self {
        Reply {
            ok: true,
            error: String::new(),
            reason: None,
            answer: None,
        }
    }
    pub fn answer(a: Answer) -> Self {
        Reply {
            answer: Some(a),
            ..Reply::ok()
        }
    }
    pub fn error(e: impl std::fmt::Display) -> Self {
        Reply {
            ok: false,
            error: e.to_string(),
            reason: None,
            answer: None,
        }
    }
    pub fn refused(reason: Reason, e: impl std::fmt::Display) -> Self {
        Reply {
            reason: Some(reason),
            ..Reply::error(e)
        }
    }
}

/// The codec both ends use.
pub fn codec() -> LinesCodec {
    LinesCodec::new_with_max_length(MAX_REQUEST)
}

/// A request line as the daemon reads it: the request, or the error to answer with.
pub fn decode(frame: Result<String, LinesCodecError>) -> Result<Request, String> {
    match frame {
        Ok(line) => serde_json::from_str(&line).map_err(|e| format!("bad request: {e}")),
        Err(LinesCodecError::MaxLineLengthExceeded) => {
            Err(format!("request refused: longer than {MAX_REQUEST} bytes"))
        }
        Err(LinesCodecError::Io(e)) => Err(format!("reading the request: {e}")),
    }
}

/// The socket of the node whose state directory this is.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// A connection to a node's daemon.
pub struct Client {
    framed: Framed<UnixStream, LinesCodec>,
}

impl Client {
    pub async fn connect(state_dir: &Path) -> Result<Self> {
        Self::connect_to(&socket_path(state_dir)).await
    }

    pub async fn connect_to(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {} (is ipipd running?)", path.display()))?;
        Ok(Client {
            framed: Framed::new(stream, codec()),
        })
    }

    /// Sends a request and waits for its reply, whatever it says.
    pub async fn ask(&mut self, req: &Request) -> Result<Reply> {
        self.framed.send(serde_json::to_string(req)?).await?;
        let line = self
            .framed
            .next()
            .await
            .ok_or_else(|| anyhow!("the daemon closed the connection without a reply"))??;
        serde_json::from_str(&line).with_context(|| format!("bad reply {line:?}"))
    }

    /// Sends a request and waits for its reply; an error reply is an error.
    pub async fn call(&mut self, req: &Request) -> Result<Option<Answer>> {
        let reply = self.ask(req).await?;
        if !reply.ok {
            bail!("{}", reply.error);
        }
        Ok(reply.answer)
    }

    /// Resolves when the daemon closes the connection (a monitor's end).
    pub async fn closed(&mut self) {
        while let Some(Ok(_)) = self.framed.next().await {}
    }
}

/// Sends one change to a running daemon and returns its answer.
pub async fn request(state_dir: &Path, change: Change) -> Result<Option<Answer>> {
    Client::connect(state_dir)
        .await?
        .call(&Request::Change(change))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EndpointCfg, Peer};
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder as _, Encoder as _};

    fn frames(input: &[u8]) -> Vec<Result<Request, String>> {
        let mut c = codec();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match c.decode(&mut buf) {
                Ok(Some(l)) => out.push(decode(Ok(l))),
                Ok(None) => break,
                Err(e) => out.push(decode(Err(e))),
            }
        }
        out
    }

    #[test]
    fn every_request_survives_the_wire() {
        let reqs = [
            Request::Change(Change::EndpointAdd(EndpointCfg {
                address: "192.168.83.131".parse().unwrap(),
                interface: "cali65bda6d8589".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                pod: Some("shop/web-0".into()),
                attachment: Some(Attachment::new("c0ffee", "eth0")),
            })),
            Request::Change(Change::EndpointDel {
                address: "192.168.83.131".parse().unwrap(),
            }),
            Request::Change(Change::PeerAdd(Peer {
                address: "172.31.242.158".parse().unwrap(),
                blocks: vec!["192.168.200.0/26".parse().unwrap()],
            })),
            Request::Change(Change::PeerDel {
                address: "172.31.242.158".parse().unwrap(),
            }),
            Request::Monitor { drops_only: true },
            Request::Node,
            Request::Allocate {
                owner: Attachment::new("c0ffee", "eth0"),
                pod: None,
            },
            Request::Detach {
                owner: Attachment::new("c0ffee", "eth0"),
            },
            Request::Lookup {
                owner: Attachment::new("c0ffee", "eth0"),
            },
            Request::Gc {
                valid: vec![Attachment::new("c0ffee", "eth0")],
            },
        ];
        let mut wire = BytesMut::new();
        let mut c = codec();
        for r in &reqs {
            c.encode(serde_json::to_string(r).unwrap(), &mut wire)
                .unwrap();
        }
        let got: Vec<Request> = frames(&wire).into_iter().map(Result::unwrap).collect();
        assert_eq!(got, reqs);
    }

    #[test]
    fn a_request_is_one_line_and_waits_for_its_newline() {
        let line = br#"{"monitor":{"drops_only":false}}"#;
        assert!(frames(line).is_empty());
        let mut with_nl = line.to_vec();
        with_nl.push(b'\n');
        assert_eq!(
            frames(&with_nl),
            [Ok(Request::Monitor { drops_only: false })]
        );
    }

    #[test]
    fn bad_frames_are_answered_not_fatal() {
        let got = frames(b"not json\n{\"reboot\":{}}\n{\"monitor\":{\"drops_only\":1}}\n");
        assert_eq!(got.len(), 3);
        for g in &got {
            let e = g.as_ref().unwrap_err();
            assert!(e.starts_with("bad request: "), "{e}");
        }
        // An unknown field in a change is refused, not ignored.
        let got = frames(
            b"{\"change\":{\"op\":\"endpoint_del\",\"address\":\"10.0.0.1\",\"force\":true}}\n",
        );
        assert!(got[0].is_err());
    }

    #[test]
    fn an_oversize_request_is_refused_without_buffering_it() {
        let mut c = codec();
        let mut buf = BytesMut::from(&vec![b'x'; MAX_REQUEST + 10][..]);
        let e = c.decode(&mut buf).unwrap_err();
        assert_eq!(
            decode(Err(e)).unwrap_err(),
            format!("request refused: longer than {MAX_REQUEST} bytes")
        );
        // What was read is not kept.
        assert!(buf.len() <= MAX_REQUEST + 10);
        buf.extend_from_slice(&vec![b'y'; 1 << 20]);
        let _ = c.decode(&mut buf);
        assert!(buf.is_empty(), "{} bytes kept", buf.len());
    }

    #[test]
    fn replies() {
        assert_eq!(
            serde_json::to_string(&Reply::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::error("no endpoint 10.0.0.1")).unwrap(),
            r#"{"ok":false,"error":"no endpoint 10.0.0.1"}"#
        );
    }
}
