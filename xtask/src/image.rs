//! `cargo xtask image`: ipipd's OCI image, from parts this machine has — no registry, no base
//! image. `ipipd` and `ipipd-cni` built static (`x86_64-unknown-linux-musl`, the eBPF object
//! embedded) and stripped, and `nft` (natOutgoing's table) with the shared libraries `ldd`
//! lists, on an empty base (`FROM scratch`), built with podman and saved with `podman save`
//! under `target/image/`.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run, setup};

const MUSL: &str = "x86_64-unknown-linux-musl";
/// The repository part of the image's name.
pub const NAME: &str = "ipipd";
/// Where the image's build context and the saved archive go.
pub const DIR: &str = "target/image";
/// The saved archive's name (`podman load -i` takes it).
pub const ARCHIVE: &str = "ipipd-image.tar";
/// Host tools the daemon runs, copied with their libraries.
const TOOLS: &[&str] = &["/usr/sbin/nft"];

/// `<version>-<short commit>` (`-dirty` when the tree has uncommitted changes).
fn version_tag(root: &Path) -> Result<String> {
    let out = |args: &[&str]| -> Result<String> {
        let o = Command::new("git").current_dir(root).args(args).output()?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = out(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = !out(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Ok(format!(
        "{}-{commit}{}",
        env!("CARGO_PKG_VERSION"),
        if dirty { "-dirty" } else { "" }
    ))
}

/// Sets up the musl target and C compiler (ring's C code) and builds the image's static
/// binaries (see [`static_binary`]).
pub fn build_static() -> Result<()> {
    setup::musl()?;
    run(cargo()
        .args(["build", "--release", "--locked", "--target", MUSL])
        .args(["--package", "dataplane-user"]))
}

/// Where [`build_static`] puts the static build of `bin` (`ipipd`, `ipipd-cni`).
pub fn static_binary(root: &Path, bin: &str) -> std::path::PathBuf {
    root.join("target").join(MUSL).join("release").join(bin)
}

/// Builds the static binaries, stages the root filesystem, builds the image and saves it (its
/// tag in `target/image/tag`).
pub fn build(root: &Path) -> Result<()> {
    build_static()?;
    let dir = root.join(DIR);
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(rootfs.join("usr/bin"))?;
    for d in ["tmp", "run", "var/lib/ipipd", "etc/ipipd", "sys/fs/bpf"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    for bin in ["ipipd", "ipipd-cni"] {
        let src = static_binary(root, bin);
        let dst = rootfs.join("usr/bin").join(bin);
        std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        run(Command::new("strip").arg(&dst))?;
    }
    for tool in TOOLS {
        copy_with_libraries(Path::new(tool), &rootfs)?;
    }
    let tag = format!("{NAME}:{}", version_tag(root)?);
    std::fs::write(
        dir.join("Containerfile"),
        format!(
            "FROM scratch\n\
             COPY rootfs/ /\n\
             LABEL org.opencontainers.image.title=\"ipipd\" \\\n      \
             org.opencontainers.image.description=\"IP-in-IP pod networking in eBPF: the Calico IPIP route table without tunl0\" \\\n      \
             org.opencontainers.image.version=\"{version}\"\n\
             ENV PATH=/usr/bin:/usr/sbin\n\
             ENTRYPOINT [\"/usr/bin/ipipd\"]\n\
             CMD [\"run\", \"--config\", \"/etc/ipipd/ipipd.toml\"]\n",
            version = tag.split(':').nth(1).unwrap_or_default()
        ),
    )?;
    run(Command::new("podman")
        .args(["build", "--no-cache", "--tag", &tag, "--file"])
        .arg(dir.join("Containerfile"))
        .arg(&dir))?;
    let archive = dir.join(ARCHIVE);
    let _ = std::fs::remove_file(&archive);
    run(Command::new("podman")
        .args(["save", "--format", "oci-archive", "--output"])
        .arg(&archive)
        .arg(&tag))?;
    let bytes = std::fs::metadata(&archive)?.len();
    std::fs::write(dir.join("tag"), &tag)?;
    eprintln!(
        "xtask image: {tag}, {:.1} MiB saved as {}",
        bytes as f64 / (1 << 20) as f64,
        archive.display()
    );
    Ok(())
}

/// `binary` at its own path under `rootfs`, with every library `ldd` lists (and the loader).
fn copy_with_libraries(binary: &Path, rootfs: &Path) -> Result<()> {
    let place = |p: &Path| -> Result<()> {
        let real = std::fs::canonicalize(p)?;
        let dst = rootfs.join(p.strip_prefix("/").unwrap_or(p));
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::copy(&real, &dst).with_context(|| format!("copying {}", p.display()))?;
        Ok(())
    };
    if !binary.is_file() {
        bail!(
            "{} is missing (cargo xtask setup installs it)",
            binary.display()
        );
    }
    place(binary)?;
    let out = Command::new("ldd").arg(binary).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = match line.split_once("=>") {
            Some((_, r)) => r.trim(),
            None => line.trim(),
        };
        let lib = lib.split(" (").next().unwrap_or_default().trim();
        if lib.starts_with('/') {
            place(Path::new(lib))?;
        }
    }
    Ok(())
}
