//! Generates the gRPC API from `proto/fleetward.proto` with protox, a pure-Rust .proto
//! compiler, so building needs no system `protoc`.

use protox::prost::Message as _;
use std::path::PathBuf;

const PROTOS: &[&str] = &["proto/fleetward.proto"];
const INCLUDES: &[&str] = &["proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for path in PROTOS {
        println!("cargo:rerun-if-changed={path}");
    }

    let fds = protox::compile(PROTOS, INCLUDES)?;

    // The same descriptors serve gRPC reflection (`api::FILE_DESCRIPTOR_SET`).
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("fleetward_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-call buffers: a long-lived session keeps its codec buffers (see codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
