//! `cargo xtask`: setup, build, run and test ipipd.

mod bench;
mod cpio;
mod demo;
mod image;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test ipipd")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need and is missing: the nightly's rust-src,
    /// bpf-linker built against the nightly's own LLVM, and (as root) Debian packages.
    Setup,
    /// Set up, then build ipipd (release) with the eBPF object embedded.
    Build,
    /// Set up, build, then run the main job on an embedded default: the seed's two-node cluster
    /// in network namespaces, ipipd on each node, pods pinging across nodes, the counters, and a
    /// full teardown. Needs root.
    Run {
        /// Run the demo inside the kernel test VM (`cargo xtask vm`'s kernel and options).
        #[arg(long)]
        vm: bool,
        #[command(flatten)]
        vm_opts: VmArgs,
        /// Run ipipd with these arguments instead of the demo (e.g. `probe`, `check --config F`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, then run every test of the workspace, privileged ones
    /// (network namespaces, BPF loading) included. Needs root.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the closing run in the kernel test VM (local use only: refused under CI=true).
        #[arg(long)]
        no_vm: bool,
        #[command(flatten)]
        vm_opts: VmArgs,
        /// Passed to the test binaries (a name filter, `--nocapture`, …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        test_args: Vec<String>,
    },
    /// `cargo fmt --check`, and clippy with -D warnings on the host crates and on the eBPF crate.
    Lint,
    /// Set up, build, then run the packet fuzzer long: mutated and random frames through every
    /// program on a running daemon's maps, invariants checked on each (tests/tests/fuzz.rs;
    /// `cargo xtask test` runs a 20,000-frame slice of it). Needs root.
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// The generator's seed (the same seed and count give the same frames).
        #[arg(long, default_value_t = 0x1b1d_2003)]
        seed: u64,
    },
    /// Set up, build, then boot a kernel test VM (Debian's 6.1 LTS cloud kernel unless --kernel
    /// says otherwise) with qemu and run the test suite inside it. Needs root.
    Vm {
        #[command(flatten)]
        vm_opts: VmArgs,
        /// The short case list `cargo xtask test` closes with.
        #[arg(long)]
        reduced: bool,
        /// Passed to every test binary in the VM (a name filter, `--nocapture`, …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        test_args: Vec<String>,
    },
    /// Set up, build, then measure ipipd against the kernel's paths (throughput, CPU, latency,
    /// program cost, control-plane scale); writes target/bench/bench.{md,json}. Needs root.
    Bench {
        /// One round of short runs (under 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Also record a system-wide perf profile of each setup's runs
        /// (target/bench/perf-<setup>-<workload>.data; `perf report -i …`), and split each TCP
        /// setup's CPU per GB by what ran (ipipd's programs, the kernel's forwarding, the rest).
        /// Needs Debian's linux-perf.
        #[arg(long)]
        profile: bool,
        /// Rounds of the traffic part (default: 5, or 1 with --quick). More rounds tighten the
        /// spread of the in-situ ratios on a noisy machine.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: Option<u32>,
        /// Run it in the kernel test VM (whose kernel has ipip: adds D, the kernel's tunl0).
        /// Under TCG only the ratios mean anything.
        #[arg(long)]
        vm: bool,
        /// Only these parts (comma-separated): traffic, testrun, scale, restart, cni, datastore.
        /// Default: all.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Part>,
        /// The TCP congestion control of the iperf3 runs (iperf3 -C), one of the kernel's
        /// net.ipv4.tcp_available_congestion_control. Default: the host's, which new namespaces
        /// inherit.
        #[arg(long, value_name = "NAME")]
        cc: Option<String>,
        /// Endpoints of the scale part (with its 10,000 remote blocks).
        #[arg(long, value_name = "N", default_value_t = 1_000)]
        scale_endpoints: usize,
        #[command(flatten)]
        vm_opts: VmArgs,
    },
    /// Set up, then build ipipd's OCI image (static binaries and nft on an empty base) with
    /// podman and save it as target/image/ipipd-image.tar. Needs root.
    Image,
    /// (Inside the VM) the bench, with these binaries; output under /tmp/bench.
    #[command(hide = true)]
    VmBench {
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        rounds: Option<u32>,
        ipipd: PathBuf,
        bench_bin: PathBuf,
    },
    /// (Inside the VM) the demo of `cargo xtask run`, with this ipipd binary.
    #[command(hide = true)]
    VmDemo { ipipd: PathBuf },
}

#[derive(clap::Args)]
struct VmArgs {
    /// A Debian cloud kernel by version (`6.1`, `6.12`: the newest of that line, downloaded
    /// with apt-get), a Debian linux-image .deb, or a bare bzImage (modules then must be built
    /// in). Default: 6.1, Debian's linux-image-cloud-amd64 on bookworm.
    #[arg(long, value_name = "VERSION_DEB_OR_BZIMAGE")]
    kernel: Option<PathBuf>,
    /// auto: a probe boot under KVM, falling back to TCG (software emulation) when it fails.
    #[arg(long, value_enum, default_value = "auto")]
    accel: vm::Accel,
    /// The VM is killed after this many minutes.
    #[arg(long, value_name = "MINUTES", default_value_t = 40)]
    vm_timeout: u64,
}

