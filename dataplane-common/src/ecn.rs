//! ECN across the tunnel (RFC 6040, normal mode): what decapsulation makes of the inner and
//! outer ECN fields. Host-compiled too, so its table is tested exhaustively.

/// Not ECN-capable transport.
pub const NOT_ECT: u8 = 0;
/// ECN-capable transport (1).
pub const ECT_1: u8 = 1;
/// ECN-capable transport (0).
pub const ECT_0: u8 = 2;
/// Congestion experienced.
pub const CE: u8 = 3;

/// RFC 6040 §4.2 (Figure 4): the inner ECN field after decapsulation, or None to drop.
/// The second value is set for the "currently unused" combinations, which are forwarded and
/// counted.
#[inline(always)]
pub const fn decap(inner: u8, outer: u8) -> (Option<u8>, bool) {
    if inner == NOT_ECT {
        return match outer {
            CE => (None, false),
            NOT_ECT => (Some(NOT_ECT), false),
            _ => (Some(NOT_ECT), true),
        };
    }
    if inner == CE || outer == CE {
        return (Some(CE), inner == CE && outer == ECT_1);
    }
    if outer == ECT_1 {
        return (Some(ECT_1), false);
    }
    (Some(inner), false)
}

/// [`decap`] as one word for the programs: four bits per (inner, outer) pair, at
/// `(inner << 2 | outer) * 4`: the departing ECN field in the low two, then [`DECAP_DROP`] and
/// [`DECAP_UNUSED`]. A shift and a mask instead of [`decap`]'s branches.
pub const DECAP_TABLE: u64 = decap_table();
/// [`DECAP_TABLE`]'s "drop" bit.
pub const DECAP_DROP: u8 = 1 << 2;
/// [`DECAP_TABLE`]'s bit for a currently unused combination.
pub const DECAP_UNUSED: u8 = 1 << 3;

const fn decap_table() -> u64 {
    let mut table = 0u64;
    let mut i = 0;
    while i < 16 {
        let code = match decap((i >> 2) as u8, (i & 3) as u8) {
            (None, _) => DECAP_DROP,
            (Some(ecn), false) => ecn,
            (Some(ecn), true) => ecn | DECAP_UNUSED,
        };
        table |= (code as u64) << (i * 4);
        i += 1;
    }
    table
}

/// [`DECAP_TABLE`]'s entry for the inner and outer ECN fields (each taken from the low two
/// bits of its byte, a TOS byte as it is).
#[inline(always)]
pub const fn decap_code(inner: u8, outer: u8) -> u8 {
    let i = (((inner & 3) << 2) | (outer & 3)) as u64;
    ((DECAP_TABLE >> (i * 4)) & 0xf) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table says what [`decap`] says, for every pair and whatever the TOS bits above.
    #[test]
    fn the_table_is_decap() {
        for inner in 0..=255u8 {
            for outer in [0u8, 1, 2, 3, 0xb8, 0xbb, 0xfc] {
                let code = decap_code(inner, outer);
                let (ecn, unused) = decap(inner & 3, outer & 3);
                assert_eq!(
                    code & DECAP_DROP != 0,
                    ecn.is_none(),
                    "{inner:#x} {outer:#x}"
                );
                if let Some(e) = ecn {
                    assert_eq!(code & 3, e, "{inner:#x} {outer:#x}");
                }
                assert_eq!(code & DECAP_UNUSED != 0, unused, "{inner:#x} {outer:#x}");
            }
        }
    }

    /// RFC 6040 Figure 4, row by row (arriving inner header), column by column (arriving outer
    /// header): the departing header's ECN, "drop", and the (!!!) marks of the combinations
    /// that are currently unused.
    #[test]
    fn rfc6040_figure_4_every_combination() {
        const D: Option<u8> = None;
        let fields = [NOT_ECT, ECT_0, ECT_1, CE];
        // inner \ outer:  Not-ECT              ECT(0)                ECT(1)                CE
        let table: [[(Option<u8>, bool); 4]; 4] = [
            [
                (Some(NOT_ECT), false),
                (Some(NOT_ECT), true),
                (Some(NOT_ECT), true),
                (D, false),
            ],
            [
                (Some(ECT_0), false),
                (Some(ECT_0), false),
                (Some(ECT_1), false),
                (Some(CE), false),
            ],
            [
                (Some(ECT_1), false),
                (Some(ECT_1), false),
                (Some(ECT_1), false),
                (Some(CE), false),
            ],
            [
                (Some(CE), false),
                (Some(CE), false),
                (Some(CE), true),
                (Some(CE), false),
            ],
        ];
        for (i, inner) in fields.iter().enumerate() {
            for (o, outer) in fields.iter().enumerate() {
                assert_eq!(
                    decap(*inner, *outer),
                    table[i][o],
                    "inner {inner}, outer {outer}"
                );
            }
        }
    }
}
