//! The layer index: encoding (protobuf, then zstd), bounded decoding, and the invariants a reader
//! checks before trusting an index (`validate`).
//!
//! Entry paths are stored as raw bytes, relative, without a leading `./` or `/`, with no empty,
//! `.` or `..` components and no NUL; there is no entry for the layer root (containerd ignores
//! such tar entries too). Paths are unique: the converter resolves a tar that names the same path
//! twice as extraction would (the later entry wins), so readers can create entries in order without
//! a replace step. No entry lies beneath an earlier non-directory (a symlink included: readers
//! never follow symlinks inside the layer). Hardlinks name an earlier, non-directory entry.

use std::collections::HashSet;
use std::io::Read;

use prost::Message;

use crate::chunker::{ChunkerError, ChunkerParams};
use crate::delta::MAX_DELTA_BASE;
use crate::digest::Digest;
use crate::pb::{Chunk, Compression, Delta, Entry, EntryType, LayerIndex};
use crate::tarsplit::{self, TarSplitError};

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
/// The format version this code writes (2: with `tar_split`, see `format::tarsplit`).
pub const FORMAT_VERSION: u32 = 2;
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
pub fn encode_raw(index: &LayerIndex) -> Vec<u8> {
    index.encode_to_vec()
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

/// Decodes and validates an index blob, never inflating it past [`MAX_INDEX_SIZE`].
pub fn decode(blob: &[u8]) -> Result<LayerIndex, FormatError> {
    decode_raw(&decompress(blob)?)
}

/// The raw protobuf bytes of an index blob, never more than [`MAX_INDEX_SIZE`].
pub fn decompress(blob: &[u8]) -> Result<Vec<u8>, FormatError> {
    let decoder = zstd::stream::read::Decoder::new(blob).map_err(FormatError::Decompress)?;
    let mut raw = Vec::new();
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
    let index = LayerIndex::decode(raw)?;
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

/// Lossy text form of a raw path, for error messages.
fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Whether `path` is in canonical safe form (see the module docs).
pub fn is_safe_path(path: &[u8]) -> bool {
    !path.is_empty()
        && !path.contains(&0)
        && path
            .split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Checks every invariant readers rely on; see [`FormatError`] for the list.
pub fn validate(index: &LayerIndex) -> Result<(), FormatError> {
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&index.version) {
        return Err(FormatError::UnknownVersion(index.version));
    }
    let source = index.source.as_ref().ok_or(FormatError::MissingSource)?;
    for (what, value) in [("layer", &source.digest), ("diff_id", &source.diff_id)] {
        Digest::parse(value).map_err(|_| FormatError::BadDigest {
            what,
            value: value.clone(),
        })?;
    }
    for pack in &index.packs {
        Digest::parse(&pack.digest).map_err(|_| FormatError::BadDigest {
            what: "pack",
            value: pack.digest.clone(),
        })?;
    }
    let chunker = index.chunker.as_ref().ok_or(FormatError::MissingChunker)?;
    let params = ChunkerParams::try_from(chunker)?;
    validate_entries(&index.entries, source.content_size)?;
    if let Some(split) = &index.tar_split {
        tarsplit::validate(split, source.content_size)?;
    }
    validate_chunks(index, &params, source.content_size)
}

fn validate_entries(entries: &[Entry], content_size: u64) -> Result<(), FormatError> {
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(entries.len());
    let mut non_dirs: HashSet<&[u8]> = HashSet::new();
    let mut stream_pos = 0u64;
    for (i, e) in entries.iter().enumerate() {
        let path = e.path.as_slice();
        if !is_safe_path(path) {
            return Err(FormatError::UnsafePath {
                entry: i,
                path: show(path),
            });
        }
        if let Some(slash) = path.iter().rposition(|b| *b == b'/')
            && non_dirs.contains(&path[..slash])
        {
            return Err(FormatError::ParentNotDirectory {
                entry: i,
                path: show(path),
            });
        }
        if !seen.insert(path) {
            return Err(FormatError::DuplicatePath {
                entry: i,
                path: show(path),
            });
        }
        let kind = EntryType::try_from(e.r#type).map_err(|_| FormatError::UnknownEntryType {
            entry: i,
            path: show(path),
            value: e.r#type,
        })?;
        if e.mode & !0o7777 != 0 {
            return Err(FormatError::BadMode {
                entry: i,
                path: show(path),
                mode: e.mode,
            });
        }
        if e.mtime_nsec >= 1_000_000_000 {
            return Err(FormatError::BadMtime {
                entry: i,
                path: show(path),
                nsec: e.mtime_nsec,
            });
        }
        for x in &e.xattrs {
            if x.name.is_empty() || x.name.contains('\0') {
                return Err(FormatError::BadXattr {
                    entry: i,
                    path: show(path),
                    name: x.name.clone(),
                });
            }
        }
        match kind {
            EntryType::File => {
                let end = e.offset.checked_add(e.size);
                if e.offset < stream_pos || end.is_none_or(|end| end > content_size) {
                    return Err(FormatError::BadContentRange {
                        entry: i,
                        path: show(path),
                        offset: e.offset,
                        size: e.size,
                        content_size,
                    });
                }
                stream_pos = end.unwrap_or(content_size);
                if !matches!(e.content_digest.len(), 0 | 32) {
                    return Err(FormatError::BadDigest {
                        what: "file content",
                        value: format!("{} bytes at {}", e.content_digest.len(), show(path)),
                    });
                }
            }
            EntryType::Hardlink => {
                let target = e.link_target.as_slice();
                if !non_dirs.contains(target) {
                    return Err(FormatError::BadHardlink {
                        entry: i,
                        path: show(path),
                        target: show(target),
                    });
                }
            }
            EntryType::Symlink => {
                if e.link_target.is_empty() || e.link_target.contains(&0) {
                    return Err(FormatError::BadSymlink {
                        entry: i,
                        path: show(path),
                    });
                }
            }
            EntryType::Dir | EntryType::Char | EntryType::Block | EntryType::Fifo => {}
        }
        if kind != EntryType::Dir {
            non_dirs.insert(path);
        }
    }
    Ok(())
}

fn validate_chunks(
    index: &LayerIndex,
    params: &ChunkerParams,
    content_size: u64,
) -> Result<(), FormatError> {
    let base_ends = validate_delta_bases(index)?;
    let mut sum = 0u64;
    for (i, c) in index.chunks.iter().enumerate() {
        validate_chunk(i, c, index, params)?;
        if let Some(d) = &c.delta {
            validate_delta(i, c, d, index, &base_ends)?;
        }
        sum += u64::from(c.size);
    }
    if sum != content_size {
        return Err(FormatError::ChunkSumMismatch { sum, content_size });
    }
    Ok(())
}

fn validate_chunk(
    i: usize,
    c: &Chunk,
    index: &LayerIndex,
    params: &ChunkerParams,
) -> Result<(), FormatError> {
    if c.digest.len() != 32 {
        return Err(FormatError::BadDigestLength {
            chunk: i,
            len: c.digest.len(),
        });
    }
    if c.size == 0 || c.size > params.max {
        return Err(FormatError::BadChunkSize {
            chunk: i,
            size: c.size,
            max: params.max,
        });
    }
    let pack = index
        .packs
        .get(c.pack as usize)
        .ok_or(FormatError::BadPackRef {
            chunk: i,
            pack: c.pack,
            packs: index.packs.len(),
        })?;
    let compression =
        Compression::try_from(c.compression).map_err(|_| FormatError::UnknownCompression {
            chunk: i,
            value: c.compression,
        })?;
    let plausible = match compression {
        Compression::None => c.stored_size == c.size,
        Compression::Zstd => {
            c.stored_size > 0 && u64::from(c.stored_size) <= max_stored_size(c.size, compression)
        }
    };
    if !plausible {
        return Err(FormatError::BadStoredSize {
            chunk: i,
            stored: c.stored_size,
            size: c.size,
            compression,
        });
    }
    if c.pack_offset
        .checked_add(u64::from(c.stored_size))
        .is_none_or(|end| end > pack.size)
    {
        return Err(FormatError::ChunkOutsidePack {
            chunk: i,
            pack: c.pack,
            offset: c.pack_offset,
            stored: c.stored_size,
            pack_size: pack.size,
        });
    }
    Ok(())
}

/// Checks the delta base table; returns the running end offset of each base (prefix sums), so a
/// delta's total base size is one subtraction.
fn validate_delta_bases(index: &LayerIndex) -> Result<Vec<u64>, FormatError> {
    let mut ends = Vec::with_capacity(index.delta_bases.len() + 1);
    ends.push(0u64);
    for (i, b) in index.delta_bases.iter().enumerate() {
        let bad = |reason: String| FormatError::BadDeltaBase { base: i, reason };
        if b.digest.len() != 32 {
            return Err(bad(format!(
                "digest is {} bytes, expected 32",
                b.digest.len()
            )));
        }
        if b.size == 0 || u64::from(b.size) > MAX_DELTA_BASE {
            return Err(bad(format!(
                "size {} is 0 or above {MAX_DELTA_BASE}",
                b.size
            )));
        }
        let last = ends.last().copied().unwrap_or(0);
        ends.push(last + u64::from(b.size));
    }
    Ok(ends)
}

fn validate_delta(
    i: usize,
    c: &Chunk,
    d: &Delta,
    index: &LayerIndex,
    base_ends: &[u64],
) -> Result<(), FormatError> {
    let bad = |reason: String| FormatError::BadDelta { chunk: i, reason };
    let pack = index.packs.get(d.pack as usize).ok_or_else(|| {
        bad(format!(
            "pack {} out of range ({} packs)",
            d.pack,
            index.packs.len()
        ))
    })?;
    if d.stored_size == 0 || u64::from(d.stored_size) > max_stored_size(c.size, Compression::Zstd) {
        return Err(bad(format!(
            "stored size {} is implausible for {} bytes",
            d.stored_size, c.size
        )));
    }
    if d.pack_offset
        .checked_add(u64::from(d.stored_size))
        .is_none_or(|end| end > pack.size)
    {
        return Err(bad(format!(
            "range {}+{} lies outside pack {} ({} bytes)",
            d.pack_offset, d.stored_size, d.pack, pack.size
        )));
    }
    let end = d.base_first as usize + d.base_count as usize;
    if d.base_count == 0 || end >= base_ends.len() {
        return Err(bad(format!(
            "bases {}+{} out of range ({} bases)",
            d.base_first,
            d.base_count,
            base_ends.len() - 1
        )));
    }
    let total = base_ends[end] - base_ends[d.base_first as usize];
    if total > MAX_DELTA_BASE {
        return Err(bad(format!(
            "bases total {total} bytes, above {MAX_DELTA_BASE}"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
