//! IPv4 prefixes and the rules every address, block, interface name and MAC obeys, wherever
//! it comes from (the file, the control socket, the CLI, the datastore, CNI). No I/O, no
//! dependency on the rest of the crate.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Serialize};

/// An IPv4 prefix with its host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Net {
    pub const fn new(addr: Ipv4Addr, len: u8) -> Self {
        Self { addr, len }
    }
    fn mask(len: u8) -> u32 {
        if len == 0 { 0 } else { u32::MAX << (32 - len) }
    }
    /// The prefix's last address.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !Self::mask(self.len))
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.len) == u32::from(self.addr)
    }
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let len = self.len.min(other.len);
        u32::from(self.addr) & Self::mask(len) == u32::from(other.addr) & Self::mask(len)
    }
    /// The subnet an address with this prefix length lies in (host bits cleared).
    pub fn containing(ip: Ipv4Addr, len: u8) -> Self {
        Self {
            addr: Ipv4Addr::from(u32::from(ip) & Self::mask(len)),
            len,
        }
    }
    pub fn host(ip: Ipv4Addr) -> Self {
        Self { addr: ip, len: 32 }
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..=32"))?;
        if u32::from(addr) & !Self::mask(len) != 0 {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}/{len}?)",
                Ipv4Addr::from(u32::from(addr) & Self::mask(len))
            ));
        }
        Ok(Self { addr, len })
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    Ok(mac)
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An interface name the kernel accepts (its `dev_valid_name`): 1 to 15 bytes, not "." or
/// "..", no '/', ':', whitespace or NUL.
pub fn check_ifname(s: &str) -> Result<(), String> {
    let bad = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
    if s.is_empty() || s.len() > 15 || s == "." || s == ".." || s.contains(bad) {
        return Err(format!("{s:?} is not an interface name"));
    }
    Ok(())
}

/// The ranges no node, pod or block address may come from, with what they are (values, not
/// text: a validation of 5,000 peers checks them some 30,000 times).
const NOT_UNICAST: [(Ipv4Net, &str); 5] = [
    (
        Ipv4Net::new(Ipv4Addr::new(0, 0, 0, 0), 8),
        "\"this network\" (0.0.0.0/8)",
    ),
    (Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8), "loopback"),
    (
        Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16),
        "link-local",
    ),
    (Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4), "multicast"),
    (
        Ipv4Net::new(Ipv4Addr::new(240, 0, 0, 0), 4),
        "reserved or broadcast (240.0.0.0/4)",
    ),
];

/// A unicast host address: not unspecified, loopback, link-local, multicast, reserved or
/// broadcast.
pub fn check_unicast(a: Ipv4Addr) -> Result<(), String> {
    match NOT_UNICAST.iter().find(|(n, _)| n.contains(a)) {
        Some((_, what)) => Err(format!("{a} is {what}, not a unicast host address")),
        None => Ok(()),
    }
}

/// A block of pod addresses: all of it unicast host addresses.
pub fn check_block(b: &Ipv4Net) -> Result<(), String> {
    match NOT_UNICAST.iter().find(|(n, _)| n.overlaps(b)) {
        Some((n, what)) => Err(format!("{b} reaches into {n}, {what}")),
        None => Ok(()),
    }
}

/// A pod's MAC: unicast and not all zeros.
pub fn check_pod_mac(m: &[u8; 6]) -> Result<(), String> {
    if m[0] & 1 != 0 || *m == [0; 6] {
        return Err(format!("{} is not a unicast MAC", fmt_mac(m)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_arithmetic() {
        let n: Ipv4Net = "192.168.83.128/26".parse().unwrap();
        assert!(n.contains("192.168.83.191".parse().unwrap()));
        assert!(!n.contains("192.168.83.192".parse().unwrap()));
        assert!(n.overlaps(&"192.168.83.0/24".parse().unwrap()));
        assert!(!n.overlaps(&"192.168.83.192/26".parse().unwrap()));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("255.255.255.255".parse().unwrap()));
        assert_eq!(n.to_string(), "192.168.83.128/26");
        assert_eq!(
            Ipv4Net::containing("192.168.83.150".parse().unwrap(), 26),
            n
        );
        assert_eq!(Ipv4Net::containing("10.1.2.3".parse().unwrap(), 0), all);
    }

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Ok([2, 0, 10, 255, 0, 1]));
        assert_eq!(fmt_mac(&[2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
        assert!(parse_mac("02:00:0a:ff:00").is_err());
    }
}
