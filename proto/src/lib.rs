//! Generated protobuf and gRPC code, nothing else.
//!
//! - [`index`]: the chunksnap layer index (format v2), see `protos/chunksnap/v1/index.proto`.
//! - [`snapshots`]: containerd's Snapshots API (server and client), wire-compatible with
//!   containerd 1.6+.

/// chunksnap layer index, format v2.
pub mod index {
    tonic::include_proto!("chunksnap.v1");
}

/// containerd Snapshots service (`containerd.services.snapshots.v1`).
pub mod snapshots {
    tonic::include_proto!("containerd.services.snapshots.v1");
}
