//! Loading the embedded object into the kernel.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier, Xdp},
};
use dataplane_common::program_names;

use crate::EBPF_OBJECT;

/// One program as the kernel accepted it.
#[derive(Debug, Clone)]
pub struct LoadedProgram {
    pub name: &'static str,
    pub id: u32,
    /// Instructions the verifier processed for this program (None on kernels that do not say).
    pub verified_insns: Option<u32>,
    /// Size of the program after translation, in bytes.
    pub xlated_bytes: Option<u32>,
    /// Size of its JIT image, in bytes (0 without the JIT).
    pub jited_bytes: u32,
}

/// Parses the embedded object and creates its maps (not pinned).
pub fn open_object() -> Result<Ebpf> {
    raise_memlock();
    EbpfLoader::new()
        .load(EBPF_OBJECT)
        .context("loading the embedded eBPF object (maps and BTF)")
}

/// Parses the embedded object with every map pinned at `<pin_dir>/<map name>` (opened when the
/// pin exists with a compatible layout, created and pinned otherwise). A kernel-flows map that
/// is created gets `kernel_flows` entries; one that exists keeps its size.
pub fn open_object_pinned(pin_dir: &std::path::Path, kernel_flows: u32) -> Result<Ebpf> {
    open_pinned(EBPF_OBJECT, pin_dir, kernel_flows)
}

/// [`open_object_pinned`] for another build of the programs (the bench's, which counts what
/// each packet costs): the maps that build shares with ipipd's by name are the pinned ones.
pub fn open_pinned(object: &[u8], pin_dir: &std::path::Path, kernel_flows: u32) -> Result<Ebpf> {
    raise_memlock();
    let mut loader = EbpfLoader::new();
    for name in dataplane_common::map_names::ALL {
        loader.map_pin_path(name, pin_dir.join(name));
    }
    loader.map_max_entries(dataplane_common::map_names::KERNEL_FLOWS, kernel_flows);
    loader.load(object).with_context(|| {
        format!(
            "loading the eBPF object, maps pinned in {}",
            pin_dir.display()
        )
    })
}

/// The kernel-flows map's size when the config does not give one: the node's conntrack limit
/// (`net.netfilter.nf_conntrack_max`: a flow the programs record has a conntrack entry while it
/// lives, so the map holds every live one), within the config's bounds; the object's default
/// without conntrack.
pub fn kernel_flows_default() -> u32 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map_or(dataplane_common::KERNEL_FLOWS, |n| {
            n.clamp(
                crate::config::KERNEL_FLOWS_MIN,
                crate::config::KERNEL_FLOWS_MAX,
            )
        })
}

/// Loads every program of the object into the kernel (BPF_PROG_LOAD: the verifier runs here).
pub fn load_all(ebpf: &mut Ebpf) -> Result<Vec<LoadedProgram>> {
    program_names::ALL
        .iter()
        .map(|&name| load_one(ebpf, name))
        .collect()
}

fn load_one(ebpf: &mut Ebpf, name: &'static str) -> Result<LoadedProgram> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the object has no program {name}"))?;
    let info = if program_names::is_xdp(name) {
        let p: &mut Xdp = prog.try_into()?;
        p.load().map_err(|e| verifier_error(name, e))?;
        p.info()?
    } else {
        let p: &mut SchedClassifier = prog.try_into()?;
        p.load().map_err(|e| verifier_error(name, e))?;
        p.info()?
    };
    Ok(LoadedProgram {
        name,
        id: info.id(),
        verified_insns: info.verified_instruction_count(),
        xlated_bytes: info.size_translated(),
        jited_bytes: info.size_jitted(),
    })
}

/// A load error with the verifier's log, which is what an operator needs to read.
fn verifier_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            anyhow!("the kernel refused program {name}: {io_error}\nverifier log:\n{verifier_log}")
        }
        other => anyhow!(other).context(format!("loading program {name}")),
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg. Raising the
/// limit may be refused (no CAP_SYS_RESOURCE), which is harmless on the latter.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if rc != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}
