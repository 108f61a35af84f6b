//! `cargo xtask vm`: ipipd and its test suite on another kernel (by default Debian's 6.1 LTS
//! cloud kernel), booted with qemu from an initramfs holding busybox, the binaries, the tools the
//! tests run with their libraries, and the kernel modules the tests need.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, cpio::Archive, run, setup};

/// Debian's metapackage for its cloud kernel; on bookworm, 6.1 LTS.
const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// The Debian meta-package whose newest `linux-image-*` a `--kernel MAJOR.MINOR` names:
/// bookworm's default cloud kernel for 6.1, `linux-image-<v>-cloud-amd64` otherwise (6.12).
fn kernel_meta_package(version: &str) -> Option<String> {
    let (major, minor) = version.split_once('.')?;
    if major.parse::<u32>().is_err() || minor.parse::<u32>().is_err() {
        return None;
    }
    Some(if version == "6.1" {
        DEFAULT_KERNEL_PACKAGE.to_string()
    } else {
        format!("linux-image-{version}-cloud-amd64")
    })
}
/// Modules the data plane and the tests use (dependencies are added from each module's
/// `depends=`): veth pairs, the underlay bridges, clsact + cls_bpf for the netlink (pre-TCX)
/// attach path, and the kernel's own IPIP for the interop test.
const MODULES: &[&str] = &["veth", "bridge", "sch_ingress", "cls_bpf", "ipip"];
/// What the Services tests need of netfilter: kube-proxy's rules in iptables (nf_tables
/// backend, through nft_compat's xt matches and targets) and in nftables, natOutgoing's
/// masquerade, conntrack's netlink for `conntrack -L`, and IPVS. Taken where the kernel has
/// them (built in or a module); the IPVS test says so when it cannot run.
const NETFILTER_MODULES: &[&str] = &[
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "nft_fib_ipv4",
    "nft_numgen",
    "nft_compat",
    "nf_conntrack_netlink",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_addrtype",
    "xt_comment",
    "xt_tcpudp",
    "ip_vs",
    "ip_vs_rr",
    // kube-proxy's IPVS mode puts the VIPs on a dummy device.
    "dummy",
];
/// Host tools the tests and the demo run inside the VM (their libraries are found with ldd).
const TOOLS: &[&str] = &[
    "ip",
    "tc",
    "ping",
    "tcpdump",
    "traceroute",
    "ethtool",
    "iptables",
    "nft",
    "conntrack",
    "ipvsadm",
];
/// iptables' extensions (matches and targets), which it loads by name at run time.
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// Printed by the VM's init as its last line; the number is the suite's exit status.
const STATUS_MARKER: &str = "IPIPD-VM-STATUS=";
const PROBE_MARKER: &str = "IPIPD-VM-PROBE-OK";
const BENCH_JSON_BEGIN: &str = "IPIPD-VM-BENCH-JSON-BEGIN";
const BENCH_JSON_END: &str = "IPIPD-VM-BENCH-JSON-END";
/// Where the project's files go inside the VM.
const VM_DIR: &str = "/ipipd";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Probe KVM with a short boot; fall back to TCG when it fails.
    Auto,
    Kvm,
    Tcg,
}

pub enum Job {
    /// The test binaries of the workspace. `list`: only these binaries and cases (what
    /// `cargo xtask test` closes with, [`REDUCED`] and [`SECOND_KERNEL`]); otherwise every
    /// binary, with `args` (a name filter, `--nocapture`, …).
    Tests {
        args: Vec<String>,
        list: Option<CaseList>,
    },
    /// `cargo xtask run` inside the VM.
    Demo,
    /// `cargo xtask bench` inside the VM (adds D, the kernel's tunl0); its report is copied to
    /// target/bench/vm-bench.{md,json}.
    Bench { quick: bool, rounds: Option<u32> },
}

pub struct Opts {
    pub kernel: Option<PathBuf>,
    pub accel: Accel,
    pub timeout: Duration,
    pub job: Job,
}

/// Test binaries, each with the cases to run (none named: all of them).
pub type CaseList = &'static [(&'static str, &'static [&'static str])];

