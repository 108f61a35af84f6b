//! ipipd's user space: the embedded eBPF object and the loader.

pub mod loader;
pub mod maps;

/// The eBPF object built by build.rs (bpfel, BTF), aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipipd-dataplane"));
