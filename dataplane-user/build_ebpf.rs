//! The build scripts' one way to build an eBPF package of the workspace for bpfel-unknown-none
//! (the nightly toolchain and bpf-linker, with BTF), leaving the object in OUT_DIR for
//! `include_bytes_aligned!`. Used by dataplane-user's build.rs (ipipd's programs) and
//! ipipd-bench's (the floors) through `#[path]`.

use anyhow::{Context as _, anyhow};

/// Builds the workspace's eBPF package `package`, with these of its cargo features, with
/// aya-build into OUT_DIR.
pub fn build_ebpf(package: &str, features: &[&str]) -> anyhow::Result<()> {
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
        .find(|p| p.name.as_str() == package)
        .ok_or_else(|| anyhow!("{package} is not in the workspace"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{package} has no manifest directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root.as_str(),
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
