//! chunksnap-core: everything both the converter and the node share, with no daemon or CLI
//! dependencies.
//!
//! - [`digest`]: sha256 digests of chunks and blobs.
//! - [`format`]: the layer index (protobuf + zstd), packs of compressed chunks, the image artifact.
//! - [`chunker`]: FastCDC 2020 over a byte stream.
//! - [`tarscan`]: a layer tar → index entries + the content stream.
//! - [`registry`]: OCI registry access (auth, retries, Range reads, referrers + tag fallback).
//! - [`store`]: the node-wide chunk store (verified chunks by digest, LRU budget).
//! - [`fetch`]: fetching missing chunks from packs with coalesced, parallel Range reads.
//! - [`assemble`]: writing a layer's filesystem from its index and the store.

pub mod assemble;
pub mod chunker;
pub mod digest;
pub mod fetch;
pub mod format;
pub mod registry;
pub mod store;
pub mod tarscan;
pub mod verify;
