//! Hostile packs: short reads, frames that inflate past their declared size, and bytes that do
//! not match their digest. A fetch must fail and leave nothing unverified in the store.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chunksnap_core::fetch::{FetchError, FetchOptions, Inflight, RangeSource, fetch_missing};
use chunksnap_core::store::{ChunkStore, StoreError};
use chunksnap_format::PackError;
use chunksnap_format::digest::Digest;
use chunksnap_format::pack::{compress_chunk, decompress_chunk};
use chunksnap_format::pb::{Compression, LayerIndex};

use crate::Layer;
use crate::harness::BuiltLayer;

/// Serves packs from memory like a registry would: a range past the end is cut short.
struct Packs(HashMap<String, Bytes>);

impl Packs {
    fn of(built: &BuiltLayer) -> Self {
        Self(
            built
                .packs
                .iter()
                .map(|(d, p)| (d.clone(), Bytes::from(p.clone())))
                .collect(),
        )
    }
}

impl RangeSource for Packs {
    async fn read_range(&self, pack: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        let blob = self
            .0
            .get(pack)
            .ok_or_else(|| FetchError::range(pack, offset, len, "no such pack"))?;
        let start = (offset as usize).min(blob.len());
        let end = offset.saturating_add(len).min(blob.len() as u64) as usize;
        Ok(blob.slice(start..end))
    }
}

fn new_store() -> (tempfile::TempDir, Arc<ChunkStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ChunkStore::open(dir.path(), None).unwrap());
    (dir, store)
}

async fn fetch(
    index: &LayerIndex,
    store: &Arc<ChunkStore>,
    packs: &Packs,
) -> Result<(), FetchError> {
    fetch_missing(
        index,
        store,
        packs,
        &FetchOptions::default(),
        &Inflight::default(),
    )
    .await
    .map(drop)
}