/// What `cargo xtask test` runs on the second kernel (6.12: TCX and the ipip module together):
/// the programs through its verifier, the interop test against its own tunl0, a Calico node's
/// tunl0 path taken over (with TCX: no qdisc grafted, not a ping lost), and a large first
/// start's netlink filters moved to TCX links.
pub const SECOND_KERNEL: CaseList = &[
    ("verifier_smoke", &[]),
    ("interop", &[]),
    ("services", &[]),
    (
        "calico",
        &["a_calico_nodes_kernel_path_is_taken_over_without_a_lost_ping_and_given_back"],
    ),
    (
        "daemon",
        &["a_large_first_start_moves_its_pods_from_filters_to_tcx_links_without_a_gap"],
    ),
];

/// The reduced case list: what `cargo xtask test` runs in the VM after the host suite (about
/// 3 minutes under TCG here). Every binary runs; left out are the 100 MB transfers and the
/// daemon's runtime-change tests, which `cargo xtask vm` runs.
pub const REDUCED: CaseList = &[
    ("verifier_smoke", &[]),
    ("bpf_fixtures", &[]),
    ("interop", &[]),
    ("observability", &[]),
    ("services", &[]),
    (
        "calico",
        &["a_calico_nodes_kernel_path_is_taken_over_without_a_lost_ping_and_given_back"],
    ),
    (
        "e2e",
        &[
            "icmp_udp_tcp_between_pods_and_hosts",
            "the_underlay_carries_ipip_and_the_counters_match_it",
            "path_mtu_ttl_blackhole_spoofing",
            "ipip_from_a_non_peer_or_with_a_bad_inner_header_is_dropped",
            "pod_traffic_needs_no_route_table",
            "cross_subnet_encapsulates_only_across_the_router",
            "native_xdp_drops_non_peers_early_and_passes_the_rest",
            "vlan_tagged_frames_are_neither_tunnelled_nor_delivered",
        ],
    ),
    (
        "cni",
        &[
            "every_version_adds_checks_and_deletes_a_pod_that_talks",
            "bad_input_gets_the_specs_error_codes_and_a_failed_add_leaves_nothing",
            "del_without_netns_gc_and_a_restart_between_add_and_del",
        ],
    ),
    (
        "daemon",
        &[
            "sigterm_leaves_pods_talking_and_teardown_puts_the_node_back",
            "kill_9_then_restart_leaves_no_stale_state",
            "a_removed_pin_directory_is_put_back",
            "restarts_and_kill_9_lose_no_packet_and_keep_the_counters",
            "start_stop_cycles_leak_no_kernel_object_and_no_fd",
            "an_upgrade_from_v0_1_0_under_traffic_loses_no_packet",
            "a_layout_upgrade_rebuilds_the_maps_without_losing_a_packet",
            "a_large_first_start_moves_its_pods_from_filters_to_tcx_links_without_a_gap",
        ],
    ),
];

