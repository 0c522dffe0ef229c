//! Rebuild the eBPF object when the bpf-linker binary changes (it is an undeclared tool dependency).
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => {
            println!("cargo:warning=bpf-linker not found on PATH ({e}); run scripts/setup.sh")
        }
    }
}
