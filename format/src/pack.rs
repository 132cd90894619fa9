//! Packs: blobs of concatenated, independently decompressible chunk frames (a zstd frame per
//! chunk, or the raw bytes when zstd does not save any). Nodes read single chunks out of a pack
//! with Range requests, so every frame stands alone and carries its content size.

use crate::digest::Digest;
use crate::pb::Compression;

/// Default target pack size.
pub const DEFAULT_PACK_SIZE: u64 = 16 << 20;
/// Smallest configurable target pack size.
pub const MIN_PACK_SIZE: u64 = 8 << 20;
/// Largest configurable target pack size.
pub const MAX_PACK_SIZE: u64 = 32 << 20;
/// Default zstd level for chunks: 6 stores the Debian layer in 4 % fewer bytes than 3 (what
/// every cold node downloads), decompresses as fast, and converts at about casync's speed;
/// 9–19 gain under 1 % more for 2–20× the convert time (`converter/examples/level_sweep.rs`,
/// docs/benchmarks.md).
pub const DEFAULT_CHUNK_LEVEL: i32 = 6;

/// Errors reading or writing chunk frames.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("zstd compression failed: {0}")]
    Compress(#[source] std::io::Error),
    #[error("chunk {digest}: stored zstd frame is corrupt: {reason}")]
    Corrupt { digest: Digest, reason: String },
    #[error("chunk {digest}: frame declares {declared:?} bytes, the index says {expected}")]
    SizeMismatch {
        digest: Digest,
        declared: Option<u64>,
        expected: u64,
    },
    #[error("chunk {digest}: content does not match its digest (got {actual})")]
    DigestMismatch { digest: Digest, actual: Digest },
    #[error("target pack size {0} outside {MIN_PACK_SIZE}..={MAX_PACK_SIZE}")]
    BadTargetSize(u64),
}

/// A chunk as stored in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    pub data: Vec<u8>,
    pub compression: Compression,
}

/// Compresses one chunk into a standalone zstd frame (content size in the header, no checksum:
/// chunks are verified by sha256), or keeps it raw when that is not larger.
pub fn compress_chunk(data: &[u8], level: i32) -> Result<StoredChunk, PackError> {
    use zstd::zstd_safe::CParameter;
    // One compression context per thread and level: creating one per chunk (allocating and
    // clearing its tables) cost as much as compressing a small chunk.
    thread_local! {
        static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let frame = CCTX
        .with(|cell| -> std::io::Result<Vec<u8>> {
            let mut slot = cell.borrow_mut();
            let c = match slot.as_mut() {
                Some((l, c)) if *l == level => c,
                _ => {
                    let mut c = zstd::bulk::Compressor::new(level)?;
                    c.set_parameter(CParameter::ContentSizeFlag(true))?;
                    c.set_parameter(CParameter::ChecksumFlag(false))?;
                    &mut slot.insert((level, c)).1
                }
            };
            c.compress(data)
        })
        .map_err(PackError::Compress)?;
    Ok(if frame.len() < data.len() {
        StoredChunk {
            data: frame,
            compression: Compression::Zstd,
        }
    } else {
        StoredChunk {
            data: data.to_vec(),
            compression: Compression::None,
        }
    })
}

/// Decodes a stored chunk of `expected_size` bytes and checks it against `digest`. Never
/// allocates or inflates more than `expected_size` bytes, whatever the frame claims.
pub fn decompress_chunk(
    stored: &[u8],
    compression: Compression,
    expected_size: u64,
    digest: &Digest,
) -> Result<Vec<u8>, PackError> {
    let data = decode_chunk(stored, compression, expected_size, digest)?;
    check_digest(&data, digest)?;
    Ok(data)
}

/// Checks that `data` hashes to `digest`.
pub(crate) fn check_digest(data: &[u8], digest: &Digest) -> Result<(), PackError> {
    let actual = Digest::of(data);
    if actual != *digest {
        return Err(PackError::DigestMismatch {
            digest: *digest,
            actual,
        });
    }
    Ok(())
}

/// [`decompress_chunk`] without the sha256: only for bytes that are proven another way, such as
/// a chunk the store verified when it took it in, read back for a layer that is then checked
/// against its diffID. The size is still checked (`digest` names the chunk in errors).
pub fn decode_chunk(
    stored: &[u8],
    compression: Compression,
    expected_size: u64,
    digest: &Digest,
) -> Result<Vec<u8>, PackError> {
    match compression {
        Compression::None => {
            if stored.len() as u64 != expected_size {
                return Err(PackError::SizeMismatch {
                    digest: *digest,
                    declared: Some(stored.len() as u64),
                    expected: expected_size,
                });
            }
            Ok(stored.to_vec())
        }
        Compression::Zstd => decompress_frame(stored, expected_size, digest),
    }
}

/// Checks that `frame` is exactly one zstd frame declaring `expected_size` bytes of content;
/// returns that size as a buffer capacity. Nothing is decompressed.
pub(crate) fn check_frame(
    frame: &[u8],
    expected_size: u64,
    digest: &Digest,
) -> Result<usize, PackError> {
    use zstd::zstd_safe;
    let corrupt = |reason: &str| PackError::Corrupt {
        digest: *digest,
        reason: reason.to_owned(),
    };
    let declared =
        zstd_safe::get_frame_content_size(frame).map_err(|_| corrupt("bad frame header"))?;
    if declared != Some(expected_size) {
        return Err(PackError::SizeMismatch {
            digest: *digest,
            declared,
            expected: expected_size,
        });
    }
    // Exactly one frame: trailing bytes would mean the index and the pack disagree.
    match zstd_safe::find_frame_compressed_size(frame) {
        Ok(n) if n == frame.len() => {}
        _ => return Err(corrupt("not exactly one zstd frame")),
    }
    usize::try_from(expected_size).map_err(|_| corrupt("size too large"))
}

fn decompress_frame(
    stored: &[u8],
    expected_size: u64,
    digest: &Digest,
) -> Result<Vec<u8>, PackError> {
    let corrupt = |reason: String| PackError::Corrupt {
        digest: *digest,
        reason,
    };
    let capacity = check_frame(stored, expected_size, digest)?;
    // One decompression context per thread: creating one per chunk was a visible cost.
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let data = DCTX
        .with(|cell| {
            let mut slot = cell.borrow_mut();
            let dctx = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new()?),
            };
            dctx.decompress(stored, capacity)
        })
        .map_err(|e| corrupt(e.to_string()))?;
    if data.len() as u64 != expected_size {
        return Err(PackError::SizeMismatch {
            digest: *digest,
            declared: Some(data.len() as u64),
            expected: expected_size,
        });
    }
    Ok(data)
}

