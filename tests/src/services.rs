//! Kubernetes Services as kube-proxy writes them into a node's namespace — its iptables rules
//! (Debian's iptables, the nf_tables backend), its nftables table `ip kube-proxy`, or IPVS
//! virtual servers — and servers and clients in pods that say who answered.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{NetNs, traffic::accept_within};

/// Which kube-proxy mode writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// `iptables` (nf_tables backend): KUBE-SERVICES, KUBE-SVC-…, KUBE-SEP-…, KUBE-NODEPORTS.
    Iptables,
    /// kube-proxy's nftables mode: table `ip kube-proxy`, nat chains at priority dstnat/srcnat,
    /// dispatch through verdict maps.
    Nftables,
    /// IPVS: the VIPs on `kube-ipvs0`, virtual servers in masquerade mode, conntrack on.
    Ipvs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One Service port with one backend, as kube-proxy programs it on one node.
#[derive(Debug, Clone)]
pub struct Service {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    pub backend: SocketAddrV4,
    /// A NodePort on the node's addresses, and whether it is `externalTrafficPolicy: Local`
    /// (no masquerade; kube-proxy only writes it on nodes with a local backend).
    pub node_port: Option<(u16, bool)>,
}

/// kube-proxy's rules for `services` in `ns`. `cluster_cidr` is its `--cluster-cidr`:
/// traffic to a ClusterIP from outside it is masqueraded.
pub fn install(
    ns: &NetNs,
    mode: ProxyMode,
    services: &[Service],
    cluster_cidr: &str,
) -> Result<()> {
    match mode {
        ProxyMode::Iptables => ns.sh(&iptables(services, cluster_cidr)).map(drop),
        ProxyMode::Nftables => ns
            .sh(&format!(
                "nft -f - <<'EOF'\n{}\nEOF",
                nftables(services, cluster_cidr)
            ))
            .map(drop),
        ProxyMode::Ipvs => ns.sh(&ipvs(services)).map(drop),
    }
}

fn iptables(services: &[Service], cluster_cidr: &str) -> String {
    let mut s = vec![
        "set -e".to_string(),
        "ipt() { iptables -w -t nat \"$@\"; }".into(),
        "for c in KUBE-SERVICES KUBE-POSTROUTING KUBE-MARK-MASQ KUBE-NODEPORTS; do ipt -N $c; done"
            .into(),
        "ipt -A PREROUTING -m comment --comment 'kubernetes service portals' -j KUBE-SERVICES"
            .into(),
        "ipt -A OUTPUT -m comment --comment 'kubernetes service portals' -j KUBE-SERVICES".into(),
        "ipt -A POSTROUTING -j KUBE-POSTROUTING".into(),
        "ipt -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".into(),
        "ipt -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into(),
        "ipt -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".into(),
        "ipt -A KUBE-POSTROUTING -j MASQUERADE --random-fully".into(),
    ];
    for (i, v) in services.iter().enumerate() {
        let (p, b) = (v.proto.name(), v.backend);
        s.push(format!("ipt -N KUBE-SVC-{i}; ipt -N KUBE-SEP-{i}"));
        s.push(format!(
            "ipt -A KUBE-SERVICES -d {}/32 -p {p} --dport {} -j KUBE-SVC-{i}",
            v.vip, v.port
        ));
        s.push(format!(
            "ipt -A KUBE-SVC-{i} ! -s {cluster_cidr} -d {}/32 -p {p} --dport {} -j KUBE-MARK-MASQ",
            v.vip, v.port
        ));
        s.push(format!("ipt -A KUBE-SVC-{i} -j KUBE-SEP-{i}"));
        s.push(format!(
            "ipt -A KUBE-SEP-{i} -s {}/32 -j KUBE-MARK-MASQ",
            b.ip()
        ));
        s.push(format!(
            "ipt -A KUBE-SEP-{i} -p {p} -j DNAT --to-destination {b}"
        ));
        if let Some((np, local)) = v.node_port {
            s.push(format!("ipt -N KUBE-EXT-{i}"));
            s.push(format!(
                "ipt -A KUBE-NODEPORTS -p {p} --dport {np} -j KUBE-EXT-{i}"
            ));
            if !local {
                s.push(format!("ipt -A KUBE-EXT-{i} -j KUBE-MARK-MASQ"));
            }
            s.push(format!("ipt -A KUBE-EXT-{i} -j KUBE-SVC-{i}"));
        }
    }
    s.push("ipt -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".into());
    s.join("\n")
}

