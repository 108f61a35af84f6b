//! Builds the bench's floor programs (tests/floors, `ipipd-bench-floors`) for bpfel-unknown-none
//! with the nightly toolchain and bpf-linker, as dataplane-user's build.rs builds ipipd's, and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    if which::which("bpf-linker").is_err() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` (it installs bpf-linker against the \
             nightly toolchain's LLVM and the nightly's rust-src)"
        ));
    }
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "ipipd-bench-floors")
        .ok_or_else(|| anyhow!("ipipd-bench-floors is not in the workspace"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("ipipd-bench-floors has no manifest directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
