//! Builds the bench's floor programs (tests/floors, `ipipd-bench-floors`) and ipipd's programs
//! with their `cost` feature (each map access and helper call counted: what a path costs) as
//! dataplane-user's build.rs builds ipipd's, with the same code.

#[path = "../../dataplane-user/build_ebpf.rs"]
mod build_ebpf;

fn main() -> anyhow::Result<()> {
    build_ebpf::build_ebpf("ipipd-bench-floors", &[])?;
    build_ebpf::build_ebpf("dataplane-ebpf", &["cost"])
}