pub fn run_vm(root: &Path, opts: Opts) -> Result<()> {
    setup::require_root("the VM's tests create network namespaces and load BPF programs")?;
    setup::vm_packages()?;
    let work = root.join("target/vm");
    std::fs::create_dir_all(&work)?;
    let kernel = Kernel::get(opts.kernel.as_deref(), &work)?;
    eprintln!(
        "xtask vm: kernel {} ({})",
        kernel.release,
        kernel.image.display()
    );
    let accel = match opts.accel {
        Accel::Auto => {
            if probe_kvm(&kernel, &work)? {
                Accel::Kvm
            } else {
                eprintln!("xtask vm: KVM did not boot the probe; using TCG (software emulation)");
                Accel::Tcg
            }
        }
        a => a,
    };

    let mut ar = Archive::default();
    base_system(&mut ar)?;
    let module_list = kernel.modules_into(&mut ar)?;
    let ipipd = root.join("target/release/ipipd");
    add_binary(&mut ar, &format!("{VM_DIR}/ipipd"), &ipipd)?;
    add_binary(
        &mut ar,
        &format!("{VM_DIR}/ipipd-cni"),
        &root.join("target/release/ipipd-cni"),
    )?;
    // The reference plugins the CNI tests delegate to (host-local) and list in CNI_PATH.
    for p in ["host-local", "loopback"] {
        let host = Path::new("/usr/lib/cni").join(p);
        if host.is_file() {
            add_binary(&mut ar, &host.to_string_lossy(), &host)?;
        }
    }
    let commands = match &opts.job {
        Job::Tests { args, list } => {
            let bins = test_binaries()?;
            add_binary(
                &mut ar,
                &format!("{VM_DIR}/ipipd-v0.1.0"),
                &crate::build_v0_1_0()?,
            )?;
            ar.host_tree(
                &format!("{VM_DIR}/bpf-fixtures"),
                &root.join("bpf-fixtures"),
            )?;
            let mut commands = Vec::new();
            // Debian's etcd for the tests of Calico's datastore (the takeover of a Calico
            // node's tunl0 needs the VM kernel's ipip).
            for tool in ["etcd", "etcdctl"] {
                add_tool(&mut ar, tool)?;
            }
            for (name, path) in &bins {
                // The image has no podman and no Python: the OCI image's tests and the
                // manifests' run on the host only; so do those of ipipd's own datastore, which
                // depend on no kernel feature.
                if ["datastore", "image", "deploy"].contains(&name.as_str()) {
                    continue;
                }
                let vm_path = format!("{VM_DIR}/tests/{name}");
                add_binary(&mut ar, &vm_path, path)?;
                // Tests the host cannot run (they need the VM kernel's ipip) are #[ignore]d
                // there, and run here.
                let mut line = vec![vm_path, "--include-ignored".to_string()];
                if let Some(list) = list {
                    let Some((_, cases)) = list.iter().find(|(b, _)| b == name) else {
                        continue;
                    };
                    if !cases.is_empty() {
                        line.push("--exact".into());
                        line.extend(cases.iter().map(|c| c.to_string()));
                    }
                } else {
                    line.extend(args.iter().cloned());
                    // The image has no container runtime: the CNI plugin is tested there by
                    // direct invocation, as the spec defines it.
                    if name == "cni" {
                        line.extend(["--skip".to_string(), "podman".to_string()]);
                    }
                }
                commands.push(line);
            }
            if let Some(list) = list {
                for (b, _) in list.iter() {
                    if !bins.iter().any(|(n, _)| n == b) {
                        bail!(
                            "the reduced VM case list names test binary {b}, which cargo did not build"
                        );
                    }
                }
            }
            commands
        }
        Job::Bench { quick, rounds } => {
            setup::install(&["iperf3"])?;
            add_tool(&mut ar, "iperf3")?;
            let xtask = std::env::current_exe()?;
            add_binary(&mut ar, &format!("{VM_DIR}/xtask"), &xtask)?;
            add_binary(
                &mut ar,
                &format!("{VM_DIR}/ipipd-bench"),
                &root.join("target/release/ipipd-bench"),
            )?;
            let mut line = vec![format!("{VM_DIR}/xtask"), "vm-bench".into()];
            if *quick {
                line.push("--quick".into());
            }
            if let Some(n) = rounds {
                line.push(format!("--rounds={n}"));
            }
            line.push(format!("{VM_DIR}/ipipd"));
            line.push(format!("{VM_DIR}/ipipd-bench"));
            vec![
                line,
                vec!["echo".into(), BENCH_JSON_BEGIN.into()],
                vec!["cat".into(), "/tmp/bench/bench.json".into()],
                vec!["echo".into(), BENCH_JSON_END.into()],
            ]
        }
        Job::Demo => {
            let xtask = std::env::current_exe()?;
            add_binary(&mut ar, &format!("{VM_DIR}/xtask"), &xtask)?;
            vec![vec![
                format!("{VM_DIR}/xtask"),
                "vm-demo".into(),
                format!("{VM_DIR}/ipipd"),
            ]]
        }
    };
    ar.bytes("init", init_script(&module_list, &kernel, &commands), 0o755)?;
    let initrd = work.join("initramfs.cpio");
    let size = ar.write(&initrd)?;
    eprintln!(
        "xtask vm: initramfs {} ({} MiB), booting with {}",
        initrd.display(),
        size >> 20,
        if accel == Accel::Kvm { "KVM" } else { "TCG" }
    );
    let (status, console) = Boot {
        accel,
        memory_mib: 3072,
        timeout: opts.timeout,
        marker: STATUS_MARKER,
        echo: true,
    }
    .run(&kernel, &initrd)?;
    if let Job::Bench { .. } = opts.job {
        save_vm_bench(root, &console, &kernel.release)?;
    }
    match status {
        Some(0) => {
            eprintln!("xtask vm: passed on {}", kernel.release);
            Ok(())
        }
        Some(n) => bail!("the VM run failed (status {n}) on {}", kernel.release),
        None => bail!("the VM stopped without reporting a status (see its console above)"),
    }
}

