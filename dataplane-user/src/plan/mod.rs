//! The planner: what a desired state means for the maps and the kernel's slow-path routes,
//! given the interfaces, routes and neighbours as [`KernelView::read`] found them.
//!
//! [`plan`] is pure (no I/O, no clock, no logging): the same inputs give the same [`Plan`], and
//! the tests below pin it down. [`crate::apply`] is the only writer.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Result;
use dataplane_common::{
    Endpoint, Mode, ROUTE_F_ENCAP, ROUTE_F_L2, ROUTE_F_SAME_SUBNET, RouteKind, RouteValue,
};
use futures::StreamExt as _;
use netlink_packet_route::route::RouteMessage;

mod change;

pub use change::{Delta, Touched};

use crate::{
    config::{Config, EndpointCfg, Peer},
    datastore::model::IpipMode,
    net::Ipv4Net,
    netlink::{Link, Netlink, Route},
};

/// The interfaces of a view, found by index or by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    by_index: BTreeMap<u32, Link>,
    by_name: BTreeMap<String, u32>,
}

impl Links {
    pub fn by_index(&self, index: u32) -> Option<&Link> {
        self.by_index.get(&index)
    }

    pub fn by_name(&self, name: &str) -> Option<&Link> {
        self.by_name.get(name).and_then(|i| self.by_index.get(i))
    }

    pub fn insert(&mut self, link: Link) {
        self.by_name.insert(link.name.clone(), link.index);
        self.by_index.insert(link.index, link);
    }

    /// Takes `link` out (its name too, unless another link has it now).
    pub fn remove(&mut self, link: &Link) {
        self.by_index.remove(&link.index);
        if self.by_name.get(&link.name) == Some(&link.index) {
            self.by_name.remove(&link.name);
        }
    }
}

impl FromIterator<Link> for Links {
    fn from_iter<I: IntoIterator<Item = Link>>(links: I) -> Self {
        let mut out = Links::default();
        for l in links {
            out.insert(l);
        }
        out
    }
}

/// The kernel's state that a plan depends on, as read at one moment (reads only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelView {
    /// The interfaces (every one, or only the uplink for [`KernelView::read_next_hops`]).
    pub links: Links,
    /// The uplink's IPv4 subnets (for cross-subnet mode).
    pub uplink_nets: Vec<Ipv4Net>,
    /// How the kernel routes each peer out of the uplink: (gateway, output interface).
    pub peer_routes: BTreeMap<Ipv4Addr, (Option<Ipv4Addr>, Option<u32>)>,
    /// The uplink's neighbours with a usable MAC.
    pub neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// The pod-side MAC of endpoint veths whose MAC is neither configured nor already known,
    /// by host-side ifindex.
    pub pod_macs: BTreeMap<u32, [u8; 6]>,
    /// The slow-path routes ipipd owns now (`proto 180`).
    pub owned_routes: BTreeSet<Route>,
    /// The main table's other routes that a route of ipipd's to the same prefix replaces (a
    /// CNI's pod route, a routing daemon's blackhole), by prefix: recorded before they are.
    pub other_routes: BTreeMap<(Ipv4Addr, u8), RouteMessage>,
    /// The node's address is on no interface (the uplink is back but not yet addressed): the
    /// kernel refuses routes with it as their source.
    pub node_address_missing: bool,
}

/// The node's underlay: the uplink's ifindex (0 while the uplink is gone: then nothing is
/// routed out of it) and the underlay MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    pub uplink: u32,
    pub mtu: u32,
}

impl KernelView {
    /// Reads what planning `desired` needs, given the node's `links` (one dump, read first:
    /// the uplink is found in it). `known` are the endpoints the maps hold (a learnt pod MAC is
    /// not asked for again).
    pub async fn read(
        nl: &Netlink,
        desired: &Config,
        underlay: Underlay,
        links: Links,
        known: &BTreeMap<u32, Endpoint>,
    ) -> Result<Self> {
        let mut view = Self::next_hop_facts(nl, &Peers::of(desired, underlay), links).await?;
        for ep in desired.endpoints.iter().filter(|e| e.mac.is_none()) {
            let Some(link) = view.links.by_name(&ep.interface) else {
                continue;
            };
            if in_maps(known, link, ep) {
                continue;
            }
            if let Ok(Some(mac)) = nl.peer_mac(link).await {
                view.pod_macs.insert(link.index, mac);
            }
        }
        let (owned, others) = nl.main_routes().await?;
        view.owned_routes = owned.into_iter().collect();
        view.other_routes = others;
        Ok(view)
    }

    /// Reads only what the peers' next hops depend on (the periodic check): the uplink (its
    /// MAC), its subnets, the kernel's route to each peer, its neighbours.
    pub async fn read_next_hops(nl: &Netlink, peers: &Peers) -> Result<Self> {
        // Without the uplink (0: gone when the owner last looked; or gone since), nothing.
        let uplink = match peers.underlay.uplink {
            0 => None,
            i => nl.link_by_index(i).await?,
        };
        let Some(uplink) = uplink else {
            return Ok(KernelView::default());
        };
        Self::next_hop_facts(nl, peers, [uplink].into_iter().collect()).await
    }