fn layer() -> BuiltLayer {
    let mut l = Layer::default();
    let text: Vec<u8> = (0..20_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    l.file("a", &text).file("b", &crate::scale::noise(7, 5000));
    let built = l.build();
    assert!(built.index.chunks.len() > 10);
    built
}

fn stored_count(store: &ChunkStore) -> u64 {
    store.stats().chunks
}

#[tokio::test]
async fn chunk_location_past_the_pack_end_fails_the_fetch() {
    let built = layer();
    let packs = Packs::of(&built);
    let (_d, store) = new_store();
    let mut index = built.index.clone();
    let last = index.chunks.len() - 1;
    let pack_size = index.packs[index.chunks[last].pack as usize].size;
    index.chunks[last].pack_offset = pack_size - 2;
    let r = fetch(&index, &store, &packs).await;
    assert!(matches!(r, Err(FetchError::ShortRead { .. })), "{r:?}");
    // Far past the end (and past u64::MAX when added to the stored size): an error, no panic.
    index.chunks[last].pack_offset = u64::MAX - 1;
    let (_d2, store2) = new_store();
    let r = fetch(&index, &store2, &packs).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(stored_count(&store2), 0);
    // An out-of-range pack number and a short digest are index errors.
    let mut index = built.index.clone();
    index.chunks[0].pack = 1000;
    let r = fetch(&index, &store, &packs).await;
    assert!(matches!(r, Err(FetchError::BadIndex(_))), "{r:?}");
    let mut index = built.index.clone();
    index.chunks[0].digest.truncate(31);
    let r = fetch(&index, &store, &packs).await;
    assert!(matches!(r, Err(FetchError::BadIndex(_))), "{r:?}");
}

/// A zstd frame of `real` zero bytes whose header claims `claimed` bytes.
fn lying_frame(real: usize, claimed: u32) -> Vec<u8> {
    let mut frame = compress_chunk(&vec![0u8; real], 3).unwrap().data;
    let fhd = frame[4];
    let single_segment = fhd & 0x20 != 0;
    let dict_bytes = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    assert_eq!(fhd >> 6, 2, "expected a 4-byte content size field");
    let at = 5 + usize::from(!single_segment) + dict_bytes;
    frame[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
    frame
}

#[test]
fn frames_that_inflate_past_their_size_are_refused() {
    let small = vec![0u8; 1000];
    let digest = Digest::of(&small);
    // Claims 1000 bytes, holds 1 MiB.
    let frame = lying_frame(1 << 20, 1000);
    let r = decompress_chunk(&frame, Compression::Zstd, 1000, &digest);
    assert!(
        matches!(
            r,
            Err(PackError::Corrupt { .. } | PackError::SizeMismatch { .. })
        ),
        "{r:?}"
    );
    // Honest header, but bigger than the index says.
    let big = compress_chunk(&vec![0u8; 1 << 20], 3).unwrap().data;
    let r = decompress_chunk(&big, Compression::Zstd, 1000, &digest);
    assert!(matches!(r, Err(PackError::SizeMismatch { .. })), "{r:?}");
    // No content size in the header at all.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    std::io::Write::write_all(&mut enc, &small).unwrap();
    let unsized_frame = enc.finish().unwrap();
    let r = decompress_chunk(&unsized_frame, Compression::Zstd, 1000, &digest);
    assert!(r.is_err(), "{r:?}");
    // Two frames where one is expected.
    let one = compress_chunk(&small, 3).unwrap().data;
    let two = [one.clone(), one].concat();
    let r = decompress_chunk(&two, Compression::Zstd, 1000, &digest);
    assert!(matches!(r, Err(PackError::Corrupt { .. })), "{r:?}");
    // Raw chunk of the wrong length.
    let r = decompress_chunk(&small[..999], Compression::None, 1000, &digest);
    assert!(matches!(r, Err(PackError::SizeMismatch { .. })), "{r:?}");
}

#[tokio::test]
async fn an_inflating_chunk_in_a_pack_never_enters_the_store() {
    let built = layer();
    let mut packs = Packs::of(&built);
    let mut index = built.index.clone();
    // Point chunk 0 at a new pack holding a frame that lies about its size.
    let frame = lying_frame(4 << 20, index.chunks[0].size);
    let pack_digest = Digest::of(&frame).to_string();
    index.packs.push(chunksnap_format::pb::Pack {
        digest: pack_digest.clone(),
        size: frame.len() as u64,
    });
    index.chunks[0].pack = (index.packs.len() - 1) as u32;
    index.chunks[0].pack_offset = 0;
    index.chunks[0].stored_size = frame.len() as u32;
    index.chunks[0].compression = Compression::Zstd as i32;
    packs.0.insert(pack_digest, Bytes::from(frame));
    let (_d, store) = new_store();
    let r = fetch(&index, &store, &packs).await;
    assert!(matches!(r, Err(FetchError::Store(_))), "{r:?}");
    let bad = Digest::from_slice(&index.chunks[0].digest).unwrap();
    assert!(!store.contains(&bad));
    assert!(!store.chunk_path(&bad).exists());
}

#[tokio::test]
async fn chunks_not_matching_their_digest_never_enter_the_store() {
    let built = layer();
    let packs = Packs::of(&built);
    let mut index = built.index.clone();
    // Chunk 1 claims chunk 0's location: valid frame, wrong content.
    let c0 = index.chunks[0].clone();
    let c1 = &mut index.chunks[1];
    (c1.pack, c1.pack_offset, c1.stored_size, c1.compression) =
        (c0.pack, c0.pack_offset, c0.stored_size, c0.compression);
    c1.size = c0.size;
    let (_d, store) = new_store();
    let r = fetch(&index, &store, &packs).await;
    assert!(
        matches!(
            r,
            Err(FetchError::Store(StoreError::Corrupt(
                PackError::DigestMismatch { .. } | PackError::SizeMismatch { .. }
            )))
        ),
        "{r:?}"
    );
    let bad = Digest::from_slice(&index.chunks[1].digest).unwrap();
    assert!(!store.contains(&bad));
    assert!(!store.chunk_path(&bad).exists());
    // Whatever did get stored is genuine.
    for c in &built.index.chunks {
        let d = Digest::from_slice(&c.digest).unwrap();
        if store.contains(&d) {
            store.get(&d, c.size).unwrap();
        }
    }

    // A registry that flips bits: nothing is stored at all (one coalesced request).
    struct Flipping(Packs);
    impl RangeSource for Flipping {
        async fn read_range(&self, pack: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
            let mut v = self.0.read_range(pack, offset, len).await?.to_vec();
            for b in v.iter_mut().step_by(97) {
                *b ^= 0x10;
            }
            Ok(Bytes::from(v))
        }
    }
    let (_d2, store2) = new_store();
    let r = fetch_missing(
        &built.index,
        &store2,
        &Flipping(Packs::of(&built)),
        &FetchOptions::default(),
        &Inflight::default(),
    )
    .await;
    assert!(matches!(r, Err(FetchError::Store(_))), "{r:?}");
    assert_eq!(stored_count(&store2), 0);
}
