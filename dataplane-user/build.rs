//! Builds the eBPF object (dataplane-ebpf) and leaves it in OUT_DIR for `include_bytes_aligned!`.

mod build_ebpf;

fn main() -> anyhow::Result<()> {
    build_ebpf::build_ebpf("dataplane-ebpf", &[])
}
