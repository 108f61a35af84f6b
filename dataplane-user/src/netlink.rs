//! The kernel's network state, through the rust-netlink crates (`rtnetlink` for requests,
//! `netlink-packet-route` for the messages): links (with a veth peer's MAC across namespaces),
//! IPv4 addresses, route and neighbour lookups, the slow-path routes ipipd owns, and the link,
//! neighbour and route events the daemon follows.
//!
//! ipipd's routes carry their own protocol number ([`RTPROT_IPIPD`]), so a restarted daemon
//! finds every route a previous one left and reconciles them. The conversions between ipipd's
//! [`Route`] and the kernel's message are pure functions ([`route_message`], [`parse_route`]).

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Result, anyhow};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
        RouteScope, RouteType,
    },
};
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, MulticastGroup, RouteMessageBuilder,
    packet_core::{NetlinkMessage, NetlinkPayload},
};

use crate::net::Ipv4Net;

/// The `proto` of every route ipipd installs (`ip route show proto 180`).
pub const RTPROT_IPIPD: u8 = 180;

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
    /// Administratively up (IFF_UP).
    pub up: bool,
}

/// A link event of the kernel's, as the daemon's owner acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A link appeared or changed.
    LinkNew(Link),
    /// A link went away.
    LinkDel { index: u32, name: String },
    /// The kernel dropped events (the socket's buffer overran): resync from a full dump.
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

/// The kernel message that installs (or deletes) `route` in the main table, with ipipd's
/// protocol.
pub fn route_message(route: &Route) -> RouteMessage {
    let (dst, len) = route.dst();
    let b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, len)
        .table_id(u32::from(RouteHeader::RT_TABLE_MAIN))
        .protocol(RouteProtocol::Other(RTPROT_IPIPD));
    match route {
        Route::Via {
            gateway, oif, mtu, ..
        } => {
            let mut b = b
                .gateway(*gateway)
                .output_interface(*oif)
                .scope(RouteScope::Universe)
                .onlink();
            b.get_mut()
                .attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(*mtu)]));
            b.build()
        }
        Route::Dev { oif, .. } => b.output_interface(*oif).scope(RouteScope::Link).build(),
        Route::Tunnel { oif, src, .. } => b
            .output_interface(*oif)
            .pref_source(*src)
            .scope(RouteScope::Link)
            .build(),
        Route::Blackhole { .. } => b
            .kind(RouteType::BlackHole)
            .scope(RouteScope::Universe)
            .build(),
    }
}

/// ipipd's route in a kernel message: None when it is not an IPv4 route of the main table with
/// ipipd's protocol.
pub fn parse_route(m: &RouteMessage) -> Option<Route> {
    let h = &m.header;
    if h.address_family != AddressFamily::Inet
        || h.protocol != RouteProtocol::Other(RTPROT_IPIPD)
        || table_of(m) != u32::from(RouteHeader::RT_TABLE_MAIN)
    {
        return None;
    }
    let (mut dst, mut gw, mut oif, mut mtu, mut src) = (Ipv4Addr::UNSPECIFIED, None, 0, 0, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
            RouteAttribute::Oif(o) => oif = *o,
            RouteAttribute::PrefSource(RouteAddress::Inet(s)) => src = Some(*s),
            RouteAttribute::Metrics(ms) => {
                for x in ms {
                    if let RouteMetric::Mtu(v) = x {
                        mtu = *v;
                    }
                }
            }
            _ => {}
        }
    }
    let dst = (dst, h.destination_prefix_length);
    Some(match (h.kind, gw, src) {
        (RouteType::BlackHole, _, _) => Route::Blackhole { dst },
        (_, Some(gateway), _) => Route::Via {
            dst,
            gateway,
            oif,
            mtu,
        },
        (_, None, Some(src)) => Route::Tunnel { dst, oif, src },
        (_, None, None) => Route::Dev { dst, oif },
    })
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// A link as ipipd reads it from the kernel's message.
pub fn parse_link(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        link: None,
        link_netnsid: None,
        kind: None,
        up: m
            .header
            .flags
            .contains(netlink_packet_route::link::LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = a.as_slice().try_into().ok(),
            LinkAttribute::Mtu(v) => link.mtu = *v,
            LinkAttribute::Link(v) => link.link = Some(*v),
            LinkAttribute::LinkNetNsId(v) => link.link_netnsid = Some(*v),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    link
}

/// What a link notification means to the daemon's owner, if anything.
pub fn link_event_of(msg: &NetlinkMessage<RouteNetlinkMessage>) -> Option<Event> {
    match &msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
            Some(Event::LinkNew(parse_link(l)))
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
            let l = parse_link(l);
            Some(Event::LinkDel {
                index: l.index,
                name: l.name,
            })
        }
        NetlinkPayload::Overrun(_) => Some(Event::Resync),
        _ => None,
    }
}

