//! Inputs for BPF_PROG_TEST_RUN (the bpf-fixtures runner, `ipipd-bench`) and for packets the
//! tests craft: the program contexts and the Internet checksum.

/// The `struct __sk_buff` context (192 bytes) with ifindex (selects skb->dev), mark, and, for a
/// GSO packet, gso_segs and gso_size.
pub fn skb_ctx(ifindex: u32, mark: u32, gso_size: u32) -> Vec<u8> {
    // mark at 8, ifindex at 40, gso_segs at 164, gso_size at 176.
    let mut ctx = vec![0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    if gso_size != 0 {
        ctx[164..168].copy_from_slice(&2u32.to_ne_bytes());
        ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    }
    ctx
}

/// The `struct xdp_md` context: data, data_end, data_meta, ingress_ifindex (at 12),
/// rx_queue_index, egress_ifindex.
pub fn xdp_ctx(ifindex: u32, len: usize) -> Vec<u8> {
    let mut ctx = vec![0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// The Internet checksum (RFC 1071) of `b`, an odd last byte padded with zero.
pub fn checksum(b: &[u8]) -> u16 {
    let mut s = 0u32;
    for w in b.chunks(2) {
        s += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}
