//! A small rtnetlink client: links (with the veth peer's MAC across namespaces), IPv4
//! addresses, route and neighbour lookup, the slow-path routes ipipd owns, and link, neighbour
//! and route events.
//!
//! ipipd's routes carry their own protocol number ([`RTPROT_IPIPD`]), so a restarted daemon finds
//! every route a previous one left and reconciles them.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{Result, anyhow, bail};

/// The `proto` of every route ipipd installs (`ip route show proto 180`).
pub const RTPROT_IPIPD: u8 = 180;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// NUD_VALID: PERMANENT | NOARP | REACHABLE | PROBE | STALE | DELAY, the states whose MAC the
/// kernel itself would send to.
const NUD_VALID: u16 = 0x80 | 0x40 | 0x02 | 0x10 | 0x04 | 0x08;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;
const IFF_UP: u32 = libc::IFF_UP as u32;
const IFF_NOARP: u32 = libc::IFF_NOARP as u32;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_TARGET_NETNSID: u16 = 46;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_METRICS: u16 = 8;
const RTA_TABLE: u16 = 15;
const RTAX_MTU: u16 = 2;
const RTN_UNICAST: u8 = 1;
const RTN_BLACKHOLE: u8 = 6;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_TABLE_MAIN: u8 = 254;
const RTNH_F_ONLINK: u32 = 4;
const RTMGRP_LINK: u32 = 1;
const RTMGRP_NEIGH: u32 = 4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const AF_INET: u8 = libc::AF_INET as u8;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// The peer's ifindex (veth), in the namespace `link_netnsid` names.
    pub link: Option<u32>,
    pub link_netnsid: Option<i32>,
    /// `ip -d link`'s kind ("veth", …), None for a device without one (a physical NIC).
    pub kind: Option<String>,
}

/// A link event from [`Netlink::events`].
#[derive(Debug, Clone)]
pub enum LinkEvent {
    New(Link),
    Del {
        index: u32,
        name: String,
    },
    /// An IPv4 neighbour, or a route ipipd does not own, changed: next hops may have.
    NextHops,
    /// The kernel dropped events (ENOBUFS): resync from a full dump.
    Resync,
}

/// One slow-path route ipipd owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// `<dst> via <gateway> dev <oif> onlink mtu <mtu>`
    Via {
        dst: (Ipv4Addr, u8),
        gateway: Ipv4Addr,
        oif: u32,
        mtu: u32,
    },
    /// `<dst> dev <oif> scope link`
    Dev { dst: (Ipv4Addr, u8), oif: u32 },
    /// `<dst> dev <tunnel> scope link src <src>`: into the tunnel device, from the node's
    /// address (the device has none of its own).
    Tunnel {
        dst: (Ipv4Addr, u8),
        oif: u32,
        src: Ipv4Addr,
    },
    /// `blackhole <dst>`
    Blackhole { dst: (Ipv4Addr, u8) },
}

impl Route {
    pub fn dst(&self) -> (Ipv4Addr, u8) {
        match self {
            Route::Via { dst, .. }
            | Route::Dev { dst, .. }
            | Route::Tunnel { dst, .. }
            | Route::Blackhole { dst } => *dst,
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Via {
                dst,
                gateway,
                oif,
                mtu,
            } => {
                write!(
                    f,
                    "{}/{} via {gateway} dev #{oif} onlink mtu {mtu}",
                    dst.0, dst.1
                )
            }
            Route::Dev { dst, oif } => write!(f, "{}/{} dev #{oif} scope link", dst.0, dst.1),
            Route::Tunnel { dst, oif, src } => {
                write!(f, "{}/{} dev #{oif} scope link src {src}", dst.0, dst.1)
            }
            Route::Blackhole { dst } => write!(f, "blackhole {}/{}", dst.0, dst.1),
        }
    }
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align(buf.len()), 0);
}

/// Iterates (type, data) over the attributes in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((ty, data))
    })
}