/// Whether a notification may have changed a peer's next hop: an IPv4 neighbour, an IPv4
/// route that is not ipipd's own, or notifications the kernel dropped (a check reads every
/// next hop anyway).
pub fn moves_next_hops(msg: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    match &msg.payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
        ) => n.header.family == AddressFamily::Inet,
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r),
        ) => {
            r.header.address_family == AddressFamily::Inet
                && r.header.protocol != RouteProtocol::Other(RTPROT_IPIPD)
        }
        NetlinkPayload::Overrun(_) => true,
        _ => false,
    }
}

/// The errno of a netlink error answer, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// A netlink error as the operator should read it: the errno's text.
fn describe(e: rtnetlink::Error) -> anyhow::Error {
    match &e {
        rtnetlink::Error::NetlinkError(m) => anyhow!(m.to_io()),
        _ => anyhow!(e),
    }
}

/// A request's outcome where the errnos in `absent` mean "not there" (None) rather than a
/// failure; a failure says what was asked.
fn unless_absent<T>(
    r: Result<T, rtnetlink::Error>,
    absent: &[i32],
    what: impl FnOnce() -> String,
) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if errno(&e).is_some_and(|n| absent.contains(&n)) => Ok(None),
        Err(e) => Err(describe(e).context(what())),
    }
}

/// The one link a get request names; None when there is none (ENODEV).
async fn one_link(
    req: rtnetlink::LinkGetRequest,
    what: impl FnOnce() -> String,
) -> Result<Option<Link>> {
    let r = req.execute().try_next().await;
    Ok(unless_absent(r, &[libc::ENODEV], what)?
        .flatten()
        .as_ref()
        .map(parse_link))
}

/// Requests in flight at once on the netlink socket when many are sent (routes, route
/// lookups, neighbour resolutions): one after another, a thousand of them were most of a
/// reconcile.
pub const IN_FLIGHT: usize = 64;