    async fn next_hop_facts(nl: &Netlink, peers: &Peers, links: Links) -> Result<Self> {
        let uplink = peers.underlay.uplink;
        if uplink == 0 {
            // No uplink: no subnets, routes or neighbours out of it.
            return Ok(KernelView {
                links,
                ..KernelView::default()
            });
        }
        let uplink_nets = nl.subnets(uplink).await?;
        let peer_routes = peer_routes(nl, peers.addresses.iter().copied(), uplink).await;
        let neighbours = nl.neighbours(uplink).await?;
        let node_address_missing = !nl.has_address(peers.node_address).await?;
        Ok(KernelView {
            links,
            uplink_nets,
            peer_routes,
            neighbours,
            node_address_missing,
            ..KernelView::default()
        })
    }
}

/// What the peers' next hops depend on in a desired state: the peers, the node's mode and
/// address, and the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    pub addresses: Vec<Ipv4Addr>,
    pub mode: Mode,
    pub node_address: Ipv4Addr,
    pub underlay: Underlay,
}

impl Peers {
    pub fn of(cfg: &Config, underlay: Underlay) -> Self {
        Peers {
            addresses: cfg.peers.iter().map(|p| p.address).collect(),
            mode: cfg.node.mode,
            node_address: cfg.node.address,
            underlay,
        }
    }
}

/// The kernel's own answer for how each of `peers` is routed out of `uplink` (policy routing
/// included), many requests in flight on the one socket.
pub(crate) async fn peer_routes(
    nl: &Netlink,
    peers: impl Iterator<Item = Ipv4Addr>,
    uplink: u32,
) -> BTreeMap<Ipv4Addr, (Option<Ipv4Addr>, Option<u32>)> {
    futures::stream::iter(peers)
        .map(|a| async move { (a, nl.route_get(a, uplink).await.unwrap_or((None, None))) })
        .buffer_unordered(crate::netlink::IN_FLIGHT)
        .collect()
        .await
}

/// Whether `link` holds, in the maps (`known`), the endpoint `ep` already: its pod MAC was
/// learnt then and is not asked for again.
pub(crate) fn in_maps(known: &BTreeMap<u32, Endpoint>, link: &Link, ep: &EndpointCfg) -> bool {
    known
        .get(&link.index)
        .is_some_and(|k| k.pod_ip == ep.address.octets())
}

/// What a desired state puts in the maps and routes, for one moment's kernel view.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub routes: BTreeMap<(Ipv4Addr, u8), RouteValue>,
    /// Endpoints by host-side ifindex.
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// Endpoints still waiting for their interface (or its MAC): address → interface.
    pub pending: BTreeMap<Ipv4Addr, String>,
    pub slow_path: BTreeSet<Route>,
    /// Each peer's next hop, as the routes and slow-path routes above were built from.
    pub next_hops: BTreeMap<Ipv4Addr, NextHop>,
}

impl Plan {
    pub fn unresolved(&self) -> BTreeSet<Ipv4Addr> {
        unresolved(&self.next_hops)
    }
}

/// A peer's next hop as the kernel routes it: the address packets go via (the peer itself, or
/// a gateway) and, when the kernel's neighbour table knows it on the uplink, the L2 the programs
/// write (its MAC, the uplink's) instead of asking the FIB per packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub via: Ipv4Addr,
    pub l2: Option<([u8; 6], [u8; 6])>,
}

/// The next hops whose MAC is unknown: the kernel is asked to resolve them (apply's explicit
/// step), so that the programs find it before the first packet needs it.
pub fn unresolved(hops: &BTreeMap<Ipv4Addr, NextHop>) -> BTreeSet<Ipv4Addr> {
    hops.values()
        .filter(|n| n.l2.is_none())
        .map(|n| n.via)
        .collect()
}

/// Whether a peer shares the uplink's subnet in cross-subnet mode (routed, not tunnelled).
pub fn same_subnet(mode: Mode, view: &KernelView, peer: Ipv4Addr) -> bool {
    mode == Mode::CrossSubnet && view.uplink_nets.iter().any(|n| n.contains(peer))
}

/// How traffic to `net` leaves: the ipipMode of the Calico pool holding it, else the node's
/// mode.
pub fn mode_of(cfg: &Config, net: &Ipv4Net) -> IpipMode {
    cfg.pool_modes
        .iter()
        .find(|(pool, _)| pool.len <= net.len && pool.contains(net.addr))
        .map_or(
            match cfg.node.mode {
                Mode::Always => IpipMode::Always,
                Mode::CrossSubnet => IpipMode::CrossSubnet,
            },
            |(_, m)| *m,
        )
}

/// Whether traffic to `net`, which `peer` owns, is routed plain rather than encapsulated: its
/// mode is Never, or CrossSubnet with the peer on the uplink's subnet.
pub fn plain_to(cfg: &Config, view: &KernelView, peer: Ipv4Addr, net: &Ipv4Net) -> bool {
    match mode_of(cfg, net) {
        IpipMode::Always => false,
        IpipMode::CrossSubnet => view.uplink_nets.iter().any(|n| n.contains(peer)),
        IpipMode::Never => true,
    }
}

/// The mode the programs run in: cross-subnet (plain forwarding and plain delivery allowed)
/// when the node's mode or any pool's lets some traffic go plain.
pub fn program_mode(cfg: &Config) -> Mode {
    if cfg.node.mode == Mode::CrossSubnet || cfg.pool_modes.values().any(|m| *m != IpipMode::Always)
    {
        Mode::CrossSubnet
    } else {
        Mode::Always
    }
}