impl VmArgs {
    fn opts(&self, job: vm::Job) -> vm::Opts {
        vm::Opts {
            kernel: self.kernel.clone(),
            accel: self.accel,
            timeout: std::time::Duration::from_secs(self.vm_timeout * 60),
            job,
        }
    }
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Inside the VM: there is no source tree.
    match &cli.command {
        Cmd::VmDemo { ipipd } => return demo::run(ipipd),
        Cmd::VmBench {
            quick,
            rounds,
            ipipd,
            bench_bin,
        } => {
            return bench::run(bench::Opts {
                quick: *quick,
                rounds: *rounds,
                profile: false,
                only: Vec::new(),
                cc: None,
                scale_endpoints: 1_000,
                out: PathBuf::from("/tmp/bench"),
                ipipd: ipipd.clone(),
                cni_plugin: ipipd.with_file_name("ipipd-cni"),
                bench_bin: bench_bin.clone(),
            });
        }
        _ => {}
    }
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup => setup::all(),
        Cmd::Build => {
            setup::all()?;
            build()
        }
        Cmd::Run { vm, vm_opts, args } => {
            setup::all()?;
            build()?;
            let bin = root.join("target/release/ipipd");
            if vm {
                if !args.is_empty() {
                    bail!("--vm runs the demo; ipipd arguments are not taken with it");
                }
                return vm::run_vm(&root, vm_opts.opts(vm::Job::Demo));
            }
            if !args.is_empty() {
                return run(Command::new(&bin).args(&args));
            }
            setup::require_root("the demo creates network namespaces and loads BPF programs")?;
            demo::run(&bin)
        }
        Cmd::Test {
            no_lint,
            no_vm,
            vm_opts,
            test_args,
        } => {
            if no_vm && under_ci() {
                bail!("--no-vm is for local use: under CI=true the VM run is part of the test");
            }
            setup::require_root("the tests create network namespaces and load BPF programs")?;
            setup::all()?;
            if !no_lint {
                lint()?;
            }
            let host = test(&test_args);
            if no_vm {
                return host;
            }
            // The VM runs go on after a host failure, so one CI run shows all: the reduced list
            // on 6.1 (netlink attachments, no TCX), then, unless --kernel names one kernel, the
            // verifier and interop tests on 6.12 (TCX and the ipip module).
            let mut in_vm = vm::run_vm(
                &root,
                vm_opts.opts(vm::Job::Tests {
                    args: Vec::new(),
                    list: Some(vm::REDUCED),
                }),
            );
            if vm_opts.kernel.is_none() {
                let mut second = vm_opts.opts(vm::Job::Tests {
                    args: Vec::new(),
                    list: Some(vm::SECOND_KERNEL),
                });
                second.kernel = Some(PathBuf::from("6.12"));
                let r = vm::run_vm(&root, second).context("on 6.12");
                in_vm = match (in_vm, r) {
                    (Ok(()), r) => r,
                    (Err(e), Ok(())) => Err(e),
                    (Err(e), Err(f)) => Err(e.context(format!("and {f:#}"))),
                };
            }
            match (host, in_vm) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), Ok(())) => Err(e),
                (Ok(()), Err(e)) => Err(e.context("the host suite passed; the VM run failed")),
                (Err(h), Err(v)) => {
                    bail!("the host suite failed ({h:#}), and so did the VM run ({v:#})")
                }
            }
        }
        Cmd::Fuzz { frames, seed } => {
            setup::require_root("the fuzzer runs a daemon in a namespace and loads BPF programs")?;
            setup::all()?;
            build()?;
            run(cargo()
                .env("IPIPD_FUZZ_FRAMES", frames.to_string())
                .env("IPIPD_FUZZ_SEED", seed.to_string())
                .args(["test", "--release", "--locked", "-p", "ipipd-tests"])
                .args(["--test", "fuzz", "--", "--nocapture"]))
        }
        Cmd::Lint => {
            setup::all()?;
            lint()
        }
        Cmd::Image => {
            setup::require_root("podman builds the image in the system's storage")?;
            setup::all()?;
            image::build(&root)
        }
        Cmd::Vm {
            vm_opts,
            reduced,
            test_args,
        } => {
            setup::all()?;
            build()?;
            vm::run_vm(
                &root,
                vm_opts.opts(vm::Job::Tests {
                    args: test_args,
                    list: reduced.then_some(vm::REDUCED),
                }),
            )
        }
        Cmd::Bench {
            quick,
            profile,
            rounds,
            vm,
            only,
            cc,
            scale_endpoints,
            vm_opts,
        } => {
            if vm && (profile || !only.is_empty() || cc.is_some()) {
                bail!("--profile, --only and --cc apply to the bench on this kernel, not to --vm");
            }
            if let Some(cc) = &cc {
                bench::check_congestion_control(cc)?;
            }
            setup::all()?;
            build_bench()?;
            if vm {
                return vm::run_vm(&root, vm_opts.opts(vm::Job::Bench { quick, rounds }));
            }
            setup::install(&["iperf3"])?;
            if profile {
                setup::install(&["linux-perf"])?;
            }
            // The parts that start `ipipd-cni` run the image's static build: the plugin a
            // node's runtime starts.
            if bench::starts_plugin(&only) {
                image::build_static()?;
            }
            bench::run(bench::Opts {
                quick,
                rounds,
                profile,
                only,
                cc,
                scale_endpoints,
                out: root.join("target/bench"),
                ipipd: root.join("target/release/ipipd"),
                cni_plugin: image::static_binary(&root, "ipipd-cni"),
                bench_bin: root.join("target/release/ipipd-bench"),
            })
        }
        Cmd::VmDemo { .. } | Cmd::VmBench { .. } => unreachable!("handled above"),
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Where the fuzz test leaves its report (its CARGO_TARGET_TMPDIR).
const FUZZ_REPORT: &str = "target/tmp/fuzz-report.txt";

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The eBPF crates: they build only for bpfel-unknown-none, with the nightly (ipipd's programs,
/// embedded by dataplane-user's build.rs, and the bench's floors, by ipipd-bench's).
const EBPF_CRATES: [&str; 2] = ["dataplane-ebpf", "ipipd-bench-floors"];

/// Release v0.1.0, the data plane before the hitless lifecycle, named by its commit (a tag may
/// not travel with a clone): the upgrade test starts from it.
pub const V0_1_0: &str = "2ac99f6465b2baa2c9f3ba99a41126df030bf861";

/// Builds ipipd v0.1.0 from its commit, in a git worktree under target/v0.1.0 with its own
/// target directory (its lock file, its build); cargo makes a second call a no-op.
pub fn build_v0_1_0() -> Result<PathBuf> {
    let root = workspace_root();
    let dir = root.join("target/v0.1.0");
    let src = dir.join("src");
    if !src.join("Cargo.toml").is_file() {
        let _ = Command::new("git")
            .current_dir(&root)
            .args(["worktree", "prune"])
            .status();
        run(Command::new("git")
            .current_dir(&root)
            .args(["worktree", "add", "--detach", "--force"])
            .arg(&src)
            .arg(V0_1_0))?;
    }
    run(cargo()
        .current_dir(&src)
        .args(["build", "--release", "--locked", "-p", "dataplane-user"])
        .arg("--target-dir")
        .arg(dir.join("target")))?;
    Ok(dir.join("target/release/ipipd"))
}

/// Builds ipipd (release), the product alone.
fn build() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        "dataplane-user",
    ]))
}

