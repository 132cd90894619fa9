//! Validation of a decoded index: every invariant readers rely on (versions, safe paths, entry
//! order and content ranges, chunk and pack ranges, delta bases), checked before it is trusted.

use std::collections::HashSet;

use super::{FORMAT_VERSION, FormatError, MIN_FORMAT_VERSION, max_stored_size};
use crate::chunker::ChunkerParams;
use crate::delta::MAX_DELTA_BASE;
use crate::digest::Digest;
use crate::pb::{Chunk, Compression, Delta, Entry, EntryType, LayerIndex};
use crate::tarsplit;

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
