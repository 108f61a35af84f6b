//! `ipipd-cni`'s commands: what ADD, DEL, CHECK, STATUS and GC do to the node, the pod's
//! namespace and the node's daemon.
//!
//! ADD, in order, undone in reverse when a step fails (nothing is left behind):
//! 1. the daemon is asked whether it is ready, and for the pods' MTU (the tunnel's);
//! 2. the address: allocated by the daemon from the node's blocks, or by the delegated IPAM
//!    plugin;
//! 3. the veth pair: the host side `cali…` (named from the attachment, see
//!    [`spec::host_veth`]) in the node, the other created directly in `CNI_NETNS` as
//!    `CNI_IFNAME`, both at the pods' MTU;
//! 4. in the pod: the address as /32, `169.254.1.1 dev <ifname> scope link`, `default via
//!    169.254.1.1` (Calico's pod, whose gateway the daemon's `from_pod` answers ARP for);
//! 5. the endpoint registered with the daemon, which attaches `from_pod`, writes the maps and
//!    the `/32` route before it answers.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    link::{InfoData, InfoKind, InfoVeth},
    route::{RouteAddress, RouteAttribute, RouteScope},
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use super::spec::{
    self, AddResult, CniError, CniResult, Command, Env, Interface, Ipam, NetConf, code,
};
use crate::{
    config::EndpointCfg,
    control::{self, Answer, NodeInfo, Reason, Reply, Request},
    desired::Change,
    ipam::Attachment,
    net::fmt_mac,
    netlink::Netlink,
};

/// The pods' gateway, as Calico's: answered by the host side (ipipd's `from_pod` replies to
/// ARP for it), never assigned anywhere.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// How long the daemon may take to answer one request (a change reconciles the node).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a delegated IPAM plugin may run.
const DELEGATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The daemon's socket when the config names none: the one of the node named as this host.
pub fn default_socket() -> PathBuf {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most len bytes into the buffer.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    };
    control::socket_path(&crate::daemon::default_state_dir(&host))
}

/// Runs one command; its stdout (a result, or nothing).
pub async fn run(env: &Env, conf: &NetConf) -> CniResult<Option<Value>> {
    let socket = conf.socket.clone().unwrap_or_else(default_socket);
    let daemon = Daemon { socket };
    match env.command {
        Command::Version => Ok(Some(spec::version_result(&conf.version))),
        Command::Add => add(env, conf, &daemon).await.map(Some),
        Command::Del => del(env, conf, &daemon).await.map(|()| None),
        Command::Check => {
            need_version(conf, "0.4.0", "CHECK")?;
            check(env, conf, &daemon).await.map(|()| None)
        }
        Command::Status => {
            need_version(conf, "1.1.0", "STATUS")?;
            status(env, conf, &daemon).await.map(|()| None)
        }
        Command::Gc => {
            need_version(conf, "1.1.0", "GC")?;
            gc(env, conf, &daemon).await.map(|()| None)
        }
    }
}

fn need_version(conf: &NetConf, min: &str, what: &str) -> CniResult<()> {
    if spec::at_least(&conf.version, min) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "config version {} does not allow {what} (needs {min})",
                conf.version
            ),
        ))
    }
}

// ---- the daemon

struct Daemon {
    socket: PathBuf,
}

impl Daemon {
    /// One request; a daemon that cannot be reached is "try again later" (11), a refusal
    /// is ipipd's own error.
    async fn ask(&self, req: Request) -> CniResult<Option<Answer>> {
        let r = tokio::time::timeout(DAEMON_TIMEOUT, async {
            let mut c = control::Client::connect_to(&self.socket)
                .await
                .map_err(|e| {
                    CniError::new(code::TRY_AGAIN, "the node's ipipd is not reachable")
                        .with_details(format!("{e:#}"))
                })?;
            c.ask(&req).await.map_err(|e| {
                CniError::new(code::TRY_AGAIN, "the node's ipipd did not answer")
                    .with_details(format!("{e:#}"))
            })
        })
        .await
        .map_err(|_| {
            CniError::new(
                code::TRY_AGAIN,
                format!(
                    "the node's ipipd did not answer within {}s",
                    DAEMON_TIMEOUT.as_secs()
                ),
            )
        })??;
        refused(r)
    }