/// A kernel image and, from a Debian package, its modules.
pub struct Kernel {
    image: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    modules: Option<PathBuf>,
    release: String,
}

impl Kernel {
    fn get(given: Option<&Path>, work: &Path) -> Result<Kernel> {
        let deb = match given {
            Some(p) if p.extension().is_some_and(|e| e == "deb") => p.to_path_buf(),
            Some(p) if !p.exists() && kernel_meta_package(&p.to_string_lossy()).is_some() => {
                let meta = kernel_meta_package(&p.to_string_lossy()).expect("checked");
                download_kernel_package(work, &meta)?
            }
            Some(p) => {
                // A bare bzImage: only what is built in.
                if !p.is_file() {
                    bail!("--kernel {}: no such file", p.display());
                }
                eprintln!(
                    "xtask vm: {} is a bare kernel image: no modules are loaded, so veth, bridge, clsact, cls_bpf (and ipip for the interop test) must be built in",
                    p.display()
                );
                return Ok(Kernel {
                    image: p.to_path_buf(),
                    modules: None,
                    release: p.display().to_string(),
                });
            }
            None => download_kernel_package(work, DEFAULT_KERNEL_PACKAGE)?,
        };
        let stem = deb
            .file_stem()
            .context("kernel package name")?
            .to_string_lossy()
            .into_owned();
        let dir = work.join("kernels").join(&stem);
        if !dir.join("boot").is_dir() {
            let tmp = work.join("kernels").join(format!("{stem}.partial"));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
            std::fs::rename(&tmp, &dir)?;
        }
        let image = std::fs::read_dir(dir.join("boot"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))?;
        let release = image
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("vmlinuz-")
            .to_string();
        let modules = dir.join("lib/modules").join(&release);
        Ok(Kernel {
            image,
            modules: modules.is_dir().then_some(modules),
            release,
        })
    }

    /// Adds the wanted modules and their dependencies; returns their paths in load order.
    fn modules_into(&self, ar: &mut Archive) -> Result<Vec<String>> {
        let Some(dir) = &self.modules else {
            return Ok(Vec::new());
        };
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let mut files = std::collections::HashMap::new();
        index_modules(&dir.join("kernel"), &mut files)?;
        let mut order = Vec::new();
        for m in MODULES {
            add_module(m, &files, &builtin, &mut order, 0)?;
        }
        for m in NETFILTER_MODULES {
            if let Err(e) = add_module(m, &files, &builtin, &mut order, 0) {
                eprintln!("xtask vm: {e:#} (the tests that need it say so)");
            }
        }
        let mut paths = Vec::new();
        for (name, bytes) in order {
            let vm = format!("/usr/lib/modules/{}/{name}.ko", self.release);
            ar.bytes(&vm, bytes, 0o644)?;
            paths.push(vm);
        }
        Ok(paths)
    }
}

fn normalize(module: &str) -> String {
    module.replace('-', "_")
}

fn index_modules(dir: &Path, out: &mut std::collections::HashMap<String, PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            index_modules(&p, out)?;
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(base) = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
        {
            out.insert(normalize(base), p);
        }
    }
    Ok(())
}

fn module_bytes(file: &Path) -> Result<Vec<u8>> {
    let name = file.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return std::fs::read(file).with_context(|| format!("reading {name}"));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(file)
        .output()
        .with_context(|| format!("{tool} -dc {name}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name} failed");
    }
    Ok(out.stdout)
}

