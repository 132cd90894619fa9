//! The layer index: encoding (protobuf, then zstd), bounded decoding, and the invariants a reader
//! checks before trusting an index (`validate`).
//!
//! Entry paths are stored as raw bytes, relative, without a leading `./` or `/`, with no empty,
//! `.` or `..` components and no NUL; there is no entry for the layer root (containerd ignores
//! such tar entries too). Paths are unique: the converter resolves a tar that names the same path
//! twice as extraction would (the later entry wins), so readers can create entries in order without
//! a replace step. No entry lies beneath an earlier non-directory (a symlink included: readers
//! never follow symlinks inside the layer). Hardlinks name an earlier, non-directory entry.

use std::io::Read;

use prost::Message;

use crate::chunker::ChunkerError;
use crate::pb::{Compression, LayerIndex};
use crate::tarsplit::TarSplitError;

mod validate;

pub use validate::{is_safe_path, validate};

/// Media type of a layer index blob.
pub const LAYER_INDEX_MEDIA_TYPE: &str = "application/vnd.chunksnap.layer.index.v1+zstd";
/// Media type of a pack blob.
pub const PACK_MEDIA_TYPE: &str = "application/vnd.chunksnap.pack.v1";
/// `artifactType` of the image artifact.
pub const ARTIFACT_TYPE: &str = "application/vnd.chunksnap.image.index.v1";
/// Annotation on an index descriptor naming the source layer digest.
pub const LAYER_DIGEST_ANNOTATION: &str = "io.chunksnap.layer.digest";
/// Media type of an index delta blob: a layer's raw index as a zstd frame against the raw index
/// of an earlier layer (see [`crate::delta`]).
pub const INDEX_DELTA_MEDIA_TYPE: &str = "application/vnd.chunksnap.layer.index-delta.v1+zstd";
/// Media type of a layer's chunk sketches (read by converters only, see chunkconv's
/// `sketch`).
pub const LAYER_SKETCH_MEDIA_TYPE: &str = "application/vnd.chunksnap.layer.sketch.v1";
/// Index delta annotation: the layer whose index is the delta's base.
pub const INDEX_BASE_ANNOTATION: &str = "io.chunksnap.index.base";
/// Index delta annotation: sha256 of the base's raw index (the exact prefix to decode with).
pub const INDEX_BASE_RAW_ANNOTATION: &str = "io.chunksnap.index.base-raw";
/// Index delta annotation: sha256 of the raw index the delta decodes to.
pub const INDEX_RAW_ANNOTATION: &str = "io.chunksnap.index.raw";
/// Index delta annotation (optional): the packs holding the layer's delta frames, as digests
/// joined by commas. A node that rebuilds the index from the delta reads them while the delta
/// is on the wire.
pub const INDEX_DELTA_PACKS_ANNOTATION: &str = "io.chunksnap.index.delta-packs";
/// The format version this code writes (2: with `tar_split`, see `format::tarsplit`; 3: file
/// offsets stored as gaps, see [`encode_raw`]).
pub const FORMAT_VERSION: u32 = 3;
/// The first version whose regular-file offsets are stored as gaps.
pub const GAP_OFFSETS_VERSION: u32 = 3;
/// The oldest version this code reads (converters use version 1 indexes as delta bases; nodes
/// cannot verify such a layer and fall back).
pub const MIN_FORMAT_VERSION: u32 = 1;
/// Largest decompressed index accepted (an index for millions of entries stays well below).
pub const MAX_INDEX_SIZE: usize = 256 << 20;
/// zstd level for the index blob: indexes are written once and read on every node.
const INDEX_ZSTD_LEVEL: i32 = 12;