/// A request connection to the kernel's rtnetlink (its I/O task runs on the current tokio
/// runtime). Cheap to clone.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection; needs a tokio runtime.
    pub fn new() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| anyhow!("netlink socket: {e}"))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for requests this module has no wrapper for.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Every link in this namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        // Each message is reduced to a Link as it arrives: a full LinkMessage (statistics and
        // all) is kilobytes, and a node has thousands of veths.
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|m| parse_link(&m))
            .try_collect()
            .await
            .map_err(|e| describe(e).context("listing links"))
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let req = self.handle.link().get().match_name(name);
        one_link(req, || format!("looking up link {name}")).await
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let req = self.handle.link().get().match_index(index);
        one_link(req, || format!("looking up link #{index}")).await
    }

    /// `ip link add <name> mtu <mtu> arp off type veth peer name <peer> mtu <mtu> arp off`,
    /// both down. Fails when either name is taken.
    pub async fn veth_add_noarp(&self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .arp(false)
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .arp(false)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| describe(e).context(format!("creating veth {name} (peer {peer})")))
    }

    /// `ip link set <index> up`.
    pub async fn link_set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| describe(e).context(format!("setting link #{index} up")))
    }

    /// `ip link del <index>`; a link that is already gone is fine.
    pub async fn link_delete(&self, index: u32) -> Result<()> {
        let r = self.handle.link().del(index).execute().await;
        unless_absent(r, &[libc::ENODEV], || format!("deleting link #{index}")).map(|_| ())
    }

    /// The MAC of a veth's peer, which may live in another namespace (the pod's): asked for by
    /// the peer's ifindex in the namespace the kernel names by `link_netnsid`.
    pub async fn peer_mac(&self, link: &Link) -> Result<Option<[u8; 6]>> {
        let Some(peer) = link.link else {
            return Ok(None);
        };
        let mut req = self.handle.link().get().match_index(peer);
        if let Some(nsid) = link.link_netnsid {
            // IFLA_IF_NETNSID (= IFLA_TARGET_NETNSID): look the index up in that namespace.
            req.message_mut()
                .attributes
                .push(LinkAttribute::IfNetnsId(nsid));
        }
        let peer = one_link(req, || format!("the peer of {}", link.name)).await?;
        Ok(peer.and_then(|p| p.mac))
    }

    /// Whether `addr` is assigned to an interface of this namespace (a route with it as its
    /// preferred source is refused while it is not).
    pub async fn has_address(&self, addr: Ipv4Addr) -> Result<bool> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_address_filter(std::net::IpAddr::V4(addr))
            .execute()
            .try_collect()
            .await
            .map_err(|e| describe(e).context(format!("looking for address {addr}")))?;
        Ok(!msgs.is_empty())
    }

    /// The IPv4 subnets an interface's addresses lie in.
    pub async fn subnets(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        Ok(self
            .subnets_exact(index)
            .await?
            .into_iter()
            .map(|(a, l)| Ipv4Net::containing(a, l))
            .collect())
    }

    /// An interface's IPv4 address messages.
    async fn ipv4_addresses(&self, index: u32) -> Result<Vec<AddressMessage>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| describe(e).context(format!("addresses of #{index}")))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
            .collect())
    }

    /// An interface's IPv4 addresses with their prefix lengths.
    pub async fn subnets_exact(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut out = Vec::new();
        for m in self.ipv4_addresses(index).await? {
            let mut addr = None;
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(std::net::IpAddr::V4(v)) => addr = Some(*v),
                    AddressAttribute::Address(std::net::IpAddr::V4(v)) if addr.is_none() => {
                        addr = Some(*v)
                    }
                    _ => {}
                }
            }
            if let Some(a) = addr {
                out.push((a, m.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Makes `want` (a /32) the only IPv4 address of interface `index` (None: no address);
    /// whether anything changed. For ipipd's tunnel device, whose addresses are ipipd's.
    pub async fn set_only_address(&self, index: u32, want: Option<Ipv4Addr>) -> Result<bool> {
        let mut have = false;
        let mut changed = false;
        for m in self.ipv4_addresses(index).await? {
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            if local.is_some() && local == want && m.header.prefix_len == 32 {
                have = true;
                continue;
            }
            self.handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(|e| describe(e).context(format!("deleting an address of #{index}")))?;
            changed = true;
        }
        if let (Some(a), false) = (want, have) {
            self.handle
                .address()
                .add(index, std::net::IpAddr::V4(a), 32)
                .execute()
                .await
                .map_err(|e| describe(e).context(format!("adding {a}/32 to #{index}")))?;
            changed = true;
        }
        Ok(changed)
    }

    /// `ip route get <dst> oif <oif>`: the gateway (None when on-link) and the output interface,
    /// among the routes out of `oif` (so ipipd's own routes into the tunnel device are skipped).
    pub async fn route_get(
        &self,
        dst: Ipv4Addr,
        oif: u32,
    ) -> Result<(Option<Ipv4Addr>, Option<u32>)> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .output_interface(oif)
            .build();
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(|e| describe(e).context(format!("route get {dst} oif #{oif}")))?;
        let (mut gw, mut out_if) = (None, None);
        for m in &msgs {
            for a in &m.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(o) => out_if = Some(*o),
                    _ => {}
                }
            }
        }
        Ok((gw, out_if))
    }

    /// The IPv4 neighbours on `ifindex` whose MAC the kernel itself would send to (reachable,
    /// stale, delay, probe, permanent, noarp), by address.
    pub async fn neighbours(&self, ifindex: u32) -> Result<BTreeMap<Ipv4Addr, [u8; 6]>> {
        let msgs: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(|e| describe(e).context("listing neighbours"))?;
        let mut out = BTreeMap::new();
        for m in msgs {
            let valid = matches!(
                m.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            );
            if m.header.ifindex != ifindex || !valid {
                continue;
            }
            let (mut dst, mut mac) = (None, None);
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(*d),
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                    }
                    _ => {}
                }
            }
            if let (Some(d), Some(m)) = (dst, mac) {
                out.insert(d, m);
            }
        }
        Ok(out)
    }

    /// Asks the kernel to resolve neighbour `dst` on `ifindex` now (`NTF_USE`: as if a packet
    /// were waiting for it, without one), so that the programs find its MAC.
    async fn neighbour_resolve(&self, dst: Ipv4Addr, ifindex: u32) -> Result<(), rtnetlink::Error> {
        self.handle
            .neighbours()
            .add(ifindex, dst.into())
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await
    }

    /// Asks for each of `vias` to be resolved on `ifindex` (`Netlink::neighbour_resolve`),
    /// [`IN_FLIGHT`] requests at once; a refusal is logged (debug) and the rest go on. How many
    /// the kernel refused because its neighbour table is full (ENOBUFS: as many entries as
    /// `net.ipv4.neigh.default.gc_thresh3` and none to collect).
    pub async fn neighbours_resolve(
        &self,
        vias: impl IntoIterator<Item = Ipv4Addr>,
        ifindex: u32,
    ) -> usize {
        futures::stream::iter(vias)
            .map(|via| async move { (via, self.neighbour_resolve(via, ifindex).await) })
            .buffer_unordered(IN_FLIGHT)
            .fold(0, |full, (via, r)| async move {
                match r {
                    Ok(()) => full,
                    Err(e) if errno(&e) == Some(libc::ENOBUFS) => full + 1,
                    Err(e) => {
                        log::debug!("resolving neighbour {via} on #{ifindex}: {:#}", describe(e));
                        full
                    }
                }
            })
            .await
    }

    /// Installs (or replaces) one route.
    pub async fn route_replace(&self, route: &Route) -> Result<()> {
        self.handle
            .route()
            .add(route_message(route))
            .replace()
            .execute()
            .await
            .map_err(|e| describe(e).context(format!("route {route}")))
    }

    /// Removes one route; a route that is already gone (or its device) is fine.
    pub async fn route_delete(&self, route: &Route) -> Result<()> {
        let r = self
            .handle
            .route()
            .del(route_message(route))
            .execute()
            .await;
        unless_absent(r, &[libc::ESRCH, libc::ENODEV], || {
            format!("deleting route {route}")
        })
        .map(|_| ())
    }

    /// Removes the interface's `clsact` qdisc (`tc qdisc del dev X clsact`); one that is
    /// gone already, with its interface or not, is fine.
    pub async fn clsact_delete(&self, ifindex: u32) -> Result<()> {
        let mut req = self.handle.clone().qdisc().del(ifindex as i32);
        let h = &mut req.message_mut().header;
        h.parent = netlink_packet_route::tc::TcHandle::CLSACT;
        h.handle = netlink_packet_route::tc::TcHandle {
            major: u16::MAX,
            minor: 0,
        };
        unless_absent(
            req.execute().await,
            &[libc::ENOENT, libc::ENODEV, libc::EINVAL],
            || format!("removing the clsact qdisc of #{ifindex}"),
        )
        .map(|_| ())
    }

    /// Every IPv4 route in the main table with ipipd's protocol.
    pub async fn owned_routes(&self) -> Result<Vec<Route>> {
        Ok(self.main_routes().await?.0)
    }

    /// One dump of the main table's IPv4 routes: ipipd's, and the others that a route of
    /// ipipd's to the same prefix would replace (metric 0, TOS 0), by prefix.
    pub async fn main_routes(
        &self,
    ) -> Result<(Vec<Route>, BTreeMap<(Ipv4Addr, u8), RouteMessage>)> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| describe(e).context("listing routes"))?;
        let mut owned = Vec::new();
        let mut others = BTreeMap::new();
        for m in msgs {
            if let Some(r) = parse_route(&m) {
                owned.push(r);
            } else if let Some(dst) = replaceable(&m) {
                others.insert(dst, m);
            }
        }
        Ok((owned, others))
    }

    /// Puts a route back as it was dumped (replacing ipipd's to the same prefix, if any).
    pub async fn route_restore(&self, m: &RouteMessage) -> Result<()> {
        self.handle
            .route()
            .add(m.clone())
            .replace()
            .execute()
            .await
            .map_err(|e| describe(e).context(format!("restoring route {}", route_summary(m))))
    }

    /// `ip link set <index> mtu <mtu>`.
    pub async fn link_set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| describe(e).context(format!("setting the MTU of link #{index}")))
    }
}

