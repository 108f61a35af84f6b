//! Idempotent setup of what a fresh machine of this kind lacks.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// The eBPF side's toolchain.
const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests and the demo use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    // sysctl, in the namespaces the tests build.
    "procps",
    "ethtool",
    "tcpdump",
    "iputils-ping",
    "traceroute",
    // The CNI plugin's tests: a real container runtime (podman with its CNI backend, runc),
    // the reference plugins (host-local, loopback) and a busybox root filesystem.
    "podman",
    "containernetworking-plugins",
    "runc",
    "busybox-static",
    // The datastore: etcd-client's protos are compiled with protoc (and its well-known types);
    // the tests start Debian's etcd and use etcdctl.
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
    "etcd-client",
    // The datastore's TLS test makes its CA and certificates.
    "openssl",
    // natOutgoing's table (nft), and the Services tests: kube-proxy's rules in iptables
    // (nf_tables backend) and nftables, IPVS virtual servers, conntrack's table on failure.
    "nftables",
    "iptables",
    "ipvsadm",
    "conntrack",
    // kubernetes-validate's virtualenv (the manifests' test).
    "python3-venv",
];

pub fn all() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    apt_packages()?;
    pip_packages()?;
    Ok(())
}

/// PyPI's kubernetes-validate checks deploy/*.yaml against Kubernetes' OpenAPI schemas offline
/// (it carries them), and brings PyYAML, which the manifests' test reads them with.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Where it is installed: a virtualenv of its own under target/ (Debian's Python is "externally
/// managed", PEP 668: pip refuses to install into it), which the manifests' test looks in.
pub const VALIDATE_VENV: &str = "target/kubernetes-validate";

fn pip_packages() -> Result<()> {
    let venv = crate::workspace_root().join(VALIDATE_VENV);
    let bin = venv.join("bin");
    let have = Command::new(bin.join("kubernetes-validate"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    eprintln!(
        "xtask: {KUBERNETES_VALIDATE} into the virtualenv {}",
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(bin.join("pip")).args(["install", "--quiet", KUBERNETES_VALIDATE]))
}

pub fn is_root() -> bool {
    // SAFETY: plain syscall without arguments.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!("run this as root: {why}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .context("the eBPF build needs the `nightly` toolchain (rustup toolchain install nightly)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for {NIGHTLY}");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// bpf-linker must link against the same LLVM as the nightly rustc that emits the bitcode: it
/// is built against the nightly's own libLLVM, found through a prefix under the temporary
/// directory. An installed bpf-linker is kept only when it is the pinned version and names that
/// very libLLVM (the nightly's LLVM changes with the nightly; a bpf-linker built against an
/// older one would link, but ignore the features the build asks of a newer one).
fn bpf_linker() -> Result<()> {
    let sysroot =
        output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly → major 22
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    // A prefix whose lib/ looks like an LLVM install for llvm-sys, and where the installed
    // binary finds the library at run time (its runpath): checked on every setup, since the
    // temporary directory may have been emptied since the install.
    let prefix = std::env::temp_dir().join(format!("ipipd-llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let target = lib.join(&llvm);
    for name in ["libLLVM.so".to_string(), llvm.clone()] {
        let link = prefix_lib.join(&name);
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let Some(why) = bpf_linker_to_replace(&llvm) else {
        return Ok(());
    };
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({llvm}): {why}"
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

/// Why the `bpf-linker` on the PATH must be installed again, or None when it is the pinned
/// version linked against the nightly's libLLVM `llvm`.
fn bpf_linker_to_replace(llvm: &str) -> Option<String> {
    let Ok(version) = output(Command::new("bpf-linker").arg("--version")) else {
        return Some("none installed".into());
    };
    if !version.contains(BPF_LINKER_VERSION) {
        return Some(format!("{} installed", version.trim()));
    }
    // The libLLVM it needs is named in its dynamic section (`--version` does not say which).
    let bin = crate::vm::which("bpf-linker").and_then(|p| std::fs::read(p).ok());
    if bin.is_some_and(|bin| names(&bin, llvm)) {
        return None;
    }
    Some(format!("the installed one is not linked against {llvm}"))
}

/// Whether `bin` holds `name` as a string between NULs (as an ELF string table holds the name
/// of a NEEDED library).
fn names(bin: &[u8], name: &str) -> bool {
    bin.split(|&b| b == 0).any(|s| s == name.as_bytes())
}

/// The image's static build: the musl target of the stable toolchain, and musl's C compiler
/// for the crates that build C (ring).
pub fn musl() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed
        .lines()
        .any(|l| l.trim() == "x86_64-unknown-linux-musl")
    {
        eprintln!("xtask: rustup target add x86_64-unknown-linux-musl");
        run(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))?;
    }
    install(&["musl-tools", "binutils"])
}

/// Debian packages the kernel test VM needs: qemu, and a static busybox for its initramfs.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static"];

pub fn vm_packages() -> Result<()> {
    install(VM_PACKAGES)
}

fn apt_packages() -> Result<()> {
    install(APT_PACKAGES)
}

/// Debian packages: installed when missing and we are root; otherwise a clear error naming them.
pub fn install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {} (run as root, or apt-get install them)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: apt-get install {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn a_needed_library_is_named_whole() {
        let dynstr = b"\0libgcc_s.so.1\0libLLVM.so.22.1-rust-1.97.0-nightly\0libc.so.6\0";
        assert!(names(dynstr, "libLLVM.so.22.1-rust-1.97.0-nightly"));
        assert!(!names(dynstr, "libLLVM.so.21.1-rust-1.96.0-nightly"));
        // A prefix or a suffix of a name is not the name.
        assert!(!names(dynstr, "libLLVM.so.22.1"));
        assert!(!names(dynstr, "LLVM.so.22.1-rust-1.97.0-nightly"));
    }
}
