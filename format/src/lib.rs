//! chunksnap-format: the chunksnap on-registry format (v2), with no I/O beyond `Read`/`Write` and
//! no daemon dependencies (no async runtime, registry client or syscalls). The converter writes
//! it, the node and the fuzz targets read it.
//!
//! - [`digest`]: sha256 digests of chunks and blobs.
//! - [`chunker`]: FastCDC 2020 over a byte stream.
//! - [`pb`]: the generated layer index types (`chunksnap.v1`, `proto/chunksnap/v1/index.proto`).
//! - [`index`]: encoding, decoding and validating layer indexes (protobuf + zstd).
//! - [`pack`]: packs of compressed chunks.
//! - [`delta`]: delta frames against earlier chunks.
//! - [`artifact`]: the image artifact manifest tying indexes and packs to an image.
//! - [`tarsplit`]: the tar bytes that are not file content, to rebuild a layer's exact tar.
//!
//! Output of this crate is pinned by `tests/golden.rs`: registries already hold its bytes.

pub mod artifact;
pub mod budget;
pub mod chunker;
pub mod delta;
pub mod digest;
pub mod index;
pub mod pack;
pub mod tarsplit;

/// Generated protobuf types of the layer index, format v2 (`chunksnap.v1`).
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/chunksnap.v1.rs"));
}

pub use index::FormatError;
pub use pack::PackError;