/// A module's `depends=` from its .modinfo strings.
fn depends(bytes: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = bytes.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &bytes[at + key.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(normalize)
        .collect()
}

fn add_module(
    name: &str,
    files: &std::collections::HashMap<String, PathBuf>,
    builtin: &str,
    order: &mut Vec<(String, Vec<u8>)>,
    depth: usize,
) -> Result<()> {
    let name = normalize(name);
    if order.iter().any(|(n, _)| *n == name) {
        return Ok(());
    }
    let Some(file) = files.get(&name) else {
        let is_builtin = builtin.lines().any(|l| {
            l.rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".ko"))
                .is_some_and(|f| normalize(f) == name)
        });
        if is_builtin {
            return Ok(());
        }
        bail!("the kernel has no module {name}, and it is not built in");
    };
    if depth > 32 {
        bail!("module dependency loop at {name}");
    }
    // Read (and decompressed) once: for its dependencies, then for the initramfs.
    let bytes = module_bytes(file)?;
    for dep in depends(&bytes) {
        add_module(&dep, files, builtin, order, depth + 1)?;
    }
    order.push((name, bytes));
    Ok(())
}

/// The newest `linux-image-*` that Debian's meta-package `meta` depends on, downloaded (once).
fn download_kernel_package(work: &Path, meta: &str) -> Result<PathBuf> {
    let debs = work.join("debs");
    std::fs::create_dir_all(&debs)?;
    let depends = || {
        Command::new("apt-cache")
            .args(["depends", meta])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let out = match depends() {
        Some(o) => o,
        None => {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            depends().with_context(|| format!("apt-cache depends {meta}"))?
        }
    };
    let package = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("{meta} depends on no linux-image-*"))?
        .to_string();
    let existing = |debs: &Path| -> Result<Option<PathBuf>> {
        Ok(std::fs::read_dir(debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            }))
    };
    if let Some(p) = existing(&debs)? {
        return Ok(p);
    }
    eprintln!("xtask vm: apt-get download {package}");
    run(Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(&debs))?;
    existing(&debs)?.with_context(|| format!("apt-get download {package} left no .deb"))
}

/// Where a host file goes inside the VM: the same path with the host's directory symlinks
/// resolved (Debian's merged /usr: /lib → usr/lib), the file name kept (a library's soname).
fn vm_path_of(path: &Path) -> Result<String> {
    let parent = path
        .parent()
        .context("a file path")?
        .canonicalize()
        .with_context(|| format!("resolving {}", path.display()))?;
    Ok(parent
        .join(path.file_name().context("a file name")?)
        .to_string_lossy()
        .into_owned())
}

/// Installs a host file at the same place inside the VM (once).
fn add_host_path(ar: &mut Archive, path: &Path) -> Result<()> {
    let at = vm_path_of(path)?;
    if !ar.contains(&at) {
        ar.host_file(&at, path)?;
    }
    Ok(())
}

/// A host tool found on PATH, at its own place inside the VM, with its libraries.
fn add_tool(ar: &mut Archive, tool: &str) -> Result<()> {
    let p = which(tool).with_context(|| format!("{tool} is missing on this machine"))?;
    add_binary(ar, &vm_path_of(&p)?, &p)
}

/// A dynamically linked binary at `vm_path`, and every library ldd lists for it.
fn add_binary(ar: &mut Archive, vm_path: &str, host: &Path) -> Result<()> {
    ar.host_file(vm_path, host)?;
    let out = Command::new("ldd").arg(host).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: "not a dynamic executable".
        return Ok(());
    }
    for line in text.lines() {
        let lib = match line.split_once("=>") {
            Some((_, r)) => r.trim(),
            None => line.trim(),
        };
        let lib = lib.split(" (").next().unwrap_or_default().trim();
        if lib.starts_with('/') {
            add_host_path(ar, Path::new(lib))?;
        } else if line.contains("not found") {
            bail!("{}: ldd cannot find {}", host.display(), line.trim());
        }
    }
    Ok(())
}

