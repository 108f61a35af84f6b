//! Parse: bounds-checked access to the headers of a tc packet, and the small header types
//! network-types does not give us in the form we need.

use core::mem::size_of;

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use dataplane_common::csum;
pub use network_types::{eth::EthHdr, ip::Ipv4Hdr};

pub const ETH_LEN: usize = EthHdr::LEN;
pub const IP_LEN: usize = Ipv4Hdr::LEN;

pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806u16.to_be();
/// VLAN tags in the data: 802.1Q, and 802.1ad (QinQ's outer tag).
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88a8u16.to_be();
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// The DF bit in the frag field, and the MF bit plus offset mask (wire order as read by u16::from_be_bytes).
pub const IP_DF: u16 = 0x4000;
pub const IP_MF_OFFSET: u16 = 0x3fff;

/// ARP for IPv4 over Ethernet (RFC 826), 28 bytes.
#[repr(C)]
pub struct ArpIpv4 {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// A pointer to a `T` at `off` in the linear data, or None when it does not fit.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// A `T` at `off` in an XDP frame, when the frame holds it whole.
#[inline(always)]
pub fn xdp_ptr_at<T>(ctx: &aya_ebpf::programs::XdpContext, off: usize) -> Option<*const T> {
    if ctx.data() + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((ctx.data() + off) as *const T)
}

/// Makes the first `len` bytes linear (pulling them in when the skb is paged), so that the
/// direct packet access of [`ptr_at`] can reach them. False when the packet is shorter.
#[inline(always)]
pub fn ensure_linear(ctx: &TcContext, len: usize) -> bool {
    if ctx.data() + len <= ctx.data_end() {
        return true;
    }
    if (ctx.len() as usize) < len {
        return false;
    }
    crate::cost::note(crate::cost::Item::PullData);
    if ctx.pull_data(len as u32).is_err() {
        return false;
    }
    ctx.data() + len <= ctx.data_end()
}

/// What a frame carries, once parsed: the first step of every tc hook.
pub enum L3<'a> {
    /// An IPv4 packet whose header is linear and in bounds. Not valid across a helper that
    /// changes the packet.
    Ipv4(&'a Ipv4Hdr),
    Arp,
    /// A VLAN-tagged frame: the tag in the skb's metadata (where the kernel, or a device's
    /// offload, moves it), or an 802.1Q / 802.1ad header in the data. Whatever it carries, it is
    /// not ipipd's as it is: the route table never forwards a tagged frame into a tunnel or a pod.
    Tagged,
    /// Anything else (IPv6, …).
    Other,
    /// Shorter than the headers its type announces.
    Truncated,
}

/// Parses the Ethernet header and, for IPv4, makes the IPv4 header linear.
#[inline(always)]
pub fn parse_l3<'a>(ctx: &TcContext) -> L3<'a> {
    // SAFETY: reading a context field.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return L3::Tagged;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return L3::Truncated;
    };
    // SAFETY: bounds-checked above.
    match unsafe { (*eth).ether_type } {
        ETH_P_IP => {}
        ETH_P_ARP => return L3::Arp,
        ETH_P_8021Q | ETH_P_8021AD => return L3::Tagged,
        _ => return L3::Other,
    }
    if !ensure_linear(ctx, ETH_LEN + IP_LEN) {
        return L3::Truncated;
    }
    match ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) {
        // SAFETY: bounds-checked against data_end.
        Some(ip) => L3::Ipv4(unsafe { &*ip }),
        None => L3::Truncated,
    }
}

/// The five 32-bit words of a 20-byte IPv4 header, in wire order, for [`csum::sum`].
#[inline(always)]
pub fn ip_words(ip: &Ipv4Hdr) -> [u32; 5] {
    let p = ip as *const Ipv4Hdr as *const u32;
    // SAFETY: Ipv4Hdr is 20 bytes of plain data; unaligned reads, which the build allows (the
    // header is packet memory, never the stack).
    core::array::from_fn(|i| unsafe { p.add(i).read_unaligned() })
}

/// Header length in bytes (IHL * 4).
#[inline(always)]
pub fn ihl_bytes(ip: &Ipv4Hdr) -> usize {
    ((ip.vihl & 0x0f) as usize) << 2
}

#[inline(always)]
pub fn tot_len(ip: &Ipv4Hdr) -> usize {
    u16::from_be_bytes(ip.tot_len) as usize
}

#[inline(always)]
pub fn frag_field(ip: &Ipv4Hdr) -> u16 {
    u16::from_be_bytes(ip.frags)
}

