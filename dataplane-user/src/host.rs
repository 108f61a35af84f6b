//! What the host says, read where the config needs it: its interfaces and their IPv4 addresses
//! (`getifaddrs`, in the kernel's order), the source address of the kernel's route toward an
//! address (a UDP socket connected to it, which sends nothing), the node's name from the
//! environment (`NODE_NAME`: the Kubernetes downward API's `spec.nodeName`) or the hostname;
//! and the checks of a config against the running kernel.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    net::{Ipv4Addr, UdpSocket},
};

use anyhow::Result;

use crate::{autodetect::HostInterface, config::Config, netlink::Netlink};

/// The host as the config sees it.
pub trait Host {
    /// The interfaces, in the kernel's order (by ifindex).
    fn interfaces(&self) -> Result<Vec<HostInterface>, String>;
    /// The source address of the kernel's route toward `dst`, if it has one.
    fn source_toward(&self, dst: Ipv4Addr) -> Option<Ipv4Addr>;
    /// `NODE_NAME`, when set.
    fn env_node_name(&self) -> Option<String>;
    fn hostname(&self) -> String;
}

/// This host, in the network namespace of the process.
pub struct System;

impl Host for System {
    fn interfaces(&self) -> Result<Vec<HostInterface>, String> {
        interfaces().map_err(|e| format!("listing the host's interfaces: {e}"))
    }

    fn source_toward(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        // connect() on a UDP socket only looks the route up: nothing is sent.
        s.connect((dst, 9)).ok()?;
        match s.local_addr().ok()? {
            std::net::SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
            _ => None,
        }
    }

    fn env_node_name(&self) -> Option<String> {
        std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())
    }

    fn hostname(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "node".into())
    }
}

/// Every interface with its IPv4 addresses and whether it is up, by ifindex.
fn interfaces() -> std::io::Result<Vec<HostInterface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut by_name: BTreeMap<String, HostInterface> = BTreeMap::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string of the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let e = by_name.entry(name.clone()).or_insert_with(|| {
            let c = std::ffi::CString::new(name.clone()).unwrap_or_default();
            HostInterface {
                // SAFETY: a valid C string.
                index: unsafe { libc::if_nametoindex(c.as_ptr()) },
                name,
                up: false,
                addrs: Vec::new(),
            }
        });
        e.up |= ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        if !ifa.ifa_addr.is_null()
            // SAFETY: ifa_addr points to a sockaddr whose family says its type.
            && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET
        {
            // SAFETY: an AF_INET sockaddr is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            e.addrs
                .push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(head) };
    let mut all: Vec<HostInterface> = by_name.into_values().collect();
    all.sort_by_key(|i| i.index);
    Ok(all)
}

/// Checks against the running kernel: the uplink exists, the mtu fits it. Returns the uplink
/// and the effective underlay MTU.
pub async fn check_kernel(cfg: &Config, nl: &Netlink) -> Result<(crate::netlink::Link, u32)> {
    let Some(up) = nl.link_by_name(&cfg.node.uplink).await? else {
        let msg = format!("no interface {:?} on this host", cfg.node.uplink);
        return Err(cfg.key_error("node.uplink", msg));
    };
    let mtu = match cfg.node.mtu {
        Some(m) if m > up.mtu => {
            let msg = format!("{m} is above the uplink {}'s MTU {}", up.name, up.mtu);
            return Err(cfg.key_error("node.mtu", msg));
        }
        Some(m) => m,
        None => up.mtu,
    };
    Ok((up, mtu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_loopback_is_listed_up_with_its_address() {
        let all = System.interfaces().unwrap();
        let lo = all.iter().find(|i| i.name == "lo").expect("lo");
        assert!(lo.up && lo.addrs.contains(&Ipv4Addr::LOCALHOST), "{lo:?}");
        assert!(all.windows(2).all(|w| w[0].index < w[1].index));
        assert_eq!(
            System.source_toward(Ipv4Addr::LOCALHOST),
            Some(Ipv4Addr::LOCALHOST)
        );
    }
}