/// Why an index is rejected.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("index is not a valid zstd stream: {0}")]
    Decompress(#[source] std::io::Error),
    #[error("index decompresses to more than {MAX_INDEX_SIZE} bytes")]
    TooLarge,
    #[error("index is not a valid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error(
        "index would take at least {estimate} bytes of memory decoded, above the {limit} byte limit",
        limit = crate::budget::MAX_INDEX_MEMORY
    )]
    TooManyElements { estimate: u64 },
    #[error("index uses an unsupported protobuf feature: {0}")]
    Unsupported(&'static str),
    #[error(
        "unknown index format version {0} (this build reads versions {MIN_FORMAT_VERSION}-{FORMAT_VERSION})"
    )]
    UnknownVersion(u32),
    #[error("bad tar-split data: {0}")]
    TarSplit(#[from] TarSplitError),
    #[error("file offsets overflow")]
    OffsetOverflow,
    #[error("index has no source")]
    MissingSource,
    #[error("index has no chunker")]
    MissingChunker,
    #[error("bad chunker parameters: {0}")]
    Chunker(#[from] ChunkerError),
    #[error("invalid {what} digest {value:?}")]
    BadDigest { what: &'static str, value: String },
    #[error("chunk {chunk}: digest is {len} bytes, expected 32")]
    BadDigestLength { chunk: usize, len: usize },
    #[error("entry {entry}: unsafe path {path:?}")]
    UnsafePath { entry: usize, path: String },
    #[error("entry {entry}: {path:?} lies beneath an earlier entry that is not a directory")]
    ParentNotDirectory { entry: usize, path: String },
    #[error("entry {entry}: duplicate path {path:?}")]
    DuplicatePath { entry: usize, path: String },
    #[error("entry {entry} ({path:?}): unknown entry type {value}")]
    UnknownEntryType {
        entry: usize,
        path: String,
        value: i32,
    },
    #[error("entry {entry} ({path:?}): mode {mode:#o} has bits outside 0o7777")]
    BadMode {
        entry: usize,
        path: String,
        mode: u32,
    },
    #[error("entry {entry} ({path:?}): mtime nanoseconds {nsec} out of range")]
    BadMtime {
        entry: usize,
        path: String,
        nsec: u32,
    },
    #[error(
        "entry {entry} ({path:?}): content range {offset}+{size} is out of stream order or beyond the content size {content_size}"
    )]
    BadContentRange {
        entry: usize,
        path: String,
        offset: u64,
        size: u64,
        content_size: u64,
    },
    #[error(
        "entry {entry} ({path:?}): hardlink target {target:?} is not an earlier non-directory entry"
    )]
    BadHardlink {
        entry: usize,
        path: String,
        target: String,
    },
    #[error("entry {entry} ({path:?}): symlink target is empty or contains NUL")]
    BadSymlink { entry: usize, path: String },
    #[error("entry {entry} ({path:?}): invalid xattr name {name:?}")]
    BadXattr {
        entry: usize,
        path: String,
        name: String,
    },
    #[error("chunk {chunk}: size {size} is 0 or above the chunker maximum {max}")]
    BadChunkSize { chunk: usize, size: u32, max: u32 },
    #[error("chunk sizes sum to {sum}, but the content size is {content_size}")]
    ChunkSumMismatch { sum: u64, content_size: u64 },
    #[error("chunk {chunk}: pack {pack} out of range ({packs} packs)")]
    BadPackRef {
        chunk: usize,
        pack: u32,
        packs: usize,
    },
    #[error("chunk {chunk}: unknown compression {value}")]
    UnknownCompression { chunk: usize, value: i32 },
    #[error(
        "chunk {chunk}: stored size {stored} is implausible for {size} bytes ({compression:?})"
    )]
    BadStoredSize {
        chunk: usize,
        stored: u32,
        size: u32,
        compression: Compression,
    },
    #[error("chunk {chunk}: bad delta: {reason}")]
    BadDelta { chunk: usize, reason: String },
    #[error("delta base {base}: {reason}")]
    BadDeltaBase { base: usize, reason: String },
    #[error("chunk {chunk}: range {offset}+{stored} lies outside pack {pack} ({pack_size} bytes)")]
    ChunkOutsidePack {
        chunk: usize,
        pack: u32,
        offset: u64,
        stored: u32,
        pack_size: u64,
    },
}

/// Serialises `index`: protobuf, then a zstd frame. Deterministic for a given index.
pub fn encode(index: &LayerIndex) -> Vec<u8> {
    compress_raw(&encode_raw(index))
}

/// The protobuf bytes of `index` (what an index blob decompresses to, and what index deltas
/// are made of). Deterministic for a given index.
///
/// From format 3 on, a regular file's `offset` is stored as the gap between the end of the
/// previous regular file's content and its own start (almost always 0, so not stored at all):
/// absolute offsets change for every file after one that changed size, which made them a large
/// part of an update's index delta. In memory offsets are always absolute. An index whose files
/// are not in stream order (which `validate` refuses anyway) is written as format 2.
pub fn encode_raw(index: &LayerIndex) -> Vec<u8> {
    if index.version < GAP_OFFSETS_VERSION {
        return index.encode_to_vec();
    }
    // Field by field, as prost's derived encoding writes them (in field-number order), so
    // only one entry at a time is copied: an index can be hundreds of megabytes.
    let mut buf = Vec::with_capacity(index.encoded_len());
    let head = LayerIndex {
        version: index.version,
        source: index.source.clone(),
        chunker: index.chunker.clone(),
        ..LayerIndex::default()
    };
    head.encode_raw(&mut buf);
    let mut end = 0u64;
    for e in &index.entries {
        if !is_file(e) {
            prost::encoding::message::encode(4, e, &mut buf);
            continue;
        }
        let Some(gap) = e.offset.checked_sub(end) else {
            let mut v2 = index.clone();
            v2.version = GAP_OFFSETS_VERSION - 1;
            return v2.encode_to_vec();
        };
        end = e.offset.saturating_add(e.size);
        let stored = crate::pb::Entry {
            offset: gap,
            ..e.clone()
        };
        prost::encoding::message::encode(4, &stored, &mut buf);
    }
    for c in &index.chunks {
        prost::encoding::message::encode(5, c, &mut buf);
    }
    for p in &index.packs {
        prost::encoding::message::encode(6, p, &mut buf);
    }
    for b in &index.delta_bases {
        prost::encoding::message::encode(7, b, &mut buf);
    }
    if let Some(split) = &index.tar_split {
        prost::encoding::message::encode(8, split, &mut buf);
    }
    buf
}

