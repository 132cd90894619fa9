//! Delta frames: a chunk compressed against earlier chunks a node probably holds, and a layer
//! index compressed against an earlier layer's index.
//!
//! A delta is one zstd frame made with a *reference prefix* (zstd's `refPrefix`): the
//! concatenation of the base chunks (`LayerIndex.delta_bases[first..first + count]`, usually
//! the previous version's chunks at the same place in the content stream). When v2 changes a few
//! bytes in a chunk, or shifts code in a rebuilt binary, the frame holds little more than the
//! changes. A node decodes it only with bases it has verified from its own store, bounds the
//! output by the chunk's declared size, and checks the result's sha256 like any chunk.
//!
//! Index deltas work the same way on the raw protobuf of a layer index, against the raw
//! protobuf of the reference layer's index (which a node keeps on disk for every layer it
//! assembled): most entries and chunk records of v2 are v1's, digests included, so the delta
//! is a fraction of the index blob.

use crate::digest::Digest;
use crate::pack::{PackError, check_frame};

/// Largest total size of a delta's base chunks: bounds what a node holds in memory per decode
/// (base + one chunk) and what a converter reads per delta.
pub const MAX_DELTA_BASE: u64 = 1 << 20;

/// Largest base + index an index delta is made for: bounds the zstd window, and what a node
/// holds to decode one.
pub const MAX_INDEX_DELTA_INPUT: usize = 64 << 20;
/// zstd level of index deltas: one per layer, small, read by every updating node.
pub const INDEX_DELTA_LEVEL: i32 = 19;

/// The first bytes of a zstd dictionary (`ZSTD_MAGIC_DICTIONARY`, little-endian).
const ZSTD_DICT_MAGIC: [u8; 4] = 0xEC30_A437_u32.to_le_bytes();

/// zstd window log for a frame whose prefix and content total `len` bytes: the window must
/// reach back over the whole prefix.
fn window_log(len: usize) -> u32 {
    (usize::BITS - len.leading_zeros()).clamp(10, 27)
}

/// Compresses `data` against `base` at `level`. The frame carries its content size and no
/// checksum (chunks are verified by sha256). Deterministic for the same inputs.
pub fn compress_delta(base: &[u8], data: &[u8], level: i32) -> Result<Vec<u8>, PackError> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let err = |code: usize| {
        PackError::Compress(std::io::Error::other(
            zstd::zstd_safe::get_error_name(code).to_owned(),
        ))
    };
    let mut c = CCtx::try_create().ok_or_else(|| {
        PackError::Compress(std::io::Error::other("cannot allocate a zstd context"))
    })?;
    for p in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(window_log(base.len() + data.len())),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
    ] {
        c.set_parameter(p).map_err(err)?;
    }
    c.ref_prefix(base).map_err(err)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    c.compress2(&mut out, data).map_err(err)?;
    Ok(out)
}

/// Decodes delta `frame` against `base` into `expected_size` bytes and checks them against
/// `digest`. Never inflates more than `expected_size` bytes, whatever the frame claims.
pub fn decompress_delta(
    frame: &[u8],
    base: &[u8],
    expected_size: u64,
    digest: &Digest,
) -> Result<Vec<u8>, PackError> {
    use zstd::zstd_safe::{self, DCtx};
    let corrupt = |reason: String| PackError::Corrupt {
        digest: *digest,
        reason: format!("delta frame: {reason}"),
    };
    let capacity = check_frame(frame, expected_size, digest)?;
    let mut data = Vec::with_capacity(capacity);
    let decoded = if base.get(..4) == Some(&ZSTD_DICT_MAGIC[..]) {
        // zstd would take such a base for a trained dictionary: a fresh context, told that it
        // is raw content (a prefix), as the converter encoded it.
        let mut d =
            DCtx::try_create().ok_or_else(|| corrupt("cannot allocate a zstd context".into()))?;
        d.ref_prefix(base)
            .and_then(|_| d.decompress(&mut data, frame))
            .map_err(zstd_safe::get_error_name)
    } else {
        // Any other base is raw content to zstd either way; one context per thread, since
        // creating one per delta was a tenth of a node's delta decoding.
        thread_local! {
            static DCTX: std::cell::RefCell<Option<DCtx<'static>>> =
                const { std::cell::RefCell::new(None) };
        }
        DCTX.with(|cell| {
            let mut slot = cell.borrow_mut();
            let d = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(DCtx::try_create().ok_or("cannot allocate a zstd context")?),
            };
            d.decompress_using_dict(&mut data, frame, base)
                .map_err(zstd_safe::get_error_name)
        })
    };
    decoded.map_err(|reason| corrupt(reason.to_owned()))?;
    if data.len() as u64 != expected_size {
        return Err(PackError::SizeMismatch {
            digest: *digest,
            declared: Some(data.len() as u64),
            expected: expected_size,
        });
    }
    crate::pack::check_digest(&data, digest)?;
    Ok(data)
}

