//! ipipd's user space: config, the data plane's maps and attachments, the daemon, the CLI's
//! read side, and the embedded eBPF object.

pub mod bpfsys;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod inspect;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod monitor;
pub mod netlink;
pub mod state;
pub mod testrun;

/// The eBPF object built by build.rs (bpfel, BTF), aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipipd-dataplane"));