fn u32_of(d: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?))
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < 16 {
        return None;
    }
    let index = u32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        mac: None,
        mtu: 0,
        link: None,
        link_netnsid: None,
        kind: None,
    };
    for (ty, data) in attrs(&payload[16..]) {
        match ty {
            IFLA_IFNAME => {
                link.name =
                    String::from_utf8_lossy(data.split(|b| *b == 0).next().unwrap_or_default())
                        .into_owned()
            }
            IFLA_ADDRESS if data.len() == 6 => link.mac = data.try_into().ok(),
            IFLA_MTU => link.mtu = u32_of(data).unwrap_or(0),
            IFLA_LINK => link.link = u32_of(data),
            IFLA_LINK_NETNSID => link.link_netnsid = u32_of(data).map(|v| v as i32),
            IFLA_LINKINFO => {
                link.kind = attrs(data)
                    .find(|(t, _)| *t == IFLA_INFO_KIND)
                    .map(|(_, d)| {
                        String::from_utf8_lossy(d.split(|b| *b == 0).next().unwrap_or_default())
                            .into_owned()
                    })
            }
            _ => {}
        }
    }
    Some(link)
}

impl Netlink {
    pub fn new() -> Result<Self> {
        Self::open(0)
    }

    /// A socket subscribed to link, neighbour and IPv4 route events, for [`Netlink::events`].
    pub fn link_events() -> Result<Self> {
        Self::open(RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE)
    }