/// Where `tool` is on the PATH (or in the sbin directories a root shell has).
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// busybox, the tools, and the few files of /etc they read.
fn base_system(ar: &mut Archive) -> Result<()> {
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        ar.symlink(link, target)?;
    }
    for d in ["proc", "sys", "dev", "tmp", "run", "root", "var/tmp", "etc"] {
        ar.dir(d)?;
    }
    let busybox = which("busybox").context("busybox (Debian's busybox-static) is missing")?;
    ar.host_file("usr/bin/busybox", &busybox)?;
    // Debian's busybox sh prefers its own applets (its `ip` is not iproute2): scripts, the
    // tests' `sh -c` included, get a real sh.
    add_binary(ar, "usr/bin/sh", Path::new("/usr/bin/dash"))?;
    // Its applets in a directory of their own, last in PATH: the real tools win.
    let list = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        ar.symlink(&format!("bb/{applet}"), "/usr/bin/busybox")?;
    }
    for tool in TOOLS {
        add_tool(ar, tool)?;
    }
    if Path::new(XTABLES_DIR).is_dir() {
        ar.host_tree(XTABLES_DIR, Path::new(XTABLES_DIR))?;
    }
    // tcpdump drops privileges to its own user; the tools look up protocols and services.
    for f in ["passwd", "group", "protocols", "services"] {
        let p = Path::new("/etc").join(f);
        if p.is_file() {
            ar.host_file(&format!("etc/{f}"), &p)?;
        }
    }
    ar.bytes("etc/hosts", "127.0.0.1 localhost\n", 0o644)?;
    Ok(())
}

/// Single-quoted for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn init_script(modules: &[String], kernel: &Kernel, commands: &[Vec<String>]) -> String {
    let mut s = String::from(
        r#"#!/usr/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/bb HOME=/root RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up
"#,
    );
    if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
        s.push_str("export CI=true\n");
    }
    for m in modules {
        s.push_str(&format!(
            "insmod {} || echo 'vm: insmod {m} failed'\n",
            quote(m)
        ));
    }
    s.push_str(&format!(
        "echo \"vm: $(uname -sr) ({}) cpus $(nproc), $(awk '/MemTotal/ {{print $2/1024 \" MiB\"}}' /proc/meminfo)\"\n",
        kernel.release
    ));
    s.push_str(&format!(
        "export IPIPD_BIN={VM_DIR}/ipipd IPIPD_V010_BIN={VM_DIR}/ipipd-v0.1.0 IPIPD_FIXTURES={VM_DIR}/bpf-fixtures\ncd /tmp\nstatus=0\n"
    ));
    for c in commands {
        let line: Vec<String> = c.iter().map(|a| quote(a)).collect();
        s.push_str(&format!(
            "echo \"vm: running {}\"\n{} || status=$?\n",
            c.join(" ").replace('"', ""),
            line.join(" ")
        ));
    }
    s.push_str(&format!(
        "echo \"vm: netns left: $(ip netns list | wc -l)\"\necho \"{STATUS_MARKER}$status\"\nsync\npoweroff -f\n"
    ));
    s
}

/// The workspace's test binaries, built (release) for the VM.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let out = cargo()
        .args([
            "test",
            "--release",
            "--locked",
            "--package",
            "ipipd-tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str())
        else {
            continue;
        };
        if v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"))
        {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    bins.sort();
    if bins.is_empty() {
        bail!("cargo built no test binaries");
    }
    Ok(bins)
}

fn qemu(kernel: &Kernel, initrd: &Path, accel: Accel, memory_mib: u32) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    // A 6.12 guest under TCG once panicked midway through the suite on an int3 in
    // `sched_clock_cpu`, from `__sched_clock_work`: the kernel turning sched_clock's stability
    // off, a static key, which it does only when the TSC is marked unstable (at run time, by
    // the clocksource watchdog, which takes an emulation stall for skew), and patching kernel
    // text while the other vCPU runs it can trip under TCG. TCG's TSC is one host clock for
    // both vCPUs; `tsc=reliable` takes it off the watchdog.
    let (accel, cpu, clock) = match accel {
        Accel::Kvm => ("kvm", "host", ""),
        _ => ("tcg,thread=multi", "max", " tsc=reliable"),
    };
    cmd.args(["-accel", accel, "-cpu", cpu, "-smp", "2", "-m"])
        .arg(memory_mib.to_string())
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=3 net.ifnames=0{clock}"
        ));
    cmd
}

struct Boot {
    accel: Accel,
    memory_mib: u32,
    timeout: Duration,
    marker: &'static str,
    /// Stream the console (and qemu's errors) to ours.
    echo: bool,
}

