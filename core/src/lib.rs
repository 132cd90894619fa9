//! chunksnap-core: everything both the converter and the node share beyond the format itself,
//! with no daemon or CLI dependencies. The on-registry format (digests, chunker, index, packs,
//! deltas, artifact) lives in the `chunksnap-format` crate.
//!
//! - [`tarscan`]: a layer tar → index entries + the content stream.
//! - [`registry`]: OCI registry access (auth, retries, Range reads, referrers + tag fallback).
//! - [`store`]: the node-wide chunk store (verified chunks by digest, LRU budget).
//! - [`fetch`]: fetching missing chunks from packs with coalesced, parallel Range reads.
//! - [`assemble`]: writing a layer's filesystem from its index and the store.
//! - [`malloc`]: the glibc malloc settings the binaries start with.

pub mod assemble;
pub mod fetch;
pub mod malloc;
pub mod registry;
pub mod store;
pub mod tarscan;
pub mod verify;
