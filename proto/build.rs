//! Generates Rust code for the containerd Snapshots API.
//! Needs `protoc` and the well-known types (Debian `protobuf-compiler` + `libprotobuf-dev`; `make deps` installs both).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "protos/containerd/snapshots.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[proto], &["protos"])?;
    Ok(())
}
