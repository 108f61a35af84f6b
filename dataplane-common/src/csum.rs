//! Internet checksum arithmetic (RFC 1071, RFC 1624) on words kept in wire byte order.
//! Shared by the programs and the host (where it is tested against a byte-wise reference).

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

/// The checksum after the TTL (not 0) drops by one: the TTL is the high byte of its 16-bit
/// word, so the checksum rises by 0x0100 in wire order, its carry folded back in (RFC 1624 for
/// that one change, as the kernel's `ip_decrease_ttl` makes it): two adds where [`replace`]
/// takes a dozen instructions.
#[inline(always)]
pub fn dec_ttl(check: u16) -> u16 {
    let c = check as u32 + u16::from_ne_bytes([1, 0]) as u32;
    (c + (c >= 0xffff) as u32) as u16
}

/// The ones' complement sum of up to 16 32-bit words (each two 16-bit words in wire order,
/// read natively: half the loads and adds of a 16-bit sum), folded to at most 0xffff, so that
/// more 16-bit words can be added to it before it is [`fold`]ed. It folds to the same checksum
/// as the sum of the 16-bit words, since 2^16 ≡ 1 modulo 0xffff and a non-zero sum stays
/// non-zero through each carry folded back in. Three folds of 16 bits suffice: 16 words sum to
/// less than 2^36, and each fold takes that below 2^21, then 2^16 + 2^5, then to 0xffff at most.
#[inline(always)]
pub fn sum(words: &[u32]) -> u32 {
    let mut sum = 0u64;
    for w in words {
        sum += *w as u64;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u32
}

/// The checksum of a 20-byte IPv4 header given as five 32-bit words (the checksum field
/// included: 0 to compute one, the stored value to verify one, which then yields 0). [`sum`]
/// is folded already.
#[inline(always)]
pub fn ipv4_header(words: &[u32; 5]) -> u16 {
    !(sum(words) as u16)
}

/// The checksum of any bytes, byte-wise (RFC 1071's definition: the complemented ones'
/// complement sum of big-endian words, an odd byte padded), as a number: the reference the
/// word-wise functions above are tested against, and what the host's tests and tools use.
pub fn of_bytes(bytes: &[u8]) -> u16 {
    let mut s = 0u32;
    for w in bytes.chunks(2) {
        s += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten 16-bit words: the header's bytes in wire order, read natively.
    fn words(h: &[u8; 20]) -> [u16; 10] {
        core::array::from_fn(|i| u16::from_ne_bytes([h[2 * i], h[2 * i + 1]]))
    }

    /// Five 32-bit words as the programs read a header.
    fn words32(h: &[u8; 20]) -> [u32; 5] {
        core::array::from_fn(|i| {
            u32::from_ne_bytes([h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]])
        })
    }

    /// The plain 16-bit-word sum, which [`sum`] must fold like.
    fn sum16(words: &[u16]) -> u32 {
        words.iter().map(|w| *w as u32).sum()
    }

    fn ipv4_header16(words: &[u16; 10]) -> u16 {
        fold(sum16(words))
    }

    /// A few IPv4 headers (checksum zeroed), from a pseudo-random sequence.
    fn headers() -> impl Iterator<Item = [u8; 20]> {
        let mut x = 0x9e37_79b9_u32;
        (0..500).map(move |_| {
            let mut h = [0u8; 20];
            for b in h.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            h[0] = 0x45;
            h[10] = 0;
            h[11] = 0;
            h
        })
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            of_bytes(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(fold(0x0001 + 0xf203 + 0xf4f5 + 0xf6f7), !0xddf2);
    }

    #[test]
    fn ipv4_header_matches_the_reference_and_verifies_to_zero() {
        for mut h in headers() {
            let c = ipv4_header(&words32(&h));
            assert_eq!(u16::from_be(c), of_bytes(&h), "{h:02x?}");
            h[10..12].copy_from_slice(&c.to_ne_bytes());
            assert_eq!(
                ipv4_header(&words32(&h)),
                0,
                "a correct header verifies to 0"
            );
        }
    }

    #[test]
    fn thirty_two_bit_words_sum_and_verify_as_sixteen_bit_ones() {
        for mut h in headers().chain([[0xff; 20], [0; 20]]) {
            assert_eq!(
                ipv4_header(&words32(&h)),
                ipv4_header16(&words(&h)),
                "{h:02x?}"
            );
            let c = ipv4_header(&words32(&h));
            h[10..12].copy_from_slice(&c.to_ne_bytes());
            assert_eq!(
                ipv4_header(&words32(&h)),
                0,
                "a correct header verifies to 0"
            );
            // Continued over option words like the 16-bit sum.
            let s = sum(&words32(&h));
            assert!(s <= 0xffff);
            assert_eq!(
                fold(s + 0x1234 + 0xedcb),
                fold(sum16(&words(&h)) + 0x1234 + 0xedcb)
            );
        }
    }

    /// The folds' bound at its extreme: sixteen words of all ones (2^36 - 16) fold to 0xffff,
    /// as their 16-bit sum does.
    #[test]
    fn sixteen_words_of_ones_fold_within_sixteen_bits() {
        let s = sum(&[u32::MAX; 16]);
        assert_eq!(s, 0xffff);
        assert_eq!(fold(s), fold(sum16(&[u16::MAX; 32])));
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0x0001_0000]), 1);
    }

    #[test]
    fn a_ttl_decrement_equals_a_full_recompute() {
        for (n, mut h) in headers().enumerate() {
            // Every TTL from 1 up, and the headers whose sums sit at the carry's edge.
            h[8] = (1 + n % 255) as u8;
            let c = ipv4_header(&words32(&h));
            h[10..12].copy_from_slice(&c.to_ne_bytes());
            h[8] -= 1;
            let updated = dec_ttl(c);
            h[10..12].copy_from_slice(&[0, 0]);
            assert_eq!(updated, ipv4_header(&words32(&h)), "{h:02x?}");
        }
        // A checksum of 0xfeff (wire order) rises to 0xffff, which is 0 in ones' complement
        // and never a computed checksum: the carry makes it 0x0000.
        assert_eq!(dec_ttl(u16::from_ne_bytes([0xfe, 0xff])), 0);
    }

    #[test]
    fn incremental_update_equals_a_full_recompute() {
        for mut h in headers() {
            let c = ipv4_header(&words32(&h));
            h[10..12].copy_from_slice(&c.to_ne_bytes());
            // Change the TTL/protocol word, as forwarding does (TTL - 1), and the TOS word.
            for word in [4usize, 0] {
                let old = words(&h)[word];
                let mut changed = h;
                changed[2 * word] = changed[2 * word].wrapping_sub(1);
                changed[2 * word + 1] ^= 0x03;
                let new = words(&changed)[word];
                let updated = replace(c, old, new);
                changed[10..12].copy_from_slice(&[0, 0]);
                assert_eq!(
                    updated,
                    ipv4_header(&words32(&changed)),
                    "{h:02x?} word {word}"
                );
            }
        }
    }

    /// A header with options verifies as its first 20 bytes' sum continued over the option
    /// words (how the programs check one), exactly when the byte-wise reference says so.
    #[test]
    fn a_header_with_options_verifies_word_by_word() {
        for (n, mut h) in headers().enumerate() {
            let opts = 4 * (1 + n % 10);
            let mut full = h.to_vec();
            full[0] = 0x40 | ((20 + opts) / 4) as u8;
            full.extend((0..opts).map(|i| (n * 7 + i * 13) as u8));
            let c = of_bytes(&full);
            full[10..12].copy_from_slice(&c.to_be_bytes());
            h.copy_from_slice(&full[..20]);
            let rest: Vec<u16> = full[20..]
                .chunks(2)
                .map(|w| u16::from_ne_bytes([w[0], w[1]]))
                .collect();
            assert_eq!(fold(sum(&words32(&h)) + sum16(&rest)), 0, "header {n}");
            full[20] ^= 0x10;
            let rest: Vec<u16> = full[20..]
                .chunks(2)
                .map(|w| u16::from_ne_bytes([w[0], w[1]]))
                .collect();
            assert_ne!(
                fold(sum(&words32(&h)) + sum16(&rest)),
                0,
                "header {n}, an option changed"
            );
        }
    }
}
