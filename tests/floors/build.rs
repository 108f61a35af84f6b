fn main() {
    // bpf-linker is an undeclared input of this crate's link step: relink when it changes.
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // The same code generation as ipipd's programs (see dataplane-ebpf/build.rs).
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
