fn main() {
    // bpf-linker is an undeclared input of this crate's link step: relink when it changes.
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // Header fields are byte arrays (alignment 1); with misaligned access allowed LLVM reads
    // them in words instead of byte by byte. The kernels ipipd runs on (x86-64, arm64) take a
    // misaligned packet or map-value access; stack accesses must stay aligned, which the
    // verifier checks at every load (see `monitor::Bytes`). bpf-linker built against LLVM 22.
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
