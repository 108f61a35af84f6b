//! BPF_PROG_TEST_RUN for the bpf-fixtures runner and `ipipd-bench`: one run of a loaded
//! program with its context, the contexts themselves, and the Internet checksum for packets the
//! tests craft.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{Program, TestRun as _, TestRunOptions, TestRunResult},
};

/// Runs the loaded program `name` of `ebpf` on `data`, `repeat` times, as if on interface
/// `ifindex`: an XDP program with it as ingress_ifindex, a tc program with it as the skb's
/// device and with `mark` and `gso_size`. The output frame goes to `out`.
pub fn run(
    ebpf: &Ebpf,
    name: &str,
    ifindex: u32,
    (mark, gso_size): (u32, u32),
    data: &[u8],
    out: &mut [u8],
    repeat: u32,
) -> Result<TestRunResult> {
    let program = ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?;
    fn opts<'a>(
        data: &'a [u8],
        out: &'a mut [u8],
        ctx: &'a [u8],
        repeat: u32,
    ) -> TestRunOptions<'a> {
        TestRunOptions {
            data_in: Some(data),
            data_out: Some(out),
            ctx_in: Some(ctx),
            repeat,
            ..Default::default()
        }
    }
    match program {
        Program::Xdp(p) => p.test_run(opts(data, out, &xdp_ctx(ifindex, data.len()), repeat)),
        Program::SchedClassifier(p) => {
            p.test_run(opts(data, out, &skb_ctx(ifindex, mark, gso_size), repeat))
        }
        _ => bail!("{name}: not an XDP or tc program"),
    }
    .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))
}

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

/// The Internet checksum of `b` as a number (RFC 1071), for the packets tests build.
pub use dataplane_common::csum::of_bytes as checksum;