    /// The node, ready (for ADD, and for STATUS to say so); not ready is "try again later".
    async fn ready_node(&self) -> CniResult<NodeInfo> {
        let node = match self.ask(Request::Node).await? {
            Some(Answer::Node(n)) => n,
            other => return Err(unexpected(other)),
        };
        if !node.ready {
            return Err(CniError::new(
                code::TRY_AGAIN,
                format!(
                    "the node's ipipd is not ready: waiting for {}",
                    node.waiting_for
                ),
            ));
        }
        Ok(node)
    }
}

fn refused(r: Reply) -> CniResult<Option<Answer>> {
    if r.ok {
        return Ok(r.answer);
    }
    let c = match r.reason {
        Some(Reason::NoAddress) => code::NO_ADDRESS,
        Some(Reason::NotReady) => code::TRY_AGAIN,
        None => code::DAEMON_REFUSED,
    };
    Err(CniError::new(c, r.error))
}

fn unexpected(a: Option<Answer>) -> CniError {
    CniError::new(
        code::DAEMON_REFUSED,
        format!("the daemon gave an unexpected answer: {a:?}"),
    )
}

// ---- namespaces

fn open_netns(path: &Path) -> CniResult<File> {
    File::open(path)
        .map_err(|e| CniError::new(code::BAD_ENV, format!("CNI_NETNS {}: {e}", path.display())))
}

fn setns(f: &File) -> std::io::Result<()> {
    // SAFETY: a valid namespace fd; affects this thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A netlink connection inside the namespace `ns`: its socket is made there, and this thread
/// comes back to its own namespace before anything else happens.
fn netlink_in(ns: &File) -> CniResult<Netlink> {
    let net_err = |what: &str, e: &dyn std::fmt::Display| {
        CniError::new(code::NETWORK, format!("{what}: {e}"))
    };
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| net_err("opening this thread's network namespace", &e))?;
    setns(ns).map_err(|e| net_err("entering CNI_NETNS", &e))?;
    let nl = Netlink::new();
    if let Err(e) = setns(&home) {
        // Everything after this would act in the pod: stop here.
        eprintln!("ipipd-cni: cannot return to the node's network namespace: {e}");
        std::process::abort();
    }
    nl.map_err(|e| net_err("netlink in CNI_NETNS", &format!("{e:#}")))
}

fn net(what: impl std::fmt::Display, e: anyhow::Error) -> CniError {
    CniError::new(code::NETWORK, what.to_string()).with_details(format!("{e:#}"))
}

