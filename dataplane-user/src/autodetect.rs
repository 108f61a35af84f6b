//! Which interface is the node's uplink and which address is its own, when the config does not
//! say: `[node] autodetect`, in Calico's `IP_AUTODETECTION_METHOD` vocabulary, so that one
//! config serves every node. Pure: decided over the host's interfaces as [`crate::host`] reads
//! them (in the kernel's order) and, for `can-reach`, the source address the kernel's route
//! toward the target gives.
//!
//! | method | picks |
//! |---|---|
//! | `first-found` (default) | the first interface that is up and has a global IPv4 address, skipping by name what Calico skips (`lo`, `docker*`, `cbr*`, `dummy*`, `virbr*`, `lxcbr*`, `veth*`, `cali*`, `tunl*`, `flannel*`, `kube-ipvs*`, `cni*`) and ipipd's own tunnel device |
//! | `can-reach=IP` | the interface holding the source address of the kernel's route to IP |
//! | `interface=REGEX` | the first interface whose name matches |
//! | `skip-interface=REGEX` | `first-found`, also skipping the names that match |
//! | `cidr=CIDR[,CIDR]` | the first address inside one of the CIDRs |
//!
//! Names are matched whole (`^…$`), as Calico does. An interface is skipped by its name, not its
//! type: an uplink may well be a veth (`eth0` in a network namespace is one).

use std::{fmt, net::Ipv4Addr};

use regex::Regex;

use crate::{config::tunnel_peer, net::Ipv4Net};

/// One interface of the host, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInterface {
    pub name: String,
    pub index: u32,
    pub up: bool,
    /// Its IPv4 addresses, in the kernel's order.
    pub addrs: Vec<Ipv4Addr>,
}

/// An autodetection method.
#[derive(Debug, Clone)]
pub enum Method {
    FirstFound,
    CanReach(Ipv4Addr),
    Interface(Regex),
    SkipInterface(Regex),
    Cidr(Vec<Ipv4Net>),
}

impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Method {}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::FirstFound => write!(f, "first-found"),
            Method::CanReach(a) => write!(f, "can-reach={a}"),
            Method::Interface(r) => write!(f, "interface={}", unanchored(r)),
            Method::SkipInterface(r) => write!(f, "skip-interface={}", unanchored(r)),
            Method::Cidr(c) => write!(
                f,
                "cidr={}",
                c.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// The names Calico's first-found skips.
const SKIPPED: &[&str] = &[
    "lo",
    "docker.*",
    "cbr.*",
    "dummy.*",
    "virbr.*",
    "lxcbr.*",
    "veth.*",
    "cali.*",
    "tunl.*",
    "flannel.*",
    "kube-ipvs.*",
    "cni.*",
];

/// A user's regex, matched against a whole name.
fn anchored(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("{re:?} is not a regex: {e}"))
}

fn unanchored(r: &Regex) -> &str {
    let s = r.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once('=').unwrap_or((s, ""));
        let need = |what: &str| {
            if arg.is_empty() {
                Err(format!("{kind}= needs {what}"))
            } else {
                Ok(())
            }
        };
        match kind {
            "first-found" if arg.is_empty() => Ok(Method::FirstFound),
            "can-reach" => {
                need("an IPv4 address")?;
                arg.parse()
                    .map(Method::CanReach)
                    .map_err(|_| format!("can-reach={arg}: not an IPv4 address"))
            }
            "interface" => {
                need("a regex")?;
                anchored(arg).map(Method::Interface)
            }
            "skip-interface" => {
                need("a regex")?;
                anchored(arg).map(Method::SkipInterface)
            }
            "cidr" => {
                need("a CIDR")?;
                arg.split(',')
                    .map(|c| c.trim().parse::<Ipv4Net>())
                    .collect::<Result<Vec<_>, _>>()
                    .map(Method::Cidr)
            }
            _ => Err(format!(
                "{s:?}: expected first-found, can-reach=IP, interface=REGEX, skip-interface=REGEX or cidr=CIDR[,CIDR]"
            )),
        }
    }
}

/// A global (routable) unicast IPv4 address: not loopback, link-local, multicast or reserved.
fn global(a: &Ipv4Addr) -> bool {
    crate::net::check_unicast(*a).is_ok()
}

