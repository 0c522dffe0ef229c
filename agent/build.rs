//! Builds the eBPF programs (agent-ebpf) with aya-build and leaves the object in `OUT_DIR`, from
//! where `include_bytes_aligned!` embeds it in the binary.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Must match rust-toolchain.toml: the eBPF build runs `rustup run <this>`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "gopher-ebpf")
        .ok_or_else(|| anyhow!("gopher-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(EBPF_TOOLCHAIN))
}
