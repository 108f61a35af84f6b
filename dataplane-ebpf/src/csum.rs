//! Internet checksum arithmetic (RFC 1071, RFC 1624) on 16-bit words kept in wire byte order.

/// Folds a 32-bit ones' complement sum and complements it.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changes from `old` to `new`.
#[inline(always)]
pub fn replace(check: u16, old: u16, new: u16) -> u16 {
    fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// The checksum of a 20-byte IPv4 header given as ten words (the checksum word itself included:
/// 0 to compute one, the stored value to verify one, which then yields 0).
#[inline(always)]
pub fn ipv4_header(words: &[u16; 10]) -> u16 {
    let mut sum = 0u32;
    for w in words {
        sum += *w as u32;
    }
    fold(sum)
}