/// Where a chunk landed: the pack's number (counted from 0 per builder), offset, stored size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: u32,
    pub offset: u64,
    pub stored_size: u32,
}

/// A completed pack blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedPack {
    /// Number of the pack within its builder (matches [`ChunkLocation::pack`]).
    pub number: u32,
    pub digest: Digest,
    pub data: Vec<u8>,
}

/// Appends stored chunks to packs, rolling over before a chunk would take the pack past its
/// target size (a pack holds at least one chunk, so a single oversized chunk still fits).
#[derive(Debug)]
pub struct PackBuilder {
    target: u64,
    current: Vec<u8>,
    number: u32,
}

impl PackBuilder {
    /// A builder for packs of about `target` bytes ([`MIN_PACK_SIZE`]..=[`MAX_PACK_SIZE`]).
    pub fn new(target: u64) -> Result<Self, PackError> {
        if !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&target) {
            return Err(PackError::BadTargetSize(target));
        }
        Ok(Self::with_target_unchecked(target))
    }

    /// A builder with any target size (tests use tiny packs).
    pub fn with_target_unchecked(target: u64) -> Self {
        Self {
            target: target.max(1),
            current: Vec::new(),
            number: 0,
        }
    }

    /// Appends `stored`; returns its location and the pack finished to make room, if any.
    pub fn push(&mut self, stored: &[u8]) -> (ChunkLocation, Option<FinishedPack>) {
        let mut finished = None;
        if !self.current.is_empty() && (self.current.len() + stored.len()) as u64 > self.target {
            finished = self.finish_current();
        }
        if self.current.is_empty() {
            // One allocation per pack: no doubling past the target while it fills.
            self.current
                .reserve(usize::try_from(self.target).unwrap_or(0).max(stored.len()));
        }
        let loc = ChunkLocation {
            pack: self.number,
            offset: self.current.len() as u64,
            // Chunks are at most 16 MiB (the chunker's hard maximum), so this cannot truncate.
            stored_size: u32::try_from(stored.len()).unwrap_or(u32::MAX),
        };
        self.current.extend_from_slice(stored);
        (loc, finished)
    }

    /// Bytes in the pack being filled.
    pub fn pending_len(&self) -> u64 {
        self.current.len() as u64
    }

    /// Finishes the last, partly filled pack (`None` if empty).
    pub fn finish(mut self) -> Option<FinishedPack> {
        self.finish_current()
    }

    fn finish_current(&mut self) -> Option<FinishedPack> {
        if self.current.is_empty() {
            return None;
        }
        let data = std::mem::take(&mut self.current);
        let pack = FinishedPack {
            number: self.number,
            digest: Digest::of(&data),
            data,
        };
        self.number += 1;
        Some(pack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_chunk_round_trips_as_zstd() {
        let data = vec![7u8; 100_000];
        let d = Digest::of(&data);
        let s = compress_chunk(&data, 3).unwrap();
        assert_eq!(s.compression, Compression::Zstd);
        assert!(s.data.len() < 1000);
        let back = decompress_chunk(&s.data, s.compression, data.len() as u64, &d).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn incompressible_chunk_is_raw() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let s = compress_chunk(&data, 3).unwrap();
        assert_eq!(s.compression, Compression::None);
        assert_eq!(s.data, data);
        assert_eq!(
            decompress_chunk(&s.data, s.compression, 4096, &Digest::of(&data)).unwrap(),
            data
        );
    }

    #[test]
    fn rejects_size_lies_and_bad_digests() {
        let data = vec![1u8; 10_000];
        let d = Digest::of(&data);
        let s = compress_chunk(&data, 3).unwrap();
        // The index claims fewer bytes than the frame holds: refuse before inflating.
        assert!(matches!(
            decompress_chunk(&s.data, Compression::Zstd, 9_999, &d),
            Err(PackError::SizeMismatch {
                declared: Some(10_000),
                ..
            })
        ));
        assert!(matches!(
            decompress_chunk(&s.data, Compression::Zstd, 10_000, &Digest::of(b"x")),
            Err(PackError::DigestMismatch { .. })
        ));
        let mut trailing = s.data.clone();
        trailing.push(0);
        assert!(matches!(
            decompress_chunk(&trailing, Compression::Zstd, 10_000, &d),
            Err(PackError::Corrupt { .. })
        ));
        assert!(matches!(
            decompress_chunk(b"garbage!", Compression::Zstd, 10_000, &d),
            Err(PackError::Corrupt { .. } | PackError::SizeMismatch { .. })
        ));
        assert!(matches!(
            decompress_chunk(&data[..10], Compression::None, 10_000, &d),
            Err(PackError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn frame_without_content_size_is_rejected() {
        use std::io::Write;
        let data = vec![5u8; 5000];
        // A streaming encoder does not know the size up front and omits it from the header.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(&data).unwrap();
        let frame = enc.finish().unwrap();
        assert!(matches!(
            decompress_chunk(&frame, Compression::Zstd, 5000, &Digest::of(&data)),
            Err(PackError::SizeMismatch { declared: None, .. })
        ));
    }

    #[test]
    fn builder_rolls_over_at_target() {
        let mut b = PackBuilder::with_target_unchecked(100);
        let (l0, f) = b.push(&[1; 60]);
        assert!(f.is_none());
        assert_eq!((l0.pack, l0.offset, l0.stored_size), (0, 0, 60));
        let (l1, f) = b.push(&[2; 40]);
        assert!(f.is_none());
        assert_eq!((l1.pack, l1.offset), (0, 60));
        let (l2, f) = b.push(&[3; 1]);
        let f = f.unwrap();
        assert_eq!(f.number, 0);
        assert_eq!(f.data.len(), 100);
        assert_eq!(f.digest, Digest::of(&f.data));
        assert_eq!((l2.pack, l2.offset), (1, 0));
        // Oversized chunk: goes alone into its own pack.
        let (l3, f) = b.push(&[4; 500]);
        assert_eq!(f.unwrap().data, vec![3; 1]);
        assert_eq!((l3.pack, l3.offset), (2, 0));
        let last = b.finish().unwrap();
        assert_eq!((last.number, last.data.len()), (2, 500));
        assert!(PackBuilder::with_target_unchecked(10).finish().is_none());
        assert!(PackBuilder::new(1 << 20).is_err());
        assert!(PackBuilder::new(DEFAULT_PACK_SIZE).is_ok());
    }
}