/// A peer's next hop: the peer itself when it shares the uplink's subnet (`same_subnet`), else
/// whatever the kernel routes it through; its L2 when the neighbour table holds its MAC on the
/// uplink.
fn next_hop(underlay: Underlay, view: &KernelView, peer: Ipv4Addr, same_subnet: bool) -> NextHop {
    let (gw, oif) = view.peer_routes.get(&peer).copied().unwrap_or((None, None));
    let via = if same_subnet {
        peer
    } else {
        gw.unwrap_or(peer)
    };
    let mac = (oif == Some(underlay.uplink))
        .then(|| view.neighbours.get(&via).copied())
        .flatten();
    let uplink_mac = view.links.by_index(underlay.uplink).and_then(|l| l.mac);
    NextHop {
        via,
        l2: mac.zip(uplink_mac),
    }
}

/// Every peer's next hop.
pub fn next_hops(peers: &Peers, view: &KernelView) -> BTreeMap<Ipv4Addr, NextHop> {
    peers
        .addresses
        .iter()
        .map(|a| {
            let same = same_subnet(peers.mode, view, *a);
            (*a, next_hop(peers.underlay, view, *a, same))
        })
        .collect()
}

/// Whether a peer in both `planned` and `now` has another next hop now (a peer in one only
/// was added or removed since the other was read: its change is planned with it).
pub fn next_hops_moved(
    planned: &BTreeMap<Ipv4Addr, NextHop>,
    now: &BTreeMap<Ipv4Addr, NextHop>,
) -> bool {
    now.iter()
        .any(|(peer, hop)| planned.get(peer).is_some_and(|p| p != hop))
}

/// A route value with no L2 and no interface.
pub fn route_value(kind: RouteKind, flags: u8, node: Ipv4Addr) -> RouteValue {
    RouteValue {
        kind: kind as u8,
        flags,
        _pad: [0; 2],
        ifindex: 0,
        node_ip: node.octets(),
        dst_mac: [0; 6],
        src_mac: [0; 6],
    }
}

/// What `cfg` means for the maps and routes. `tunnel` is the tunnel device's ifindex (the
/// slow path's routes to remote blocks point at it); `known` the endpoints the maps hold (a
/// recreated veth keeps the pod MAC learnt for its address).
///
/// A plan is the node's blocks, then each peer's part and each endpoint's part, which do not
/// meet (the rules keep their prefixes apart): a change of peers or endpoints is planned by
/// parts ([`Plan::change`]) to the same plan.
pub fn plan(
    cfg: &Config,
    underlay: Underlay,
    tunnel: u32,
    view: &KernelView,
    known: &BTreeMap<u32, Endpoint>,
) -> Plan {
    let mut p = Plan::default();
    for b in &cfg.blocks {
        p.routes.insert(
            (b.addr, b.len),
            route_value(RouteKind::OwnBlock, 0, Ipv4Addr::UNSPECIFIED),
        );
        p.slow_path.insert(Route::Blackhole {
            dst: (b.addr, b.len),
        });
    }
    let at = At {
        cfg,
        underlay,
        tunnel,
        view,
    };
    for peer in &cfg.peers {
        p.add_peer(&at, peer, at.hop(peer.address));
    }
    if let Some(t) = cfg.tunnel_address {
        // `local <t> dev tunl0`: the kernel's, once the address is on the tunnel device.
        p.routes.insert(
            (t, 32),
            route_value(RouteKind::TunnelAddress, 0, Ipv4Addr::UNSPECIFIED),
        );
    }
    for ep in &cfg.endpoints {
        p.add_endpoint(ep, view, known);
    }
    p
}

/// What a peer's part of a plan is planned with: the desired state (its mode, the node's
/// address, the tunnel address), the underlay, the tunnel device, the kernel view.
pub struct At<'a> {
    pub cfg: &'a Config,
    pub underlay: Underlay,
    pub tunnel: u32,
    pub view: &'a KernelView,
}

impl At<'_> {
    /// The peer's next hop as the view has it.
    fn hop(&self, peer: Ipv4Addr) -> NextHop {
        let same = same_subnet(self.cfg.node.mode, self.view, peer);
        next_hop(self.underlay, self.view, peer, same)
    }

    /// A peer's routes (its own address, then its blocks) and slow-path routes, through `hop`.
    fn peer_part(
        &self,
        peer: &Peer,
        hop: &NextHop,
    ) -> Vec<((Ipv4Addr, u8), RouteValue, Option<Route>)> {
        let (cfg, view, underlay) = (self.cfg, self.view, self.underlay);
        // Without an uplink (it is gone until it comes back), or without the node's address on
        // it yet, the kernel cannot send to a peer: no slow-path routes toward it (they carry
        // the node's address as their source), and the maps' routes carry no next hop.
        let routed = underlay.uplink != 0 && !view.node_address_missing;
        let targets =
            std::iter::once(Ipv4Net::host(peer.address)).chain(peer.blocks.iter().copied());
        targets
            .enumerate()
            .map(|(i, net)| {
                let kind = if i == 0 {
                    RouteKind::PeerNode
                } else {
                    RouteKind::RemoteBlock
                };
                let plain = plain_to(cfg, view, peer.address, &net);
                let flags = if plain {
                    ROUTE_F_SAME_SUBNET
                } else {
                    ROUTE_F_ENCAP
                };
                let mut v = route_value(kind, flags, peer.address);
                if let Some((dmac, smac)) = hop.l2 {
                    v.flags |= ROUTE_F_L2;
                    v.ifindex = underlay.uplink;
                    v.dst_mac = dmac;
                    v.src_mac = smac;
                }
                // What the kernel itself sends there goes into the tunnel device, as into
                // tunl0; the peer's own address too, so that pod packets to it that the kernel
                // takes (too big, TTL) are encapsulated (the node's own are sent on plain).
                // The node's own traffic to remote pods leaves from its tunnel address when it
                // has one (as from tunl0's), to peer nodes from its address.
                let src = match (kind, cfg.tunnel_address) {
                    (RouteKind::RemoteBlock, Some(t)) => t,
                    _ => cfg.node.address,
                };
                let slow = routed.then_some(if plain {
                    Route::Via {
                        dst: (net.addr, net.len),
                        gateway: hop.via,
                        oif: underlay.uplink,
                        mtu: underlay.mtu,
                    }
                } else {
                    Route::Tunnel {
                        dst: (net.addr, net.len),
                        oif: self.tunnel,
                        src,
                    }
                });
                ((net.addr, net.len), v, slow)
            })
            .collect()
    }
}

