//! Tests of fetching: coalescing, claims, short reads and deltas end to end.

use std::sync::atomic::{AtomicU64, Ordering};

use chunksnap_format::pb::{Chunk, Pack};

use super::*;

/// One pack holding one raw chunk; the first `corrupt` reads come back with a flipped byte.
struct Flaky {
    pack: Bytes,
    reads: AtomicU64,
    corrupt: u64,
}

impl RangeSource for Flaky {
    async fn read_range(&self, _: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        let n = self.reads.fetch_add(1, Ordering::SeqCst);
        let mut data = self
            .pack
            .slice(offset as usize..(offset + len) as usize)
            .to_vec();
        if n < self.corrupt {
            data[0] ^= 0x40;
        }
        Ok(Bytes::from(data))
    }
}

async fn fetch_with(corrupt: u64) -> (Result<FetchStats, FetchError>, u64, bool) {
    let data = vec![7u8; 4096];
    let digest = Digest::of(&data);
    let ix = LayerIndex {
        chunks: vec![Chunk {
            digest: digest.as_bytes().to_vec(),
            size: 4096,
            pack: 0,
            pack_offset: 0,
            stored_size: 4096,
            compression: Compression::None as i32,
            delta: None,
        }],
        packs: vec![Pack {
            digest: "sha256:00".into(),
            size: 4096,
        }],
        ..LayerIndex::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ChunkStore::open(dir.path(), None).unwrap());
    let src = Flaky {
        pack: Bytes::from(data),
        reads: AtomicU64::new(0),
        corrupt,
    };
    let opts = FetchOptions::default();
    let r = fetch_missing(&ix, &store, &src, &opts, &Inflight::default()).await;
    (r, src.reads.load(Ordering::SeqCst), store.contains(&digest))
}

#[tokio::test]
async fn damaged_bytes_are_read_once_more() {
    let (r, reads, stored) = fetch_with(1).await;
    assert_eq!(r.unwrap().chunks_fetched, 1);
    assert_eq!(reads, 2);
    assert!(stored);
    let (r, reads, stored) = fetch_with(2).await;
    assert!(matches!(r, Err(FetchError::Store(StoreError::Corrupt(_)))));
    assert_eq!(reads, 2);
    assert!(!stored);
}