fn rtnl(e: rtnetlink::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

// ---- ADD

async fn add(env: &Env, conf: &NetConf, daemon: &Daemon) -> CniResult<Value> {
    let node = daemon.ready_node().await?;
    let netns_path = env.netns.as_deref().expect("checked by Env::parse");
    let ns = open_netns(netns_path)?;
    let pod_nl = netlink_in(&ns)?;
    if pod_nl
        .link_by_name(&env.ifname)
        .await
        .map_err(|e| net(format!("looking for {} in the pod", env.ifname), e))?
        .is_some()
    {
        return Err(CniError::new(
            code::IFNAME_TAKEN,
            format!("{} already exists in {}", env.ifname, netns_path.display()),
        ));
    }
    let owner = env.attachment();
    let address = match &conf.ipam {
        Ipam::Node => match daemon
            .ask(Request::Allocate {
                owner: owner.clone(),
                pod: env.pod(),
            })
            .await?
        {
            Some(Answer::Address(a)) => a,
            other => return Err(unexpected(other)),
        },
        Ipam::Delegate(t) => {
            let r = delegate(t, env, conf, "ADD").await?;
            let r = r.ok_or_else(|| {
                CniError::new(
                    code::IPAM_PLUGIN,
                    format!("IPAM plugin {t} returned no result"),
                )
            })?;
            spec::first_ipv4(&r).map(|(a, _)| a).ok_or_else(|| {
                CniError::new(
                    code::IPAM_PLUGIN,
                    format!("IPAM plugin {t} returned no IPv4 address"),
                )
                .with_details(r)
            })?
        }
    };
    let node_nl = Netlink::new().map_err(|e| net("netlink", e))?;
    match wire(env, &node, address, &ns, &node_nl, &pod_nl, daemon).await {
        Ok(r) => Ok(r.to_json(&conf.version)),
        Err(e) => {
            // Undo, in reverse; each part is idempotent, and the first error is the one to tell.
            let _ = daemon.ask(Request::Detach { owner }).await;
            let _ = delete_host_veth(&node_nl, &env.attachment()).await;
            if let Ipam::Delegate(t) = &conf.ipam {
                let _ = delegate(t, env, conf, "DEL").await;
            }
            Err(e)
        }
    }
}

/// Steps 3–5 of ADD.
async fn wire(
    env: &Env,
    node: &NodeInfo,
    address: Ipv4Addr,
    ns: &File,
    node_nl: &Netlink,
    pod_nl: &Netlink,
    daemon: &Daemon,
) -> CniResult<AddResult> {
    let host_name = spec::host_veth(&env.attachment());
    // A veth of this attachment left by an ADD that died half-way goes first.
    delete_host_veth(node_nl, &env.attachment()).await?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(env.ifname.clone())
        .mtu(node.pod_mtu)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host_name.clone())
        .mtu(node.pod_mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    node_nl
        .handle()
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| {
            net(
                format!("creating veth {host_name} ({} in the pod)", env.ifname),
                rtnl(e),
            )
        })?;
    let host = node_nl
        .link_by_name(&host_name)
        .await
        .map_err(|e| net(&host_name, e))?
        .ok_or_else(|| CniError::new(code::NETWORK, format!("{host_name} vanished")))?;
    let pod = pod_nl
        .link_by_name(&env.ifname)
        .await
        .map_err(|e| net(&env.ifname, e))?
        .ok_or_else(|| CniError::new(code::NETWORK, format!("{} is not in the pod", env.ifname)))?;
    let h = pod_nl.handle();
    let in_pod = |what: &str, e: rtnetlink::Error| net(format!("in the pod: {what}"), rtnl(e));
    h.address()
        .add(pod.index, IpAddr::V4(address), 32)
        .execute()
        .await
        .map_err(|e| in_pod(&format!("adding {address}/32"), e))?;
    pod_nl
        .link_set_up(pod.index)
        .await
        .map_err(|e| net("in the pod: setting it up", e))?;
    h.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(GATEWAY, 32)
                .output_interface(pod.index)
                .scope(RouteScope::Link)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| in_pod(&format!("route {GATEWAY} scope link"), e))?;
    h.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(GATEWAY)
                .output_interface(pod.index)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| in_pod(&format!("default via {GATEWAY}"), e))?;
    node_nl
        .link_set_up(host.index)
        .await
        .map_err(|e| net(format!("setting {host_name} up"), e))?;
    let endpoint = EndpointCfg {
        address,
        interface: host_name.clone(),
        mac: pod.mac,
        pod: env.pod(),
        attachment: Some(env.attachment()),
    };
    match daemon
        .ask(Request::Change(Change::EndpointAdd(endpoint)))
        .await?
    {
        Some(Answer::Endpoint { live: true }) => {}
        Some(Answer::Endpoint { live: false }) => {
            return Err(CniError::new(
                code::DAEMON_REFUSED,
                format!("the daemon took {address} on {host_name} but could not attach it"),
            ));
        }
        other => return Err(unexpected(other)),
    }
    let mac = |m: Option<[u8; 6]>| m.map(|m| fmt_mac(&m)).unwrap_or_default();
    Ok(AddResult {
        host: Interface {
            name: host_name,
            mac: mac(host.mac),
            mtu: Some(host.mtu),
            sandbox: None,
        },
        container: Interface {
            name: env.ifname.clone(),
            mac: mac(pod.mac),
            mtu: Some(pod.mtu),
            sandbox: Some(
                env.netns
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
        },
        address,
        gateway: GATEWAY,
    })
}

/// Deletes the host side of an attachment's veth (which takes the pod side with it); absent
/// is fine.
async fn delete_host_veth(nl: &Netlink, a: &Attachment) -> CniResult<()> {
    let name = spec::host_veth(a);
    if let Some(l) = nl.link_by_name(&name).await.map_err(|e| net(&name, e))? {
        nl.link_delete(l.index)
            .await
            .map_err(|e| net(format!("deleting {name}"), e))?;
    }
    Ok(())
}