impl Plan {
    /// An endpoint's part: its interface's entry, its /32 and the kernel's route to it, or
    /// waiting for its interface (or its pod MAC). Returns its slow-path route.
    fn add_endpoint(
        &mut self,
        ep: &EndpointCfg,
        view: &KernelView,
        known: &BTreeMap<u32, Endpoint>,
    ) -> Option<Route> {
        let Some(link) = view.links.by_name(&ep.interface) else {
            self.pending.insert(ep.address, ep.interface.clone());
            return None;
        };
        // The configured MAC, else the one already learnt for this veth, else the kernel's.
        let pod_mac = match (ep.mac, known.get(&link.index)) {
            (Some(m), _) => Some(m),
            (None, Some(k)) if k.pod_ip == ep.address.octets() => Some(k.pod_mac),
            (None, _) => view.pod_macs.get(&link.index).copied(),
        };
        let (Some(pod_mac), Some(host_mac)) = (pod_mac, link.mac) else {
            self.pending.insert(ep.address, ep.interface.clone());
            return None;
        };
        self.endpoints.insert(
            link.index,
            Endpoint {
                pod_ip: ep.address.octets(),
                pod_mac,
                host_mac,
            },
        );
        self.routes.insert(
            (ep.address, 32),
            RouteValue {
                kind: RouteKind::LocalEndpoint as u8,
                flags: 0,
                _pad: [0; 2],
                ifindex: link.index,
                node_ip: [0; 4],
                dst_mac: pod_mac,
                src_mac: host_mac,
            },
        );
        let slow = Route::Dev {
            dst: (ep.address, 32),
            oif: link.index,
        };
        self.slow_path.insert(slow.clone());
        Some(slow)
    }

    /// Takes an endpoint's part out (by its address: whatever interface it had); returns its
    /// slow-path route. A /32 another part holds stays.
    fn remove_endpoint(&mut self, address: Ipv4Addr) -> Option<Route> {
        self.pending.remove(&address);
        let key = (address, 32);
        let v = *self
            .routes
            .get(&key)
            .filter(|v| v.kind == RouteKind::LocalEndpoint as u8)?;
        self.routes.remove(&key);
        self.endpoints.remove(&v.ifindex);
        let slow = Route::Dev {
            dst: key,
            oif: v.ifindex,
        };
        self.slow_path.remove(&slow).then_some(slow)
    }

    /// A peer's part, through `hop`; returns its slow-path routes.
    fn add_peer(&mut self, at: &At, peer: &Peer, hop: NextHop) -> Vec<Route> {
        let mut slows = Vec::new();
        for (key, v, slow) in at.peer_part(peer, &hop) {
            self.routes.insert(key, v);
            if let Some(r) = slow {
                self.slow_path.insert(r.clone());
                slows.push(r);
            }
        }
        self.next_hops.insert(peer.address, hop);
        slows
    }