/// The prefix of a main-table IPv4 route that is not ipipd's and that ipipd's route to the
/// same prefix would replace (the kernel keys a route by prefix, TOS, metric and table).
pub fn replaceable(m: &RouteMessage) -> Option<(Ipv4Addr, u8)> {
    let h = &m.header;
    let metric = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    let dst = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    (h.address_family == AddressFamily::Inet
        && h.protocol != RouteProtocol::Other(RTPROT_IPIPD)
        && table_of(m) == u32::from(RouteHeader::RT_TABLE_MAIN)
        && h.tos == 0
        && metric.unwrap_or(0) == 0
        && matches!(
            h.kind,
            RouteType::Unicast
                | RouteType::BlackHole
                | RouteType::Unreachable
                | RouteType::Prohibit
        ))
    .then_some((dst, h.destination_prefix_length))
}

/// A route as `ip route` would print it, roughly: for logs and the state record.
pub fn route_summary(m: &RouteMessage) -> String {
    let h = &m.header;
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut s = String::new();
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => s += &format!(" via {g}"),
            RouteAttribute::Oif(o) => s += &format!(" dev #{o}"),
            RouteAttribute::PrefSource(RouteAddress::Inet(p)) => s += &format!(" src {p}"),
            _ => {}
        }
    }
    let kind = match h.kind {
        RouteType::Unicast => String::new(),
        k => format!("{k:?} ").to_lowercase(),
    };
    format!(
        "{kind}{dst}/{}{s} proto {:?} scope {:?}",
        h.destination_prefix_length, h.protocol, h.scope
    )
    .to_lowercase()
}