/// Version 4, IHL >= 5, and a total length that covers the header and fits in `avail` bytes.
#[inline(always)]
pub fn ipv4_sane(ip: &Ipv4Hdr, avail: usize) -> bool {
    let ihl = ihl_bytes(ip);
    let tot = tot_len(ip);
    (ip.vihl >> 4) == 4 && ihl >= IP_LEN && tot >= ihl && tot <= avail
}

/// Whether the IPv4 header at `off`, whose IHL and total length [`ipv4_sane`] has accepted,
/// carries a valid checksum, options included (as `ip_rcv` checks it). The header without
/// options is summed in place; options (rare) are read four bytes at a time with
/// `bpf_skb_load_bytes`, which leaves packet pointers (`ip` among them) valid and needs a
/// constant length for the verifier.
#[inline(always)]
pub fn ipv4_checksum_ok(ctx: &TcContext, ip: &Ipv4Hdr, off: usize) -> bool {
    let ihl = ihl_bytes(ip);
    let mut sum = csum::sum(&ip_words(ip));
    if ihl == IP_LEN {
        // Folded already: a valid header sums to all ones.
        return sum == 0xffff;
    }
    let mut at = IP_LEN;
    // At most 40 bytes of options: ten 4-byte reads at constant offsets (the loop unrolls).
    while at < 60 {
        if at >= ihl {
            break;
        }
        let mut w = [0u8; 4];
        crate::cost::note(crate::cost::Item::LoadBytes);
        // SAFETY: helper call into a 4-byte stack buffer.
        let rc = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                (off + at) as u32,
                w.as_mut_ptr() as *mut _,
                4,
            )
        };
        if rc != 0 {
            return false;
        }
        sum += u16::from_ne_bytes([w[0], w[1]]) as u32 + u16::from_ne_bytes([w[2], w[3]]) as u32;
        at += 4;
    }
    csum::fold(sum) == 0
}

/// Copies a MAC address into the packet, in three 16-bit words: a byte array's copy is
/// otherwise byte by byte. Every source is a field at an even offset of a map value or of a
/// stack copy of one; a stack source must be 2-aligned for these reads, which the verifier
/// checks at every load (it refuses a misaligned stack access).
#[inline(always)]
pub fn set_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    let (d, s) = (dst.as_mut_ptr() as *mut u16, src.as_ptr() as *const u16);
    // SAFETY: both are valid for 6 bytes; unaligned accesses, which the build allows.
    unsafe {
        for i in 0..3 {
            d.add(i).write_unaligned(s.add(i).read_unaligned());
        }
    }
}

/// Writes both MACs of a frame from a route's, which lie next to each other as in the frame
/// (destination, then source): three 32-bit words.
#[inline(always)]
pub fn set_macs(eth: &mut EthHdr, rt: &dataplane_common::RouteValue) {
    let (d, s) = (
        eth as *mut EthHdr as *mut u32,
        rt.dst_mac.as_ptr() as *const u32,
    );
    // SAFETY: the frame's first 12 bytes are its MACs, and the route's dst_mac and src_mac are
    // 12 contiguous bytes (dataplane-common asserts the layout); unaligned accesses, which the
    // build allows (packet and map memory, never the stack).
    unsafe {
        for i in 0..3 {
            d.add(i).write_unaligned(s.add(i).read_unaligned());
        }
    }
}

/// Decrements the TTL (not 0), updating the header checksum incrementally.
#[inline(always)]
pub fn dec_ttl(ip: &mut Ipv4Hdr) {
    ip.ttl -= 1;
    ip.check = csum::dec_ttl(u16::from_ne_bytes(ip.check)).to_ne_bytes();
}

/// Sets the TOS byte, updating the header checksum incrementally.
#[inline(always)]
pub fn set_tos(ip: &mut Ipv4Hdr, tos: u8) {
    let old = u16::from_ne_bytes([ip.vihl, ip.tos]);
    ip.tos = tos;
    let new = u16::from_ne_bytes([ip.vihl, ip.tos]);
    let check = dataplane_common::csum::replace(u16::from_ne_bytes(ip.check), old, new);
    ip.check = check.to_ne_bytes();
}

/// The interface a tc program runs on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a context field.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The skb's gso_size (0 for a packet that is not GSO).
#[inline(always)]
pub fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: reading a context field.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// tc verdicts, typed as the classifier returns them (the generated bindings' types differ by
/// target arch).
pub const TC_OK: i32 = 0;
pub const TC_SHOT: i32 = 2;