    /// Takes a peer's part out, as it was planned (through the next hop it was planned with);
    /// returns its slow-path routes. A prefix another part holds stays.
    fn remove_peer(&mut self, at: &At, peer: &Peer) -> Vec<Route> {
        let Some(hop) = self.next_hops.remove(&peer.address) else {
            return Vec::new();
        };
        let mut slows = Vec::new();
        for (key, v, slow) in at.peer_part(peer, &hop) {
            if self.routes.get(&key) == Some(&v) {
                self.routes.remove(&key);
            }
            if let Some(r) = slow.filter(|r| self.slow_path.remove(r)) {
                slows.push(r);
            }
        }
        slows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPLINK: u32 = 2;
    const TUNNEL: u32 = 9;
    const UPLINK_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x89, 0x75];
    const MASTER_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x89, 0x76];
    const UNDERLAY: Underlay = Underlay {
        uplink: UPLINK,
        mtu: 1500,
    };

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The seed's worker: 172.31.242.156 owns 192.168.83.128/26 with two pods; the master,
    /// 172.31.242.157, owns 192.168.179.0/26.
    fn worker(mode: &str) -> Config {
        Config::parse(&format!(
            r#"
[node]
name = "worker"
uplink = "eth0"
address = "172.31.242.156"
mode = "{mode}"
[[block]]
cidr = "192.168.83.128/26"
[[peer]]
address = "172.31.242.157"
blocks = ["192.168.179.0/26"]
[[endpoint]]
address = "192.168.83.129"
interface = "cali513e7f6c556"
[[endpoint]]
address = "192.168.83.130"
interface = "cali85f45a254f4"
mac = "ee:ee:ee:ee:ee:02"
"#
        ))
        .unwrap()
    }

    fn link(index: u32, name: &str, mac: [u8; 6]) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some(mac),
            mtu: 1500,
            link: None,
            link_netnsid: None,
            kind: Some("veth".into()),
            up: true,
        }
    }

    /// The worker's kernel: the master on the uplink's /20, resolved; both pods' veths up.
    fn view() -> KernelView {
        KernelView {
            links: [
                link(UPLINK, "eth0", UPLINK_MAC),
                link(TUNNEL, "ipipd0", [2, 0, 0, 0, 0, 9]),
                link(11, "cali513e7f6c556", [0xee, 0xee, 0xee, 0xee, 0xee, 0xee]),
                link(12, "cali85f45a254f4", [0xee, 0xee, 0xee, 0xee, 0xee, 0xef]),
            ]
            .into_iter()
            .collect(),
            uplink_nets: vec!["172.31.240.0/20".parse().unwrap()],
            peer_routes: [(a("172.31.242.157"), (None, Some(UPLINK)))].into(),
            neighbours: [(a("172.31.242.157"), MASTER_MAC)].into(),
            pod_macs: [(11, [0xee, 0xee, 0xee, 0xee, 0xee, 0x01])].into(),
            owned_routes: BTreeSet::new(),
            other_routes: BTreeMap::new(),
            node_address_missing: false,
        }
    }

    fn seed_plan(mode: &str, view: &KernelView) -> Plan {
        plan(&worker(mode), UNDERLAY, TUNNEL, view, &BTreeMap::new())
    }

    #[test]
    fn the_seeds_worker_gets_calicos_route_table() {
        let p = seed_plan("always", &view());
        let master = a("172.31.242.157");
        let remote = RouteValue {
            kind: RouteKind::RemoteBlock as u8,
            flags: ROUTE_F_ENCAP | ROUTE_F_L2,
            _pad: [0; 2],
            ifindex: UPLINK,
            node_ip: master.octets(),
            dst_mac: MASTER_MAC,
            src_mac: UPLINK_MAC,
        };
        let expected: BTreeMap<(Ipv4Addr, u8), RouteValue> = [
            (
                (a("192.168.83.128"), 26),
                route_value(RouteKind::OwnBlock, 0, Ipv4Addr::UNSPECIFIED),
            ),
            (
                (master, 32),
                RouteValue {
                    kind: RouteKind::PeerNode as u8,
                    ..remote
                },
            ),
            ((a("192.168.179.0"), 26), remote),
            (
                (a("192.168.83.129"), 32),
                RouteValue {
                    kind: RouteKind::LocalEndpoint as u8,
                    flags: 0,
                    _pad: [0; 2],
                    ifindex: 11,
                    node_ip: [0; 4],
                    dst_mac: [0xee, 0xee, 0xee, 0xee, 0xee, 0x01],
                    src_mac: [0xee; 6],
                },
            ),
            (
                (a("192.168.83.130"), 32),
                RouteValue {
                    kind: RouteKind::LocalEndpoint as u8,
                    flags: 0,
                    _pad: [0; 2],
                    ifindex: 12,
                    node_ip: [0; 4],
                    dst_mac: [0xee, 0xee, 0xee, 0xee, 0xee, 0x02],
                    src_mac: [0xee, 0xee, 0xee, 0xee, 0xee, 0xef],
                },
            ),
        ]
        .into();
        assert_eq!(p.routes, expected);
        assert_eq!(
            p.endpoints,
            [
                (
                    11,
                    Endpoint {
                        pod_ip: a("192.168.83.129").octets(),
                        pod_mac: [0xee, 0xee, 0xee, 0xee, 0xee, 0x01],
                        host_mac: [0xee; 6],
                    }
                ),
                (
                    12,
                    Endpoint {
                        pod_ip: a("192.168.83.130").octets(),
                        pod_mac: [0xee, 0xee, 0xee, 0xee, 0xee, 0x02],
                        host_mac: [0xee, 0xee, 0xee, 0xee, 0xee, 0xef],
                    }
                ),
            ]
            .into()
        );
        let src = a("172.31.242.156");
        let expected_slow: BTreeSet<Route> = [
            Route::Blackhole {
                dst: (a("192.168.83.128"), 26),
            },
            Route::Tunnel {
                dst: (master, 32),
                oif: TUNNEL,
                src,
            },
            Route::Tunnel {
                dst: (a("192.168.179.0"), 26),
                oif: TUNNEL,
                src,
            },
            Route::Dev {
                dst: (a("192.168.83.129"), 32),
                oif: 11,
            },
            Route::Dev {
                dst: (a("192.168.83.130"), 32),
                oif: 12,
            },
        ]
        .into();
        assert_eq!(p.slow_path, expected_slow);
        assert!(p.pending.is_empty());
        assert!(p.unresolved().is_empty());
    }

    #[test]
    fn a_calico_pools_mode_decides_for_its_blocks_and_the_tunnel_address_is_the_hosts_source() {
        let master = a("172.31.242.157");
        let mut cfg = worker("always");
        let pool: Ipv4Net = "192.168.0.0/16".parse().unwrap();
        cfg.tunnel_address = Some(a("192.168.83.128"));
        // Calico's pool says Always: the node's encapsulation, from the tunnel address.
        cfg.pool_modes = [(pool, IpipMode::Always)].into();
        let p = plan(&cfg, UNDERLAY, TUNNEL, &view(), &BTreeMap::new());
        assert_eq!(program_mode(&cfg), Mode::Always);
        assert_eq!(
            p.routes[&(a("192.168.179.0"), 26)].flags,
            ROUTE_F_ENCAP | ROUTE_F_L2
        );
        assert_eq!(
            p.routes[&(a("192.168.83.128"), 32)].kind,
            RouteKind::TunnelAddress as u8
        );
        assert!(p.slow_path.contains(&Route::Tunnel {
            dst: (a("192.168.179.0"), 26),
            oif: TUNNEL,
            src: a("192.168.83.128"),
        }));
        // The peer node itself is reached from the node's address.
        assert!(p.slow_path.contains(&Route::Tunnel {
            dst: (master, 32),
            oif: TUNNEL,
            src: a("172.31.242.156"),
        }));
        // CrossSubnet: the same-subnet master's block goes plain; the node itself, in no
        // pool, keeps the node's mode; the programs allow plain forwarding.
        cfg.pool_modes = [(pool, IpipMode::CrossSubnet)].into();
        let p = plan(&cfg, UNDERLAY, TUNNEL, &view(), &BTreeMap::new());
        assert_eq!(program_mode(&cfg), Mode::CrossSubnet);
        assert_eq!(
            p.routes[&(a("192.168.179.0"), 26)].flags,
            ROUTE_F_SAME_SUBNET | ROUTE_F_L2
        );
        assert_eq!(p.routes[&(master, 32)].flags, ROUTE_F_ENCAP | ROUTE_F_L2);
        assert!(p.slow_path.contains(&Route::Via {
            dst: (a("192.168.179.0"), 26),
            gateway: master,
            oif: UPLINK,
            mtu: 1500,
        }));
        // CrossSubnet toward a master on another subnet: encapsulated; Never: plain anyway,
        // through the gateway the kernel routes the master by.
        let mut far = view();
        far.uplink_nets = vec!["172.31.0.0/24".parse().unwrap()];
        far.peer_routes = [(master, (Some(a("172.31.0.1")), Some(UPLINK)))].into();
        far.neighbours = [(a("172.31.0.1"), MASTER_MAC)].into();
        let p = plan(&cfg, UNDERLAY, TUNNEL, &far, &BTreeMap::new());
        assert_eq!(
            p.routes[&(a("192.168.179.0"), 26)].flags,
            ROUTE_F_ENCAP | ROUTE_F_L2
        );
        cfg.pool_modes = [(pool, IpipMode::Never)].into();
        let p = plan(&cfg, UNDERLAY, TUNNEL, &far, &BTreeMap::new());
        assert_eq!(
            p.routes[&(a("192.168.179.0"), 26)].flags,
            ROUTE_F_SAME_SUBNET | ROUTE_F_L2
        );
        assert!(p.slow_path.contains(&Route::Via {
            dst: (a("192.168.179.0"), 26),
            gateway: a("172.31.0.1"),
            oif: UPLINK,
            mtu: 1500,
        }));
    }

    #[test]
    fn cross_subnet_routes_a_same_subnet_peer_without_the_tunnel() {
        let p = seed_plan("cross-subnet", &view());
        let master = a("172.31.242.157");
        let r = p.routes[&(a("192.168.179.0"), 26)];
        assert_eq!(r.flags, ROUTE_F_SAME_SUBNET | ROUTE_F_L2);
        assert!(p.slow_path.contains(&Route::Via {
            dst: (a("192.168.179.0"), 26),
            gateway: master,
            oif: UPLINK,
            mtu: 1500,
        }));
        assert!(
            !p.slow_path
                .iter()
                .any(|r| matches!(r, Route::Tunnel { .. }))
        );
    }

    #[test]
    fn cross_subnet_tunnels_a_peer_on_another_subnet_via_the_gateway() {
        let mut v = view();
        v.uplink_nets = vec!["10.0.0.0/24".parse().unwrap()];
        v.peer_routes = [(a("172.31.242.157"), (Some(a("10.0.0.1")), Some(UPLINK)))].into();
        v.neighbours = [(a("10.0.0.1"), [1, 2, 3, 4, 5, 6])].into();
        let p = seed_plan("cross-subnet", &v);
        let r = p.routes[&(a("192.168.179.0"), 26)];
        assert_eq!(r.flags, ROUTE_F_ENCAP | ROUTE_F_L2);
        assert_eq!(r.dst_mac, [1, 2, 3, 4, 5, 6]);
        assert_eq!(p.next_hops[&a("172.31.242.157")].via, a("10.0.0.1"));
    }

    #[test]
    fn an_unresolved_next_hop_has_no_l2_and_is_to_be_resolved() {
        let mut v = view();
        v.neighbours.clear();
        let p = seed_plan("always", &v);
        let r = p.routes[&(a("192.168.179.0"), 26)];
        assert_eq!(r.flags, ROUTE_F_ENCAP);
        assert_eq!((r.ifindex, r.dst_mac, r.src_mac), (0, [0; 6], [0; 6]));
        assert_eq!(p.unresolved(), [a("172.31.242.157")].into());
    }

    #[test]
    fn a_peer_routed_out_of_another_interface_gets_no_l2() {
        let mut v = view();
        v.peer_routes = [(a("172.31.242.157"), (None, Some(77)))].into();
        let p = seed_plan("always", &v);
        assert_eq!(p.routes[&(a("192.168.179.0"), 26)].flags, ROUTE_F_ENCAP);
    }

    #[test]
    fn a_moved_block_moves_its_route_and_slow_path() {
        let mut cfg = worker("always");
        cfg.peers.push(crate::config::Peer {
            address: a("172.31.242.158"),
            blocks: vec![],
        });
        let mut v = view();
        v.peer_routes
            .insert(a("172.31.242.158"), (None, Some(UPLINK)));
        let before = plan(&cfg, UNDERLAY, TUNNEL, &v, &BTreeMap::new());
        let moved = cfg.peers[0].blocks.remove(0);
        cfg.peers[1].blocks.push(moved);
        let after = plan(&cfg, UNDERLAY, TUNNEL, &v, &BTreeMap::new());
        let key = (a("192.168.179.0"), 26);
        assert_eq!(before.routes[&key].node_ip, a("172.31.242.157").octets());
        assert_eq!(after.routes[&key].node_ip, a("172.31.242.158").octets());
        assert_eq!(after.routes.len(), before.routes.len());
        assert_eq!(after.slow_path, before.slow_path);
    }

    #[test]
    fn a_removed_peer_leaves_nothing_behind() {
        let mut cfg = worker("always");
        cfg.peers.clear();
        let p = plan(&cfg, UNDERLAY, TUNNEL, &view(), &BTreeMap::new());
        assert!(p.next_hops.is_empty());
        assert!(p.routes.values().all(|r| r.node_ip == [0; 4]));
        assert!(
            !p.slow_path
                .iter()
                .any(|r| matches!(r, Route::Tunnel { .. } | Route::Via { .. }))
        );
        assert_eq!(p.routes.len(), 3);
    }

    #[test]
    fn an_endpoint_without_its_interface_or_mac_is_pending() {
        let mut v = view();
        v.links = v
            .links
            .by_index
            .values()
            .filter(|l| l.name != "cali85f45a254f4")
            .cloned()
            .collect();
        v.pod_macs.clear();
        let p = seed_plan("always", &v);
        assert!(p.endpoints.is_empty());
        assert_eq!(
            p.pending,
            [
                (a("192.168.83.129"), "cali513e7f6c556".to_string()),
                (a("192.168.83.130"), "cali85f45a254f4".to_string()),
            ]
            .into()
        );
        assert!(!p.routes.contains_key(&(a("192.168.83.129"), 32)));
    }

    #[test]
    fn a_recreated_veth_keeps_the_learnt_pod_mac() {
        let mut v = view();
        v.pod_macs.clear();
        let known = [(
            11,
            Endpoint {
                pod_ip: a("192.168.83.129").octets(),
                pod_mac: [9; 6],
                host_mac: [0xee; 6],
            },
        )]
        .into();
        let p = plan(&worker("always"), UNDERLAY, TUNNEL, &v, &known);
        assert_eq!(p.endpoints[&11].pod_mac, [9; 6]);
        // Another address on that ifindex does not inherit it.
        let known = [(
            11,
            Endpoint {
                pod_ip: a("192.168.83.140").octets(),
                pod_mac: [9; 6],
                host_mac: [0xee; 6],
            },
        )]
        .into();
        let p = plan(&worker("always"), UNDERLAY, TUNNEL, &v, &known);
        assert!(p.pending.contains_key(&a("192.168.83.129")));
    }

    #[test]
    fn planning_is_deterministic() {
        assert_eq!(seed_plan("always", &view()), seed_plan("always", &view()));
    }

    /// The uplink gone (ifindex 0) or the node's address not on it yet: the peers' map routes
    /// stay (without a next hop's L2), and no slow-path route toward a peer is planned (the
    /// kernel would refuse its source); the node's own block and pods are unaffected.
    #[test]
    fn without_the_uplink_no_slow_path_toward_peers() {
        let full = seed_plan("always", &view());
        for (underlay, view) in [
            (
                Underlay {
                    uplink: 0,
                    mtu: 1500,
                },
                KernelView {
                    uplink_nets: vec![],
                    peer_routes: BTreeMap::new(),
                    neighbours: BTreeMap::new(),
                    ..view()
                },
            ),
            (
                Underlay {
                    uplink: UPLINK,
                    mtu: 1500,
                },
                KernelView {
                    node_address_missing: true,
                    ..view()
                },
            ),
        ] {
            let cfg = worker("always");
            let p = plan(&cfg, underlay, TUNNEL, &view, &BTreeMap::new());
            assert_eq!(
                p.routes.keys().collect::<Vec<_>>(),
                full.routes.keys().collect::<Vec<_>>()
            );
            assert!(
                p.slow_path
                    .iter()
                    .all(|r| matches!(r, Route::Blackhole { .. } | Route::Dev { .. })),
                "{:?}",
                p.slow_path
            );
            assert_eq!(p.endpoints, full.endpoints);
        }
    }

    #[test]
    fn a_next_hop_check_reads_what_the_plan_was_built_from() {
        let cfg = worker("always");
        let master = a("172.31.242.157");
        let planned = seed_plan("always", &view()).next_hops;
        let peers = Peers::of(&cfg, UNDERLAY);
        // The same kernel: nothing moved.
        assert_eq!(next_hops(&peers, &view()), planned);
        assert!(!next_hops_moved(&planned, &next_hops(&peers, &view())));
        // The gateway's MAC changed: its routes must be rebuilt.
        let mut v = view();
        v.neighbours.insert(master, [2, 0, 0, 0, 0, 0x42]);
        assert!(next_hops_moved(&planned, &next_hops(&peers, &v)));
        // Routed through a gateway now, or no longer resolved: moved too.
        let mut v = view();
        v.peer_routes
            .insert(master, (Some(a("172.31.240.1")), Some(UPLINK)));
        assert!(next_hops_moved(&planned, &next_hops(&peers, &v)));
        let mut v = view();
        v.neighbours.clear();
        let now = next_hops(&peers, &v);
        assert!(next_hops_moved(&planned, &now));
        assert_eq!(unresolved(&now), [master].into());
        // A peer the check read but the plan does not have yet (or no longer has) is the
        // change's to plan, not a move.
        let mut more = peers.clone();
        more.addresses.push(a("172.31.242.200"));
        let read = next_hops(&more, &view());
        assert_eq!(read.len(), 2);
        assert!(!next_hops_moved(&planned, &read));
        assert!(!next_hops_moved(&read, &planned));
    }

    /// Each change of endpoints and peers, planned by parts on the plan before it, is the plan
    /// of the new desired state; and what it touched names every entry that differs, with its
    /// old value.
    #[test]
    fn a_change_planned_by_parts_is_the_whole_plan() {
        let v = {
            let mut v = view();
            // A second peer behind a gateway with no MAC yet, a third veth.
            v.peer_routes
                .insert(a("10.9.0.7"), (Some(a("172.31.240.1")), Some(UPLINK)));
            v.links
                .insert(link(13, "cali3", [0xee, 0xee, 0xee, 0xee, 0xee, 0xf0]));
            v
        };
        let peer = |addr: &str, blocks: &[&str]| Peer {
            address: a(addr),
            blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
        };
        let ep = |addr: &str, ifname: &str| EndpointCfg {
            address: a(addr),
            interface: ifname.into(),
            mac: Some([0xee, 0, 0, 0, 0, 3]),
            pod: None,
            attachment: None,
        };
        type Edit<'a> = Box<dyn Fn(&mut Config) + 'a>;
        let changes: Vec<Edit> = vec![
            Box::new(|c| c.endpoints.push(ep("192.168.83.131", "cali3"))),
            Box::new(|c| c.endpoints.push(ep("192.168.83.132", "cali-not-yet"))),
            Box::new(|c| {
                c.endpoints.remove(0);
            }),
            // The same address on another interface; the other endpoint's MAC changed.
            Box::new(|c| c.endpoints[0].interface = "cali3".into()),
            Box::new(|c| c.endpoints[1].mac = Some([0xee, 0, 0, 0, 0, 9])),
            Box::new(|c| c.peers.push(peer("10.9.0.7", &["192.168.200.0/26"]))),
            Box::new(|c| {
                c.peers.clear();
            }),
            Box::new(|c| c.peers[0].blocks.push("192.168.180.0/26".parse().unwrap())),
            Box::new(|c| {
                c.peers[0] = peer("172.31.242.157", &["192.168.181.0/26"]);
                c.endpoints.pop();
                c.endpoints.push(ep("192.168.83.131", "cali3"));
            }),
        ];
        for mode in ["always", "cross-subnet"] {
            let old = worker(mode);
            let before = plan(&old, UNDERLAY, TUNNEL, &v, &BTreeMap::new());
            for (n, change) in changes.iter().enumerate() {
                let mut new = old.clone();
                change(&mut new);
                let delta = Delta::between(&old, &new).unwrap();
                let at = At {
                    cfg: &new,
                    underlay: UNDERLAY,
                    tunnel: TUNNEL,
                    view: &v,
                };
                let mut p = before.clone();
                let t = p.change(&at, &delta, &before.endpoints).unwrap();
                let whole = plan(&new, UNDERLAY, TUNNEL, &v, &before.endpoints);
                assert_eq!(p, whole, "{mode}, change {n}");
                for k in before.routes.keys().chain(whole.routes.keys()) {
                    if before.routes.get(k) != whole.routes.get(k) {
                        assert_eq!(
                            t.routes.get(k),
                            Some(&before.routes.get(k).copied()),
                            "{k:?}"
                        );
                    }
                }
                for i in before.endpoints.keys().chain(whole.endpoints.keys()) {
                    if before.endpoints.get(i) != whole.endpoints.get(i) {
                        assert_eq!(t.endpoints.get(i), Some(&before.endpoints.get(i).copied()));
                    }
                }
                let gone: BTreeSet<Route> = before
                    .slow_path
                    .difference(&whole.slow_path)
                    .cloned()
                    .collect();
                let came: BTreeSet<Route> = whole
                    .slow_path
                    .difference(&before.slow_path)
                    .cloned()
                    .collect();
                assert_eq!(
                    (t.slow_removed, t.slow_added),
                    (gone, came),
                    "{mode}, change {n}"
                );
            }
        }
    }

    #[test]
    fn a_change_of_anything_but_endpoints_and_peers_is_planned_whole_and_one_meeting_another_part_too()
     {
        let old = worker("always");
        let mut other = old.clone();
        other.blocks.push("192.168.84.0/26".parse().unwrap());
        assert_eq!(Delta::between(&old, &other), None);
        // A peer whose address is a local endpoint's: its /32 meets the endpoint's.
        let mut new = old.clone();
        new.peers.push(Peer {
            address: a("192.168.83.130"),
            blocks: vec![],
        });
        let delta = Delta::between(&old, &new).unwrap();
        assert!(delta.peers_changed() && !delta.is_empty());
        let v = view();
        let mut p = plan(&old, UNDERLAY, TUNNEL, &v, &BTreeMap::new());
        let at = At {
            cfg: &new,
            underlay: UNDERLAY,
            tunnel: TUNNEL,
            view: &v,
        };
        assert_eq!(p.change(&at, &delta, &BTreeMap::new()), None);
    }
}
