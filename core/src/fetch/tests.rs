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

/// `n` raw chunks of 4 KiB, each different, back to back in one pack.
fn raw_layer(n: usize) -> (LayerIndex, Bytes, Vec<Digest>) {
    let mut pack = Vec::new();
    let mut chunks = Vec::new();
    let mut digests = Vec::new();
    for i in 0..n {
        let data: Vec<u8> = (0..4096u32).map(|j| (j as usize * 31 + i) as u8).collect();
        let digest = Digest::of(&data);
        chunks.push(Chunk {
            digest: digest.as_bytes().to_vec(),
            size: 4096,
            pack: 0,
            pack_offset: pack.len() as u64,
            stored_size: 4096,
            compression: Compression::None as i32,
            delta: None,
        });
        digests.push(digest);
        pack.extend_from_slice(&data);
    }
    let ix = LayerIndex {
        packs: vec![Pack {
            digest: "sha256:00".into(),
            size: pack.len() as u64,
        }],
        chunks,
        ..LayerIndex::default()
    };
    (ix, Bytes::from(pack), digests)
}

/// Streams a pack range in 1000-byte pieces. After `pause_at` bytes it waits until `first` is in
/// the store; after `break_at` bytes the body breaks. `read_range` (whole reads) are counted.
struct Streaming {
    pack: Bytes,
    store: Arc<ChunkStore>,
    first: Digest,
    pause_at: Option<usize>,
    break_at: Option<usize>,
    extra: usize,
    whole_reads: Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
}

impl RangeSource for Streaming {
    async fn read_range(&self, _: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        lock_reads(&self.whole_reads).push((offset, len));
        Ok(self.pack.slice(offset as usize..(offset + len) as usize))
    }

    async fn stream_range(
        &self,
        pack: &str,
        offset: u64,
        len: u64,
    ) -> Result<RangeStream, FetchError> {
        let end = (offset + len) as usize + self.extra;
        let body = self.pack.slice(offset as usize..end.min(self.pack.len()));
        let mut body = body.to_vec();
        body.resize(end - offset as usize, 0);
        let (store, first, pause_at) = (Arc::clone(&self.store), self.first, self.pause_at);
        let (break_at, pack) = (self.break_at, pack.to_owned());
        let pieces: Vec<(usize, Bytes)> = body
            .chunks(1000)
            .scan(0, |at, c| {
                *at += c.len();
                Some((*at - c.len(), Bytes::copy_from_slice(c)))
            })
            .collect();
        Ok(futures::stream::iter(pieces)
            .then(move |(at, piece)| {
                let store = Arc::clone(&store);
                let pack = pack.clone();
                async move {
                    if break_at.is_some_and(|b| at >= b) {
                        return Err(FetchError::range(&pack, 0, 0, "connection reset"));
                    }
                    if pause_at == Some(at) {
                        let waited = tokio::time::timeout(Duration::from_secs(20), async {
                            while !store.contains(&first) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        });
                        if waited.await.is_err() {
                            return Err(FetchError::range(&pack, 0, 0, "first chunk never stored"));
                        }
                    }
                    Ok(piece)
                }
            })
            .boxed())
    }
}

fn lock_reads(r: &std::sync::Mutex<Vec<(u64, u64)>>) -> std::sync::MutexGuard<'_, Vec<(u64, u64)>> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

async fn stream_with(
    n: usize,
    pause_at: Option<usize>,
    break_at: Option<usize>,
    extra: usize,
) -> (Result<FetchStats, FetchError>, Vec<(u64, u64)>, usize) {
    let (ix, pack, digests) = raw_layer(n);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ChunkStore::open(dir.path(), None).unwrap());
    let src = Streaming {
        pack,
        store: Arc::clone(&store),
        first: digests[0],
        pause_at,
        break_at,
        extra,
        whole_reads: Arc::default(),
    };
    let r = fetch_missing(
        &ix,
        &store,
        &src,
        &FetchOptions::default(),
        &Inflight::default(),
    )
    .await;
    let stored = digests.iter().filter(|d| store.contains(d)).count();
    let reads = lock_reads(&src.whole_reads).clone();
    (r, reads, stored)
}

#[tokio::test]
async fn chunks_are_stored_while_the_body_still_arrives() {
    // 200 chunks (800 KiB): the body stops halfway until the first chunk is in the store.
    let (r, reads, stored) = stream_with(200, Some(400_000), None, 0).await;
    let stats = r.unwrap();
    assert_eq!((stats.chunks_fetched, stats.requests), (200, 1));
    assert_eq!(stats.bytes_fetched, 200 * 4096);
    assert!(reads.is_empty(), "{reads:?}");
    assert_eq!(stored, 200);
}

#[tokio::test]
async fn a_broken_body_is_finished_with_a_read_of_the_rest() {
    let (r, reads, stored) = stream_with(100, None, Some(150_000), 0).await;
    let stats = r.unwrap();
    assert_eq!(
        (stats.chunks_fetched, stats.bytes_fetched),
        (100, 100 * 4096)
    );
    assert_eq!(reads, vec![(150_000, 100 * 4096 - 150_000)]);
    assert_eq!(stored, 100);
}

#[tokio::test]
async fn a_body_longer_than_the_range_fails_the_fetch() {
    let (r, _, _) = stream_with(10, None, None, 1).await;
    assert!(matches!(r, Err(FetchError::Range { .. })), "{r:?}");
}