fn is_file(e: &crate::pb::Entry) -> bool {
    e.r#type == crate::pb::EntryType::File as i32
}

/// Turns format 3's stored gaps back into absolute offsets.
fn absolute_offsets(index: &mut LayerIndex) -> Result<(), FormatError> {
    if index.version < GAP_OFFSETS_VERSION {
        return Ok(());
    }
    let mut end = 0u64;
    for e in index.entries.iter_mut().filter(|e| is_file(e)) {
        e.offset = end
            .checked_add(e.offset)
            .ok_or(FormatError::OffsetOverflow)?;
        end = e
            .offset
            .checked_add(e.size)
            .ok_or(FormatError::OffsetOverflow)?;
    }
    Ok(())
}

/// An index blob from raw protobuf bytes.
pub fn compress_raw(raw: &[u8]) -> Vec<u8> {
    // Compressing an in-memory buffer cannot fail short of allocation failure; fall back to a
    // level-0 frame rather than panicking if the level were ever rejected.
    zstd::bulk::compress(raw, INDEX_ZSTD_LEVEL)
        .or_else(|_| zstd::bulk::compress(raw, 0))
        .unwrap_or_default()
}

/// Like [`compress_raw`] at a fast level, for local copies: any level decompresses to the same
/// raw bytes, which is all an index delta's base needs.
pub fn compress_raw_fast(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, 3)
        .or_else(|_| zstd::bulk::compress(raw, 0))
        .unwrap_or_default()
}

/// Most bytes [`decompress`] allocates before they are decoded.
const PREALLOCATE_RAW: u64 = 64 << 20;

/// Decodes and validates an index blob, never inflating it past [`MAX_INDEX_SIZE`].
pub fn decode(blob: &[u8]) -> Result<LayerIndex, FormatError> {
    decode_raw(&decompress(blob)?)
}

/// The raw protobuf bytes of an index blob, never more than [`MAX_INDEX_SIZE`].
pub fn decompress(blob: &[u8]) -> Result<Vec<u8>, FormatError> {
    let decoder = zstd::stream::read::Decoder::new(blob).map_err(FormatError::Decompress)?;
    // Sized up front from the frame's declared size (the blob's word, so within a cap): grown
    // by doubling instead, the buffer would hold up to twice the index while it grows.
    let declared = zstd::zstd_safe::get_frame_content_size(blob)
        .ok()
        .flatten()
        .unwrap_or(0);
    let mut raw = Vec::with_capacity(declared.min(PREALLOCATE_RAW) as usize);
    decoder
        .take(MAX_INDEX_SIZE as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(FormatError::Decompress)?;
    if raw.len() > MAX_INDEX_SIZE {
        return Err(FormatError::TooLarge);
    }
    Ok(raw)
}

/// Decodes and validates raw protobuf index bytes. What the decoded index would take in memory
/// is checked first ([`crate::budget`]), before prost allocates anything.
pub fn decode_raw(raw: &[u8]) -> Result<LayerIndex, FormatError> {
    crate::budget::check(raw)?;
    let mut index = LayerIndex::decode(raw)?;
    absolute_offsets(&mut index)?;
    validate(&index)?;
    Ok(index)
}

/// Largest stored size a chunk of `size` bytes can have: zstd's worst-case bound for zstd frames
/// (`ZSTD_COMPRESSBOUND`), exactly `size` for raw chunks.
pub fn max_stored_size(size: u32, compression: Compression) -> u64 {
    let size = u64::from(size);
    match compression {
        Compression::None => size,
        Compression::Zstd => {
            let margin = if size < (128 << 10) {
                ((128 << 10) - size) >> 11
            } else {
                0
            };
            size + (size >> 8) + margin
        }
    }
}

#[cfg(test)]
mod tests;