impl Boot {
    /// Boots, streams the console, and returns the number after `marker` (None if the VM stopped
    /// without printing it). The VM is killed after `timeout`.
    fn run(&self, kernel: &Kernel, initrd: &Path) -> Result<(Option<i32>, Vec<String>)> {
        let (timeout, marker) = (self.timeout, self.marker);
        let mut child = qemu(kernel, initrd, self.accel, self.memory_mib)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if self.echo {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let pid = child.id() as i32;
        let done = Arc::new(AtomicBool::new(false));
        let timed_out = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (done, timed_out) = (done.clone(), timed_out.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    if start.elapsed() > timeout {
                        timed_out.store(true, Ordering::Relaxed);
                        // SAFETY: signalling our own child, which has not been reaped yet.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let mut status = None;
        let (mut passed, mut failed) = (0u64, 0u64);
        let mut console = Vec::new();
        let out = child.stdout.take().expect("piped");
        let mut reader = BufReader::new(out);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf)? > 0 {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\r', '\n']);
            if self.echo {
                println!("{line}");
            }
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += crate::count_in_result(rest, "passed");
                failed += crate::count_in_result(rest, "failed");
            }
            if let Some(n) = line.trim().strip_prefix(marker) {
                status = Some(n.trim().parse().unwrap_or(-1));
            }
            console.push(line.to_string());
            buf.clear();
        }
        let exit = child.wait()?;
        done.store(true, Ordering::Relaxed);
        let _ = watchdog.join();
        if timed_out.load(Ordering::Relaxed) {
            bail!(
                "the VM ran over its {} s limit and was killed",
                timeout.as_secs()
            );
        }
        if self.echo {
            if status.is_none() && !exit.success() {
                eprintln!("xtask vm: qemu exited with {exit}");
            }
            if passed + failed > 0 {
                println!("xtask vm: {passed} passed, {failed} failed");
            }
        }
        Ok((status, console))
    }
}

/// A boot under KVM of an initramfs that only prints a marker.
fn probe_kvm(kernel: &Kernel, work: &Path) -> Result<bool> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let mut ar = Archive::default();
    let busybox = which("busybox").context("busybox (Debian's busybox-static) is missing")?;
    ar.host_file("usr/bin/busybox", &busybox)?;
    ar.bytes(
        "init",
        format!("#!/usr/bin/busybox sh\necho {PROBE_MARKER}=0\n/usr/bin/busybox poweroff -f\n"),
        0o755,
    )?;
    let initrd = work.join("probe.cpio");
    ar.write(&initrd)?;
    let booted = Boot {
        accel: Accel::Kvm,
        memory_mib: 256,
        // A busybox initramfs boots in well under a second under working KVM.
        timeout: Duration::from_secs(20),
        marker: PROBE_MARKER,
        echo: false,
    }
    .run(kernel, &initrd);
    Ok(matches!(booted, Ok((Some(0), _))))
}

/// The VM bench's JSON from the console, and its markdown rendered again on the host, under
/// target/bench/vm-bench.{json,md}.
fn save_vm_bench(root: &Path, console: &[String], release: &str) -> Result<()> {
    let start = console
        .iter()
        .position(|l| l.trim() == BENCH_JSON_BEGIN)
        .context("the VM printed no bench report")?;
    let end = console[start..]
        .iter()
        .position(|l| l.trim() == BENCH_JSON_END)
        .context("the VM's bench report is cut short")?;
    // The init announces each command it runs ("vm: running …"): not part of the report.
    let json = console[start + 1..start + end]
        .iter()
        .filter(|l| !l.starts_with("vm: "))
        .map(|l| {
            l.split("vm: running")
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let v: serde_json::Value = serde_json::from_str(&json).context("the VM's bench report")?;
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("vm-bench.json"), serde_json::to_string_pretty(&v)?)?;
    let md = console
        .iter()
        .skip_while(|l| !l.starts_with("Measured "))
        .take_while(|l| !l.starts_with("xtask bench: wrote"))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(out.join("vm-bench.md"), &md)?;
    eprintln!(
        "xtask vm: bench on {release} saved to {}",
        out.join("vm-bench.md").display()
    );
    Ok(())
}