// ---- DEL

async fn del(env: &Env, conf: &NetConf, daemon: &Daemon) -> CniResult<()> {
    // The daemon first: the endpoint leaves the maps and the route table, and its address is
    // released; then the veth. With the daemon unreachable the veth still goes (the pod is
    // being removed), and the error tells the runtime to try again (the address is held).
    let detached = daemon
        .ask(Request::Detach {
            owner: env.attachment(),
        })
        .await;
    let node_nl = Netlink::new().map_err(|e| net("netlink", e))?;
    delete_host_veth(&node_nl, &env.attachment()).await?;
    if let Ipam::Delegate(t) = &conf.ipam {
        delegate(t, env, conf, "DEL").await?;
    }
    detached.map(|_| ())
}

// ---- CHECK

async fn check(env: &Env, conf: &NetConf, daemon: &Daemon) -> CniResult<()> {
    let fail = |m: String| CniError::new(code::CHECK_FAILED, m);
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
    let (address, _) = spec::first_ipv4(prev)
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "prevResult has no IPv4 address"))?;
    if let Ipam::Delegate(t) = &conf.ipam {
        delegate(t, env, conf, "CHECK").await?;
    }
    let host_name = spec::host_veth(&env.attachment());
    // The daemon has the endpoint, live, on this attachment's veth.
    let info = match daemon
        .ask(Request::Lookup {
            owner: env.attachment(),
        })
        .await?
    {
        Some(Answer::Attachment(i)) => i,
        other => return Err(unexpected(other)),
    };
    match &info.endpoint {
        None => {
            return Err(fail(format!(
                "the daemon has no endpoint for {}",
                env.attachment()
            )));
        }
        Some(ep) if ep.address != address || ep.interface != host_name => {
            return Err(fail(format!(
                "the daemon has {} on {}, prevResult says {address} on {host_name}",
                ep.address, ep.interface
            )));
        }
        Some(ep) if !ep.live => {
            return Err(fail(format!(
                "the daemon's endpoint {address} is not attached"
            )));
        }
        Some(_) => {}
    }
    if conf.ipam == Ipam::Node && info.allocated != Some(address) {
        return Err(fail(format!(
            "{address} is not allocated to {} (the daemon has {:?})",
            env.attachment(),
            info.allocated
        )));
    }
    let node_nl = Netlink::new().map_err(|e| net("netlink", e))?;
    let host = node_nl
        .link_by_name(&host_name)
        .await
        .map_err(|e| net(&host_name, e))?
        .ok_or_else(|| fail(format!("the host veth {host_name} is missing")))?;
    if !host.up {
        return Err(fail(format!("the host veth {host_name} is down")));
    }
    let ns = open_netns(env.netns.as_deref().expect("checked by Env::parse"))?;
    let pod_nl = netlink_in(&ns)?;
    let pod = pod_nl
        .link_by_name(&env.ifname)
        .await
        .map_err(|e| net(&env.ifname, e))?
        .ok_or_else(|| fail(format!("{} is missing in the pod", env.ifname)))?;
    if let Some(want) = spec::sandbox_mac(prev) {
        let got = pod.mac.map(|m| fmt_mac(&m)).unwrap_or_default();
        if !got.eq_ignore_ascii_case(&want) {
            return Err(fail(format!(
                "{} has MAC {got}, prevResult says {want}",
                env.ifname
            )));
        }
    }
    let addrs = pod_nl
        .subnets_exact(pod.index)
        .await
        .map_err(|e| net("the pod's addresses", e))?;
    if !addrs.contains(&(address, 32)) {
        return Err(fail(format!(
            "{} in the pod does not have {address}/32",
            env.ifname
        )));
    }
    let routes = pod_routes(&pod_nl, pod.index).await?;
    if !routes.contains(&(Some((GATEWAY, 32)), None)) {
        return Err(fail(format!(
            "the pod has no route to {GATEWAY} on {}",
            env.ifname
        )));
    }
    if !routes.contains(&(None, Some(GATEWAY))) {
        return Err(fail(format!("the pod has no default route via {GATEWAY}")));
    }
    Ok(())
}

