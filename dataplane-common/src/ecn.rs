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
pub fn decap(inner: u8, outer: u8) -> (Option<u8>, bool) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
