//! Builds the bench's floor programs (tests/floors, `ipipd-bench-floors`) as dataplane-user's
//! build.rs builds ipipd's, with the same code.

#[path = "../../dataplane-user/build_ebpf.rs"]
mod build_ebpf;

fn main() -> anyhow::Result<()> {
    build_ebpf::build_ebpf("ipipd-bench-floors")
}