/// Builds ipipd and the bench's own tool, `ipipd-bench` (with the floor programs).
fn build_bench() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        "dataplane-user",
        "--package",
        "ipipd-bench",
    ]))
}

/// `--workspace` without the eBPF crates.
fn host_crates(cmd: &mut Command) -> &mut Command {
    cmd.arg("--workspace");
    for c in EBPF_CRATES {
        cmd.args(["--exclude", c]);
    }
    cmd
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(
        host_crates(cargo().args(["clippy", "--release", "--locked"])).args([
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The eBPF crates with the nightly, for their own target, with the cfg aya-build gives them.
    let mut clippy = Command::new("rustup");
    clippy
        .env("AYA_BPF_TARGET_ARCH", std::env::consts::ARCH)
        .args(["run", "nightly", "cargo", "clippy", "--release", "--locked"]);
    for c in EBPF_CRATES {
        clippy.args(["--package", c]);
    }
    run(clippy.args([
        "--target",
        "bpfel-unknown-none",
        "-Zbuild-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

fn test(test_args: &[String]) -> Result<()> {
    let _ = std::fs::remove_file(workspace_root().join(FUZZ_REPORT));
    // The end-to-end tests run the ipipd binary itself, the upgrade test v0.1.0's, and the
    // image test the image.
    build()?;
    let old = build_v0_1_0()?;
    image::build(&workspace_root())?;
    // Release: the same object as the shipped binary, and the e2e traffic runs at speed.
    let mut cmd = cargo();
    cmd.env("IPIPD_V010_BIN", old);
    // The eBPF crates only build for the BPF target: their programs are tested through the
    // objects.
    host_crates(cmd.args(["test", "--release", "--locked"])).arg("--no-fail-fast");
    if !test_args.is_empty() {
        cmd.arg("--").args(test_args);
    }
    // Stream cargo's output, and close with the total over every test binary (cargo's own last
    // lines are the doc-test runs, which have none).
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let out = child.stdout.take().expect("piped stdout");
    for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_in_result(rest, "passed");
            failed += count_in_result(rest, "failed");
        }
    }
    let status = child.wait()?;
    println!("xtask: {passed} passed, {failed} failed");
    // The fuzzer's slice says what it ran (its seed, its count, what the programs decided).
    if let Ok(report) = std::fs::read_to_string(workspace_root().join(FUZZ_REPORT)) {
        println!("{report}");
    }
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// The number before `word` in a libtest summary ("ok. 3 passed; 0 failed; …").
pub fn count_in_result(rest: &str, word: &str) -> u64 {
    rest.split(';')
        .find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
}
