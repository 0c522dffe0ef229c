//! Generates the control channel's gRPC code (and the descriptor set served by reflection) from
//! the repository's proto/.
use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let proto = "../proto/gopher/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("control_v1_descriptor.bin"))
        .compile_protos(&[proto], &["../proto"])
        .context("compiling proto/gopher/control/v1/control.proto (is protoc installed? scripts/setup.sh installs it)")
}