/// The delta of raw index `raw` against raw index `base`, or `None` when the two are too large
/// for an index delta ([`MAX_INDEX_DELTA_INPUT`]).
pub fn compress_index_delta(base: &[u8], raw: &[u8]) -> Option<Result<Vec<u8>, PackError>> {
    (base.len() + raw.len() <= MAX_INDEX_DELTA_INPUT)
        .then(|| compress_delta(base, raw, INDEX_DELTA_LEVEL))
}

/// Rebuilds a raw index from its delta `frame` against raw index `base` and checks it against
/// `digest` (sha256 of the raw index). Refuses frames declaring more than `max` bytes.
pub fn decompress_index_delta(
    frame: &[u8],
    base: &[u8],
    max: u64,
    digest: &Digest,
) -> Result<Vec<u8>, PackError> {
    let declared = zstd::zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten();
    match declared {
        Some(size) if size <= max => decompress_delta(frame, base, size, digest),
        _ => Err(PackError::SizeMismatch {
            digest: *digest,
            declared,
            expected: max,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_small_edit_costs_little_and_round_trips() {
        let base = sample(1, 64 << 10);
        let mut data = base[1000..40_000].to_vec();
        data[500] ^= 0xff;
        data.splice(2000..2000, *b"inserted");
        let frame = compress_delta(&base, &data, 6).unwrap();
        assert!(
            frame.len() < 200,
            "delta of a small edit is {} bytes",
            frame.len()
        );
        let digest = Digest::of(&data);
        let back = decompress_delta(&frame, &base, data.len() as u64, &digest).unwrap();
        assert_eq!(back, data);
        // Deterministic.
        assert_eq!(frame, compress_delta(&base, &data, 6).unwrap());
    }

    #[test]
    fn a_base_that_looks_like_a_zstd_dictionary_is_still_a_prefix() {
        let mut base = ZSTD_DICT_MAGIC.to_vec();
        base.extend(sample(5, 32 << 10));
        let mut data = base[..30_000].to_vec();
        data[100] ^= 0xff;
        let digest = Digest::of(&data);
        let frame = compress_delta(&base, &data, 6).unwrap();
        assert!(frame.len() < 200);
        let back = decompress_delta(&frame, &base, data.len() as u64, &digest).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn the_thread_context_decodes_again_after_a_failure() {
        let base = sample(6, 32 << 10);
        let data = base[..20_000].to_vec();
        let digest = Digest::of(&data);
        let frame = compress_delta(&base, &data, 6).unwrap();
        let mut broken = frame.clone();
        let mid = broken.len() / 2;
        broken[mid] ^= 0x55;
        assert!(decompress_delta(&broken, &base, 20_000, &digest).is_err());
        assert!(decompress_delta(&frame[..mid], &base, 20_000, &digest).is_err());
        assert_eq!(
            decompress_delta(&frame, &base, 20_000, &digest).unwrap(),
            data
        );
    }

    #[test]
    fn index_deltas_round_trip_and_are_bounded() {
        let base = sample(4, 100_000);
        let mut raw = base.clone();
        raw[50_000] ^= 1;
        let digest = Digest::of(&raw);
        let frame = compress_index_delta(&base, &raw).unwrap().unwrap();
        assert!(frame.len() < 100);
        assert_eq!(
            decompress_index_delta(&frame, &base, 1 << 20, &digest).unwrap(),
            raw
        );
        assert!(decompress_index_delta(&frame, &base, 99_999, &digest).is_err());
        let huge = vec![0u8; MAX_INDEX_DELTA_INPUT];
        assert!(compress_index_delta(&huge, b"x").is_none());
    }

    #[test]
    fn wrong_base_size_or_digest_is_refused() {
        let base = sample(2, 32 << 10);
        let data = base[..20_000].to_vec();
        let digest = Digest::of(&data);
        let frame = compress_delta(&base, &data, 6).unwrap();
        let other = sample(3, 32 << 10);
        assert!(decompress_delta(&frame, &other, 20_000, &digest).is_err());
        assert!(matches!(
            decompress_delta(&frame, &base, 19_999, &digest),
            Err(PackError::SizeMismatch { .. })
        ));
        let wrong = Digest::of(b"x");
        assert!(matches!(
            decompress_delta(&frame, &base, 20_000, &wrong),
            Err(PackError::DigestMismatch { .. })
        ));
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(decompress_delta(&trailing, &base, 20_000, &digest).is_err());
        assert!(decompress_delta(&frame[..frame.len() - 1], &base, 20_000, &digest).is_err());
    }
}