/// The pod's main-table IPv4 routes out of `oif`: (destination, gateway); None = default.
async fn pod_routes(
    nl: &Netlink,
    oif: u32,
) -> CniResult<Vec<(Option<(Ipv4Addr, u8)>, Option<Ipv4Addr>)>> {
    let msgs: Vec<_> = nl
        .handle()
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| net("the pod's routes", rtnl(e)))?;
    let mut out = Vec::new();
    for m in msgs {
        if m.header.address_family != AddressFamily::Inet || m.header.table != 254 {
            continue;
        }
        let (mut dst, mut gw, mut out_if) = (None, None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                    dst = Some((*d, m.header.destination_prefix_length))
                }
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Oif(i) => out_if = Some(*i),
                _ => {}
            }
        }
        if out_if == Some(oif) {
            out.push((dst, gw));
        }
    }
    Ok(out)
}

// ---- STATUS

async fn status(env: &Env, conf: &NetConf, daemon: &Daemon) -> CniResult<()> {
    // Unreachable, not ready or not answering: "not available" (50), with why.
    let node = daemon.ready_node().await.map_err(|e| CniError {
        code: code::NOT_AVAILABLE,
        ..e
    })?;
    match &conf.ipam {
        Ipam::Node if node.free == 0 => Err(CniError::new(
            code::NOT_AVAILABLE,
            "no free address in the node's blocks",
        )),
        Ipam::Node => Ok(()),
        Ipam::Delegate(t) => delegate(t, env, conf, "STATUS").await.map(|_| ()),
    }
}

// ---- GC

async fn gc(env: &Env, conf: &NetConf, daemon: &Daemon) -> CniResult<()> {
    let valid = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments"))?;
    let collected = match daemon.ask(Request::Gc { valid }).await? {
        Some(Answer::Collected { endpoints, .. }) => endpoints,
        other => return Err(unexpected(other)),
    };
    // The veths of the endpoints that went; GC goes on past an error and reports the first.
    let node_nl = Netlink::new().map_err(|e| net("netlink", e))?;
    let mut first = None;
    for a in &collected {
        if let Err(e) = delete_host_veth(&node_nl, a).await {
            first.get_or_insert(e);
        }
    }
    if let Ipam::Delegate(t) = &conf.ipam
        && let Err(e) = delegate(t, env, conf, "GC").await
    {
        first.get_or_insert(e);
    }
    first.map_or(Ok(()), Err)
}

// ---- delegated IPAM

/// Runs the IPAM plugin `t` from `CNI_PATH` with this environment (the command replaced)
/// and the whole config on stdin; its result, or its error object passed through.
async fn delegate(t: &str, env: &Env, conf: &NetConf, command: &str) -> CniResult<Option<Value>> {
    let bin = env
        .path
        .iter()
        .map(|d| d.join(t))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "IPAM plugin {t} not found in CNI_PATH ({})",
                    env.path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })?;
    let mut child = tokio::process::Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CniError::new(code::IPAM_PLUGIN, format!("running {}: {e}", bin.display())))?;
    let mut stdin = child.stdin.take().expect("piped");
    let raw = conf.raw.clone();
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(&raw).await;
    });
    let out = tokio::time::timeout(DELEGATE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            CniError::new(
                code::IPAM_PLUGIN,
                format!(
                    "IPAM plugin {t} ran longer than {}s",
                    DELEGATE_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| CniError::new(code::IPAM_PLUGIN, format!("IPAM plugin {t}: {e}")))?;
    let _ = feed.await;
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: Option<Value> = if text.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_str(&text).map_err(|e| {
            CniError::new(
                code::IPAM_PLUGIN,
                format!("IPAM plugin {t} printed no JSON: {e}"),
            )
            .with_details(text.trim())
        })?)
    };
    if !out.status.success() {
        let mut e = CniError::new(
            code::IPAM_PLUGIN,
            format!("IPAM plugin {t} {command} failed ({})", out.status),
        );
        if let Some(p) = parsed.filter(|p| p.get("code").is_some()) {
            // Its own error object, as the spec has delegates' errors passed up.
            e.code = p.get("code").and_then(Value::as_u64).unwrap_or(0) as u32;
            e.msg = p
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            e.raw = Some(p);
        }
        return Err(e);
    }
    Ok(parsed)
}