/// The uplink and the node's address `method` picks among `ifaces`. `tunnel` is ipipd's own
/// tunnel device (never picked); `source` answers `can-reach`: the source address of the
/// kernel's route to the target, if it has one.
pub fn pick(
    method: &Method,
    ifaces: &[HostInterface],
    tunnel: &str,
    source: impl Fn(Ipv4Addr) -> Option<Ipv4Addr>,
) -> Result<(String, Ipv4Addr), String> {
    let own = |i: &HostInterface| i.name == tunnel || i.name == tunnel_peer(tunnel);
    let skipped: Vec<Regex> = SKIPPED
        .iter()
        .map(|s| anchored(s).expect("a regex"))
        .collect();
    let calico_skips = |i: &HostInterface| own(i) || skipped.iter().any(|r| r.is_match(&i.name));
    let first_global = |i: &HostInterface| i.addrs.iter().find(|a| global(a)).copied();
    let first = |keep: &dyn Fn(&HostInterface) -> bool| {
        ifaces
            .iter()
            .filter(|i| i.up && keep(i))
            .find_map(|i| first_global(i).map(|a| (i.name.clone(), a)))
    };
    let found = match method {
        Method::FirstFound => first(&|i| !calico_skips(i)),
        Method::SkipInterface(re) => first(&|i| !calico_skips(i) && !re.is_match(&i.name)),
        Method::Interface(re) => first(&|i| !own(i) && re.is_match(&i.name)),
        Method::Cidr(cidrs) => ifaces.iter().filter(|i| i.up && !own(i)).find_map(|i| {
            i.addrs
                .iter()
                .find(|a| cidrs.iter().any(|c| c.contains(**a)))
                .map(|a| (i.name.clone(), *a))
        }),
        Method::CanReach(target) => {
            let src = source(*target)
                .ok_or_else(|| format!("can-reach={target}: the kernel has no route to it"))?;
            ifaces
                .iter()
                .find(|i| i.addrs.contains(&src))
                .map(|i| (i.name.clone(), src))
        }
    };
    found.ok_or_else(|| format!("{method}: no interface that is up has a matching IPv4 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(index: u32, name: &str, up: bool, addrs: &[&str]) -> HostInterface {
        HostInterface {
            name: name.into(),
            index,
            up,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    /// A node as Kubernetes leaves it: loopback, docker's bridge, a CNI bridge, pods' veths,
    /// tunl0 from Calico, ipipd's tunnel device, then the real uplinks.
    fn host() -> Vec<HostInterface> {
        vec![
            iface(1, "lo", true, &["127.0.0.1"]),
            iface(2, "docker0", true, &["172.17.0.1"]),
            iface(3, "cni0", true, &["10.88.0.1"]),
            iface(4, "veth1234", true, &["10.88.0.7"]),
            iface(5, "tunl0", true, &["192.168.83.128"]),
            iface(6, "ipipd0", true, &["192.168.83.129"]),
            iface(7, "cali1a2b", true, &[]),
            iface(8, "ens3", false, &["10.0.0.5"]),
            iface(9, "eth0", true, &["169.254.3.3", "172.31.242.156"]),
            iface(10, "eth1", true, &["192.0.2.10"]),
        ]
    }

    fn pick_by(method: &str) -> Result<(String, Ipv4Addr), String> {
        let m: Method = method.parse()?;
        pick(&m, &host(), "ipipd0", |dst| {
            (dst == "192.0.2.99".parse::<Ipv4Addr>().unwrap())
                .then(|| "192.0.2.10".parse().unwrap())
        })
    }

    fn ok(name: &str, addr: &str) -> Result<(String, Ipv4Addr), String> {
        Ok((name.into(), addr.parse().unwrap()))
    }

    #[test]
    fn first_found_skips_calicos_names_down_interfaces_and_non_global_addresses() {
        assert_eq!(pick_by("first-found"), ok("eth0", "172.31.242.156"));
        let m = Method::FirstFound;
        // An uplink that is a veth by type but not by name is taken.
        let netns = vec![
            iface(1, "lo", true, &["127.0.0.1"]),
            iface(2, "eth0", true, &["10.1.1.1"]),
        ];
        assert_eq!(pick(&m, &netns, "ipipd0", |_| None), ok("eth0", "10.1.1.1"));
        let none = vec![iface(1, "lo", true, &["127.0.0.1"])];
        let e = pick(&m, &none, "ipipd0", |_| None).unwrap_err();
        assert!(e.contains("first-found"), "{e}");
    }

    #[test]
    fn interface_and_skip_interface_match_whole_names() {
        assert_eq!(pick_by("interface=eth1"), ok("eth1", "192.0.2.10"));
        assert_eq!(pick_by("interface=eth.*"), ok("eth0", "172.31.242.156"));
        // "eth" alone matches no whole name.
        assert!(pick_by("interface=eth").is_err());
        assert_eq!(pick_by("skip-interface=eth0"), ok("eth1", "192.0.2.10"));
        // The tunnel device is never picked, even by name.
        assert!(pick_by("interface=ipipd0").is_err());
        assert!(pick_by("interface=(").unwrap_err().contains("not a regex"));
    }

    #[test]
    fn cidr_takes_the_first_address_inside_and_can_reach_the_routes_source() {
        assert_eq!(pick_by("cidr=192.0.2.0/24"), ok("eth1", "192.0.2.10"));
        assert_eq!(
            pick_by("cidr=10.9.0.0/16, 172.31.240.0/20"),
            ok("eth0", "172.31.242.156")
        );
        assert!(pick_by("cidr=10.9.0.0/16").is_err());
        assert_eq!(pick_by("can-reach=192.0.2.99"), ok("eth1", "192.0.2.10"));
        assert!(
            pick_by("can-reach=198.51.100.1")
                .unwrap_err()
                .contains("no route")
        );
    }

    #[test]
    fn methods_parse_and_print_as_calico_writes_them() {
        for m in [
            "first-found",
            "can-reach=10.0.0.1",
            "interface=eth.*",
            "skip-interface=eth1|eth2",
            "cidr=10.0.0.0/8,192.168.0.0/16",
        ] {
            assert_eq!(m.parse::<Method>().unwrap().to_string(), m);
        }
        for bad in [
            "",
            "first-found=x",
            "can-reach=",
            "can-reach=host",
            "cidr=10.0.0.1/8",
            "nearest",
        ] {
            assert!(bad.parse::<Method>().is_err(), "{bad}");
        }
    }
}