/// The receive buffer of an event socket (SO_RCVBUFFORCE; the kernel charges only what is
/// queued). The default (`net.core.rmem_default`, ~208 KiB) holds ~200 notifications: a
/// neighbour table's churn at thousands of peers, or a pod churn's veths, overran it.
const EVENT_RCVBUF: usize = 8 << 20;

/// A multicast subscription to `groups` with a receive buffer of [`EVENT_RCVBUF`], its
/// notifications through `of` (its I/O task runs on the current tokio runtime).
fn subscribe<T>(
    groups: &[MulticastGroup],
    of: fn(&NetlinkMessage<RouteNetlinkMessage>) -> Option<T>,
) -> Result<impl Stream<Item = T> + Unpin> {
    use std::os::fd::AsRawFd as _;
    let (mut conn, _handle, messages) = rtnetlink::new_multicast_connection(groups)
        .map_err(|e| anyhow!("netlink event socket: {e}"))?;
    let fd = conn.socket_mut().as_raw_fd();
    let size = libc::c_int::try_from(EVENT_RCVBUF)?;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `fd` is the connection's open socket; the option's value is a c_int.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // (Without CAP_NET_ADMIN, SO_RCVBUF: up to net.core.rmem_max.)
        if r == 0 {
            break;
        }
    }
    tokio::spawn(conn);
    Ok(messages.filter_map(move |(m, _)| std::future::ready(of(&m))))
}

/// The kernel's link notifications, as the events the daemon's owner acts on.
pub fn link_events() -> Result<impl Stream<Item = Event> + Unpin> {
    subscribe(&[MulticastGroup::Link], link_event_of)
}