fn nftables(services: &[Service], cluster_cidr: &str) -> String {
    let mut svc = Vec::new();
    let mut nodeports = Vec::new();
    let mut chains = Vec::new();
    for (i, v) in services.iter().enumerate() {
        let (p, b) = (v.proto.name(), v.backend);
        svc.push(format!("{} . {p} . {} : goto service-{i}", v.vip, v.port));
        chains.push(format!(
            "chain service-{i} {{\n ip daddr {} {p} dport {} ip saddr != {cluster_cidr} jump mark-for-masquerade\n numgen random mod 1 vmap {{ 0 : goto endpoint-{i} }}\n}}",
            v.vip, v.port
        ));
        chains.push(format!(
            "chain endpoint-{i} {{\n ip saddr {} jump mark-for-masquerade\n meta l4proto {p} dnat to {b}\n}}",
            b.ip()
        ));
        if let Some((np, local)) = v.node_port {
            nodeports.push(format!("{p} . {np} : goto external-{i}"));
            let masq = if local {
                ""
            } else {
                " jump mark-for-masquerade\n"
            };
            chains.push(format!(
                "chain external-{i} {{\n{masq} goto service-{i}\n}}"
            ));
        }
    }
    let map = |name: &str, ty: &str, elems: &[String]| {
        let e = if elems.is_empty() {
            String::new()
        } else {
            format!("\n elements = {{ {} }}", elems.join(", "))
        };
        format!("map {name} {{\n type {ty} : verdict{e}\n}}")
    };
    format!(
        "table ip kube-proxy {{
 chain mark-for-masquerade {{ meta mark set meta mark | 0x4000; }}
 chain masquerading {{
  meta mark & 0x4000 == 0 return
  meta mark set meta mark ^ 0x4000
  masquerade fully-random
 }}
 chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
 chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
 chain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; jump masquerading; }}
 {}
 {}
 {}
 chain services {{
  ip daddr . meta l4proto . th dport vmap @service-ips
  fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
 }}
}}",
        map(
            "service-ips",
            "ipv4_addr . inet_proto . inet_service",
            &svc
        ),
        map("service-nodeports", "inet_proto . inet_service", &nodeports),
        chains.join("\n ")
    )
}

fn ipvs(services: &[Service]) -> String {
    let mut s = vec![
        "set -e".to_string(),
        "ip link add kube-ipvs0 type dummy".into(),
        "sysctl -qw net.ipv4.vs.conntrack=1".into(),
    ];
    for v in services {
        let flag = match v.proto {
            Proto::Tcp => "-t",
            Proto::Udp => "-u",
        };
        s.push(format!("ip addr add {}/32 dev kube-ipvs0", v.vip));
        s.push(format!("ipvsadm -A {flag} {}:{} -s rr", v.vip, v.port));
        s.push(format!(
            "ipvsadm -a {flag} {}:{} -r {} -m",
            v.vip, v.port, v.backend
        ));
    }
    s.join("\n")
}

/// Whether this kernel can run IPVS: the `ip_vs` module is loaded or built in (its proc file
/// shows in the namespace).
pub fn kernel_has_ipvs(ns: &NetNs) -> bool {
    ns.sh("test -e /proc/net/ip_vs || { modprobe ip_vs 2>/dev/null && test -e /proc/net/ip_vs; }")
        .is_ok()
}

/// A server in a pod that answers every connection (TCP: a line) or datagram (UDP) with
/// `backend=<bind>`, until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &NetNs, bind: SocketAddrV4, proto: Proto) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let answer = format!("backend={bind}\n");
        let thread = match proto {
            Proto::Tcp => {
                let l = ns.enter(move || TcpListener::bind(bind))??;
                std::thread::spawn(move || {
                    while !s2.load(Ordering::Relaxed) {
                        let Ok((mut c, _)) = accept_within(&l, Duration::from_millis(100)) else {
                            continue;
                        };
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut line = String::new();
                        if BufReader::new(&c).read_line(&mut line).is_ok() {
                            let _ = c.write_all(answer.as_bytes());
                        }
                    }
                })
            }
            Proto::Udp => {
                let sock = ns.enter(move || UdpSocket::bind(bind))??;
                sock.set_read_timeout(Some(Duration::from_millis(100)))?;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1500];
                    while !s2.load(Ordering::Relaxed) {
                        if let Ok((_, from)) = sock.recv_from(&mut buf) {
                            let _ = sock.send_to(answer.as_bytes(), from);
                        }
                    }
                })
            }
        };
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request from `ns` to `to`: a TCP connection, or a datagram on a connected UDP socket
/// (as resolvers ask kube-dns), which takes an answer only from `to` itself. The answer's text.
pub fn ask(ns: &NetNs, to: SocketAddrV4, proto: Proto) -> Result<String> {
    ns.enter(move || -> Result<String> {
        let t = Duration::from_secs(3);
        match proto {
            Proto::Tcp => {
                let mut c = TcpStream::connect_timeout(&to.into(), t)
                    .with_context(|| format!("connecting to {to}"))?;
                c.set_read_timeout(Some(t))?;
                c.write_all(b"hello\n")?;
                let mut line = String::new();
                BufReader::new(&c)
                    .read_line(&mut line)
                    .with_context(|| format!("reading {to}'s answer"))?;
                Ok(line.trim().to_string())
            }
            Proto::Udp => {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(to)?;
                s.set_read_timeout(Some(t))?;
                s.send(b"hello\n")?;
                let mut buf = [0u8; 1500];
                let n = s
                    .recv(&mut buf)
                    .with_context(|| format!("no answer from {to} on a connected socket"))?;
                Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
            }
        }
    })?
}

/// `count` requests from `ns` to `to`, each answered by `backend`; the first failure.
pub fn ask_many(
    ns: &NetNs,
    to: SocketAddrV4,
    proto: Proto,
    backend: SocketAddrV4,
    count: usize,
) -> Result<()> {
    let want = format!("backend={backend}");
    for i in 0..count {
        let got = ask(ns, to, proto).with_context(|| format!("request {i} of {count}"))?;
        if got != want {
            bail!("request {i} to {to}: answered {got:?}, not {want:?}");
        }
    }
    Ok(())
}
