//! Builds the eBPF programs (agent-ebpf) with aya-build and leaves the object in `OUT_DIR`, from
//! where `include_bytes_aligned!` embeds it in the binary; and generates the control channel's
//! gRPC code (and the descriptor set served by reflection) from proto/.
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Must match rust-toolchain.toml: the eBPF build runs `rustup run <this>`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    control_proto()?;
    ebpf()
}

fn control_proto() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let proto = "../proto/gopher/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("control_v1_descriptor.bin"))
        .compile_protos(&[proto], &["../proto"])
        .context("compiling proto/gopher/control/v1/control.proto (is protoc installed? scripts/setup.sh installs it)")
}

fn ebpf() -> anyhow::Result<()> {
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
