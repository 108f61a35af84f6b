fn main() {
    // bpf-linker is an undeclared input of this crate's link step: relink when it changes.
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