/// One item per notification that may have moved a peer's next hop ([`moves_next_hops`]), on
/// a socket of its own: a storm of neighbour events (thousands of peers' ARP failing) costs
/// a next-hop check, never the owner a resync.
pub fn next_hop_events() -> Result<impl Stream<Item = ()> + Unpin> {
    subscribe(&[MulticastGroup::Neigh, MulticastGroup::Ipv4Route], |m| {
        moves_next_hops(m).then_some(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::{neighbour::NeighbourMessage, route::RouteFlags};

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn every_kind() -> Vec<Route> {
        vec![
            Route::Via {
                dst: (a("192.168.179.0"), 26),
                gateway: a("172.31.242.157"),
                oif: 2,
                mtu: 1480,
            },
            Route::Dev {
                dst: (a("192.168.83.129"), 32),
                oif: 7,
            },
            Route::Tunnel {
                dst: (a("192.168.179.0"), 26),
                oif: 9,
                src: a("172.31.242.156"),
            },
            Route::Blackhole {
                dst: (a("192.168.83.128"), 26),
            },
        ]
    }

    #[test]
    fn every_route_kind_survives_the_kernel_message() {
        for r in every_kind() {
            assert_eq!(parse_route(&route_message(&r)), Some(r));
        }
    }

    #[test]
    fn route_messages_carry_ipipds_protocol_scope_and_type() {
        let [via, dev, tunnel, blackhole] = every_kind().try_into().unwrap();
        let m = route_message(&via);
        assert_eq!(m.header.protocol, RouteProtocol::Other(180));
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_MAIN);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(route_message(&dev).header.scope, RouteScope::Link);
        assert_eq!(route_message(&tunnel).header.scope, RouteScope::Link);
        let b = route_message(&blackhole);
        assert_eq!(b.header.kind, RouteType::BlackHole);
        assert!(
            !b.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(_)))
        );
    }

    #[test]
    fn routes_of_others_are_not_ipipds() {
        let mut m = route_message(&every_kind()[1]);
        m.header.protocol = RouteProtocol::Kernel;
        assert_eq!(parse_route(&m), None);
        let mut m = route_message(&every_kind()[1]);
        m.header.table = 100;
        assert_eq!(parse_route(&m), None);
    }

    /// The routes of others that ipipd's route to the same prefix would replace (and that are
    /// recorded for teardown first): main table, metric 0, TOS 0; never ipipd's own.
    #[test]
    fn what_ipipds_route_would_replace() {
        let dst = (a("192.168.83.129"), 32);
        let theirs = || {
            let mut m = route_message(&Route::Dev { dst, oif: 7 });
            m.header.protocol = RouteProtocol::Static;
            m
        };
        assert_eq!(replaceable(&theirs()), Some(dst));
        let mut blackhole = route_message(&Route::Blackhole {
            dst: (a("192.168.83.128"), 26),
        });
        blackhole.header.protocol = RouteProtocol::Other(12);
        assert_eq!(replaceable(&blackhole), Some((a("192.168.83.128"), 26)));
        assert_eq!(
            replaceable(&route_message(&Route::Dev { dst, oif: 7 })),
            None,
            "ipipd's"
        );
        let mut m = theirs();
        m.attributes.push(RouteAttribute::Priority(100));
        assert_eq!(replaceable(&m), None, "another metric");
        let mut m = theirs();
        m.header.tos = 16;
        assert_eq!(replaceable(&m), None, "another TOS");
        let mut m = theirs();
        m.header.table = 100;
        assert_eq!(replaceable(&m), None, "another table");
    }

    #[test]
    fn events_that_matter() {
        let mut link = LinkMessage::default();
        link.header.index = 5;
        link.attributes.push(LinkAttribute::IfName("cali1".into()));
        link.attributes
            .push(LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]));
        let ev = |m: RouteNetlinkMessage| link_event_of(&NetlinkMessage::from(m));
        match ev(RouteNetlinkMessage::NewLink(link.clone())) {
            Some(Event::LinkNew(l)) => {
                assert_eq!((l.index, l.name.as_str()), (5, "cali1"));
                assert_eq!(l.mac, Some([2, 0, 0, 0, 0, 1]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ev(RouteNetlinkMessage::DelLink(link)),
            Some(Event::LinkDel {
                index: 5,
                name: "cali1".into()
            })
        );
        let overrun = || {
            let mut m = NetlinkMessage::from(RouteNetlinkMessage::NewLink(LinkMessage::default()));
            m.payload = NetlinkPayload::Overrun(Vec::new());
            m
        };
        assert_eq!(link_event_of(&overrun()), Some(Event::Resync));
        // Our own routes change nothing about next hops; others' and neighbours may.
        let moves = |m: RouteNetlinkMessage| moves_next_hops(&NetlinkMessage::from(m));
        let ours = route_message(&every_kind()[0]);
        assert!(!moves(RouteNetlinkMessage::NewRoute(ours.clone())));
        assert_eq!(ev(RouteNetlinkMessage::NewRoute(ours.clone())), None);
        let mut theirs = ours;
        theirs.header.protocol = RouteProtocol::Boot;
        assert!(moves(RouteNetlinkMessage::DelRoute(theirs.clone())));
        assert_eq!(ev(RouteNetlinkMessage::DelRoute(theirs)), None);
        let mut neigh = NeighbourMessage::default();
        neigh.header.family = AddressFamily::Inet;
        assert!(moves(RouteNetlinkMessage::NewNeighbour(neigh.clone())));
        assert_eq!(ev(RouteNetlinkMessage::NewNeighbour(neigh.clone())), None);
        neigh.header.family = AddressFamily::Inet6;
        assert!(!moves(RouteNetlinkMessage::DelNeighbour(neigh)));
        assert!(!moves(RouteNetlinkMessage::NewLink(LinkMessage::default())));
        // Dropped notifications: a check reads every next hop again.
        assert!(moves_next_hops(&overrun()));
    }
}
