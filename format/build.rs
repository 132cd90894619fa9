//! Generates the layer index types (`chunksnap.v1`, see `proto/chunksnap/v1/index.proto`) with
//! prost-build only, so the format crate needs no gRPC stack. Needs `protoc` (Debian
//! `protobuf-compiler`; `make deps` installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/chunksnap/v1/index.proto";
    println!("cargo:rerun-if-changed={proto}");
    prost_build::compile_protos(&[proto], &["proto"])?;
    Ok(())
}