    fn open(groups: u32) -> Result<Self> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            bail!("netlink socket: {}", io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; we set family and groups.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        // SAFETY: valid fd and sockaddr.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            bail!("netlink bind: {}", io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1 })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn send(&mut self, ty: u16, flags: u16, payload: &[u8]) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            bail!("netlink send: {}", io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    fn recv(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Sends a request and collects the payloads of its answers until DONE, or the ACK.
    fn request(&mut self, ty: u16, flags: u16, payload: &[u8]) -> Result<Vec<(u16, Vec<u8>)>> {
        let seq = self.send(ty, flags | NLM_F_ACK, payload)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self.recv(&mut buf, 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into()?) as usize;
                let mty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into()?);
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into()?);
                if len < 16 || off + len > n {
                    bail!("netlink: malformed message");
                }
                let payload = &buf[off + 16..off + len];
                off += align(len);
                if mseq != seq {
                    continue;
                }
                match mty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(payload[..4].try_into()?);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-code).into());
                    }
                    _ => out.push((mty, payload.to_vec())),
                }
            }
        }
    }

    /// Every link in this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let req = [0u8; 16];
        Ok(self
            .request(RTM_GETLINK, NLM_F_DUMP, &req)?
            .iter()
            .filter(|(t, _)| *t == RTM_NEWLINK)
            .filter_map(|(_, p)| parse_link(p))
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// An ifinfomsg for link `index` (0: a new one), setting `flags` among those in `change`.
    fn ifinfo(index: u32, flags: u32, change: u32) -> Vec<u8> {
        let mut m = vec![0u8; 16];
        m[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        m[8..12].copy_from_slice(&flags.to_ne_bytes());
        m[12..16].copy_from_slice(&change.to_ne_bytes());
        m
    }

    /// `ip link add <name> mtu <mtu> arp off type veth peer name <peer> mtu <mtu> arp off`,
    /// both down. Fails when either name is taken.
    pub fn veth_add_noarp(&mut self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        let named = |m: &mut Vec<u8>, n: &str| {
            let mut z = n.as_bytes().to_vec();
            z.push(0);
            push_attr(m, IFLA_IFNAME, &z);
            push_attr(m, IFLA_MTU, &mtu.to_ne_bytes());
        };
        let mut peer_msg = Self::ifinfo(0, IFF_NOARP, IFF_NOARP);
        named(&mut peer_msg, peer);
        let mut data = Vec::new();
        push_attr(&mut data, VETH_INFO_PEER, &peer_msg);
        let mut info = Vec::new();
        push_attr(&mut info, IFLA_INFO_KIND, b"veth\0");
        push_attr(&mut info, IFLA_INFO_DATA, &data);
        let mut m = Self::ifinfo(0, IFF_NOARP, IFF_NOARP);
        named(&mut m, name);
        push_attr(&mut m, IFLA_LINKINFO, &info);
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &m)
            .map(|_| ())
            .map_err(|e| anyhow!("creating veth {name} (peer {peer}): {e}"))
    }

    /// `ip link set <index> up`.
    pub fn link_set_up(&mut self, index: u32) -> Result<()> {
        self.request(RTM_NEWLINK, 0, &Self::ifinfo(index, IFF_UP, IFF_UP))
            .map(|_| ())
            .map_err(|e| anyhow!("setting link #{index} up: {e}"))
    }

    /// `ip link del <index>`; a link that is already gone is fine.
    pub fn link_delete(&mut self, index: u32) -> Result<()> {
        match self.request(RTM_DELLINK, 0, &Self::ifinfo(index, 0, 0)) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.downcast_ref::<io::Error>().and_then(|e| e.raw_os_error()),
                    Some(libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow!("deleting link #{index}: {e}")),
        }
    }

    /// The MAC of a veth's peer, which may live in another namespace (the pod's): asked for by
    /// the peer's ifindex in the namespace the kernel names by `link_netnsid`.
    pub fn peer_mac(&mut self, link: &Link) -> Result<Option<[u8; 6]>> {
        let Some(peer) = link.link else {
            return Ok(None);
        };
        let mut req = vec![0u8; 16];
        req[4..8].copy_from_slice(&(peer as i32).to_ne_bytes());
        if let Some(nsid) = link.link_netnsid {
            push_attr(&mut req, IFLA_TARGET_NETNSID, &nsid.to_ne_bytes());
        }
        let reply = match self.request(RTM_GETLINK, 0, &req) {
            Ok(r) => r,
            Err(e)
                if e.downcast_ref::<io::Error>().and_then(|e| e.raw_os_error())
                    == Some(libc::ENODEV) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(reply
            .iter()
            .filter_map(|(_, p)| parse_link(p))
            .find_map(|l| l.mac))
    }

    /// IPv4 addresses of an interface, as (address, prefix length).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut req = vec![0u8; 8];
        req[0] = AF_INET;
        let mut out = Vec::new();
        for (_, p) in self.request(RTM_GETADDR, NLM_F_DUMP, &req)? {
            if p.len() < 8 || u32::from_ne_bytes(p[4..8].try_into()?) != index {
                continue;
            }
            let prefix = p[1];
            let mut addr = None;
            for (ty, d) in attrs(&p[8..]) {
                if (ty == IFA_LOCAL || (ty == IFA_ADDRESS && addr.is_none())) && d.len() == 4 {
                    addr = Some(Ipv4Addr::new(d[0], d[1], d[2], d[3]));
                }
            }
            if let Some(a) = addr {
                out.push((a, prefix));
            }
        }
        Ok(out)
    }

    /// `ip route get <dst> oif <oif>`: the gateway (None when on-link) and the output interface,
    /// among the routes out of `oif` (so ipipd's own routes into the tunnel device are skipped).
    pub fn route_get(
        &mut self,
        dst: Ipv4Addr,
        oif: u32,
    ) -> Result<(Option<Ipv4Addr>, Option<u32>)> {
        let mut req = vec![0u8; 12];
        req[0] = AF_INET;
        req[1] = 32;
        push_attr(&mut req, RTA_DST, &dst.octets());
        push_attr(&mut req, RTA_OIF, &oif.to_ne_bytes());
        let mut gw = None;
        let mut oif = None;
        for (_, p) in self.request(RTM_GETROUTE, 0, &req)? {
            if p.len() < 12 {
                continue;
            }
            for (ty, d) in attrs(&p[12..]) {
                match ty {
                    RTA_GATEWAY if d.len() == 4 => gw = Some(Ipv4Addr::new(d[0], d[1], d[2], d[3])),
                    RTA_OIF => oif = u32_of(d),
                    _ => {}
                }
            }
        }
        Ok((gw, oif))
    }

    /// The MAC of neighbour `dst` on interface `ifindex`, when the kernel's entry is in a state
    /// whose MAC it would use itself (reachable, stale, delay, probe, permanent).
    pub fn neighbour(&mut self, dst: Ipv4Addr, ifindex: u32) -> Result<Option<[u8; 6]>> {
        let mut req = vec![0u8; 12];
        req[0] = AF_INET;
        req[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        push_attr(&mut req, NDA_DST, &dst.octets());
        let reply = match self.request(RTM_GETNEIGH, 0, &req) {
            Ok(r) => r,
            // No entry (or a kernel without the single-entry get, before 4.20).
            Err(e)
                if matches!(
                    e.downcast_ref::<io::Error>().and_then(|e| e.raw_os_error()),
                    Some(libc::ENOENT | libc::EINVAL | libc::EOPNOTSUPP)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        for (ty, p) in reply {
            if ty != RTM_NEWNEIGH || p.len() < 12 {
                continue;
            }
            let state = u16::from_ne_bytes([p[8], p[9]]);
            if state & NUD_VALID == 0 {
                continue;
            }
            for (ty, d) in attrs(&p[12..]) {
                if ty == NDA_LLADDR && d.len() == 6 {
                    return Ok(Some(d.try_into()?));
                }
            }
        }
        Ok(None)
    }

    /// Asks the kernel to resolve neighbour `dst` on `ifindex` now (`NTF_USE`: as if a packet
    /// were waiting for it, without one), so that the programs find its MAC.
    pub fn neighbour_resolve(&mut self, dst: Ipv4Addr, ifindex: u32) -> Result<()> {
        const NTF_USE: u8 = 0x01;
        let mut req = vec![0u8; 12];
        req[0] = AF_INET;
        req[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        req[10] = NTF_USE;
        push_attr(&mut req, NDA_DST, &dst.octets());
        self.request(RTM_NEWNEIGH, NLM_F_CREATE, &req)
            .map(|_| ())
            .map_err(|e| anyhow!("resolving neighbour {dst} on #{ifindex}: {e}"))
    }

    fn route_msg(route: &Route) -> Vec<u8> {
        let (dst, len) = route.dst();
        let (ty, scope, flags) = match route {
            Route::Via { .. } => (RTN_UNICAST, RT_SCOPE_UNIVERSE, RTNH_F_ONLINK),
            Route::Dev { .. } | Route::Tunnel { .. } => (RTN_UNICAST, RT_SCOPE_LINK, 0),
            Route::Blackhole { .. } => (RTN_BLACKHOLE, RT_SCOPE_UNIVERSE, 0),
        };
        let mut m = vec![AF_INET, len, 0, 0, RT_TABLE_MAIN, RTPROT_IPIPD, scope, ty];
        m.extend_from_slice(&flags.to_ne_bytes());
        push_attr(&mut m, RTA_TABLE, &(RT_TABLE_MAIN as u32).to_ne_bytes());
        push_attr(&mut m, RTA_DST, &dst.octets());
        match route {
            Route::Via {
                gateway, oif, mtu, ..
            } => {
                push_attr(&mut m, RTA_GATEWAY, &gateway.octets());
                push_attr(&mut m, RTA_OIF, &oif.to_ne_bytes());
                let mut metrics = Vec::new();
                push_attr(&mut metrics, RTAX_MTU, &mtu.to_ne_bytes());
                push_attr(&mut m, RTA_METRICS, &metrics);
            }
            Route::Dev { oif, .. } => push_attr(&mut m, RTA_OIF, &oif.to_ne_bytes()),
            Route::Tunnel { oif, src, .. } => {
                push_attr(&mut m, RTA_OIF, &oif.to_ne_bytes());
                push_attr(&mut m, RTA_PREFSRC, &src.octets());
            }
            Route::Blackhole { .. } => {}
        }
        m
    }

    /// Installs (or replaces) one route.
    pub fn route_replace(&mut self, route: &Route) -> Result<()> {
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            &Self::route_msg(route),
        )
        .map(|_| ())
        .map_err(|e| anyhow!("route {route}: {e}"))
    }

    /// Removes one route; a route that is already gone is fine.
    pub fn route_delete(&mut self, route: &Route) -> Result<()> {
        match self.request(RTM_DELROUTE, 0, &Self::route_msg(route)) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.downcast_ref::<io::Error>().and_then(|e| e.raw_os_error()),
                    Some(libc::ESRCH) | Some(libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow!("deleting route {route}: {e}")),
        }
    }

    /// Every IPv4 route in the main table with ipipd's protocol, as (destination, raw message),
    /// for removal of what a previous run left.
    pub fn owned_routes(&mut self) -> Result<Vec<Route>> {
        let mut req = vec![0u8; 12];
        req[0] = AF_INET;
        let mut out = Vec::new();
        for (_, p) in self.request(RTM_GETROUTE, NLM_F_DUMP, &req)? {
            if p.len() < 12 || p[5] != RTPROT_IPIPD {
                continue;
            }
            let (len, ty) = (p[1], p[7]);
            let (mut dst, mut gw, mut oif, mut mtu) = (Ipv4Addr::UNSPECIFIED, None, 0, 0);
            let mut src = None;
            for (t, d) in attrs(&p[12..]) {
                match t {
                    RTA_DST if d.len() == 4 => dst = Ipv4Addr::new(d[0], d[1], d[2], d[3]),
                    RTA_GATEWAY if d.len() == 4 => gw = Some(Ipv4Addr::new(d[0], d[1], d[2], d[3])),
                    RTA_OIF => oif = u32_of(d).unwrap_or(0),
                    RTA_PREFSRC if d.len() == 4 => {
                        src = Some(Ipv4Addr::new(d[0], d[1], d[2], d[3]))
                    }
                    RTA_METRICS => {
                        for (mt, md) in attrs(d) {
                            if mt == RTAX_MTU {
                                mtu = u32_of(md).unwrap_or(0);
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push(match (ty, gw) {
                (RTN_BLACKHOLE, _) => Route::Blackhole { dst: (dst, len) },
                (_, Some(gateway)) => Route::Via {
                    dst: (dst, len),
                    gateway,
                    oif,
                    mtu,
                },
                _ if let Some(src) = src => Route::Tunnel {
                    dst: (dst, len),
                    oif,
                    src,
                },
                _ => Route::Dev {
                    dst: (dst, len),
                    oif,
                },
            });
        }
        Ok(out)
    }

    /// Reads the pending link events (non-blocking). Call when the fd is readable.
    pub fn events(&mut self) -> Result<Vec<LinkEvent>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match self.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                // The kernel dropped events (ENOBUFS): the caller resyncs from a full dump.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.push(LinkEvent::Resync);
                    return Ok(out);
                }
                Err(e) => return Err(e.into()),
            };
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into()?) as usize;
                let mty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into()?);
                if len < 16 || off + len > n {
                    break;
                }
                let payload = &buf[off + 16..off + len];
                match mty {
                    RTM_NEWLINK | RTM_DELLINK => {
                        if let Some(link) = parse_link(payload) {
                            out.push(if mty == RTM_NEWLINK {
                                LinkEvent::New(link)
                            } else {
                                LinkEvent::Del {
                                    index: link.index,
                                    name: link.name,
                                }
                            });
                        }
                    }
                    // An IPv4 neighbour, or (rtmsg: family, dst_len, src_len, tos, table,
                    // protocol, …) an IPv4 route that is not one of ours; one event per batch.
                    RTM_NEWNEIGH | RTM_DELNEIGH | RTM_NEWROUTE | RTM_DELROUTE
                        if payload.first() == Some(&AF_INET)
                            && (matches!(mty, RTM_NEWNEIGH | RTM_DELNEIGH)
                                || payload.get(5) != Some(&RTPROT_IPIPD))
                            && !matches!(out.last(), Some(LinkEvent::NextHops)) =>
                    {
                        out.push(LinkEvent::NextHops);
                    }
                    _ => {}
                }
                off += align(len);
            }
        }
    }
}
