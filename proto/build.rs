//! Generates Rust code for the chunksnap index format and the containerd Snapshots API.
//! Needs `protoc` and the well-known types (Debian `protobuf-compiler` + `libprotobuf-dev`; `make deps` installs both).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "protos/chunksnap/v1/index.proto",
        "protos/containerd/snapshots.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["protos"])?;
    Ok(())
}
