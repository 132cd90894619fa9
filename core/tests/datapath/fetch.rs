use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chunksnap_core::fetch::{
    FetchError, FetchOptions, FetchStats, Inflight, RangeSource, fetch_missing,
};
use chunksnap_core::store::{ChunkStore, StoreError};
use chunksnap_format::delta::compress_delta;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::{BaseChunk, Delta, Pack};

use crate::{Built, LayerBuilder, noise};

/// Serves packs from memory, counting requests and bytes; can corrupt, truncate, fail or delay.
#[derive(Default)]
struct FakeSource {
    packs: HashMap<String, Bytes>,
    requests: AtomicU64,
    bytes: AtomicU64,
    corrupt: AtomicBool,
    short: AtomicBool,
    fail_once: AtomicBool,
    delay: Option<Duration>,
    ranges: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl FakeSource {
    fn new(built: &Built) -> Self {
        Self {
            packs: built.packs.clone(),
            ..Self::default()
        }
    }
}

impl RangeSource for FakeSource {
    async fn read_range(&self, pack: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.ranges.lock().unwrap().push((offset, len));
        if self.fail_once.swap(false, Ordering::SeqCst) {
            return Err(FetchError::range(pack, offset, len, "injected failure"));
        }
        let blob = self
            .packs
            .get(pack)
            .ok_or_else(|| FetchError::range(pack, offset, len, "no such pack"))?;
        let mut data = blob
            .slice(offset as usize..(offset + len) as usize)
            .to_vec();
        if self.corrupt.load(Ordering::SeqCst) {
            let n = data.len();
            data[n / 2] ^= 0x40;
        }
        if self.short.load(Ordering::SeqCst) {
            data.pop();
        }
        self.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        Ok(Bytes::from(data))
    }
}

/// A layer of `n` distinct incompressible 4 KiB chunks in one pack, plus a repeated chunk.
fn layer(n: u64) -> Built {
    let mut b = LayerBuilder::default();
    for i in 0..n {
        b.file(&format!("f{i}"), 0o644, &noise(i + 1, 4096));
    }
    b.file("dup", 0o644, &noise(1, 4096)); // same content as f0: one chunk
    b.build(4096, 64 << 20)
}

fn store() -> (tempfile::TempDir, Arc<ChunkStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ChunkStore::open(dir.path(), None).unwrap());
    (dir, store)
}

#[tokio::test]
async fn coalesces_dedupes_and_reuses() {
    let built = layer(10);
    let src = FakeSource::new(&built);
    let (_dir, store) = store();
    let stats = fetch_missing(
        &built.index,
        &store,
        &src,
        &FetchOptions::default(),
        &Inflight::default(),
    )
    .await
    .unwrap();
    assert_eq!(stats.chunks_needed, 10, "the duplicate chunk counts once");
    assert_eq!(stats.chunks_fetched, 10);
    assert_eq!(
        stats.requests, 1,
        "adjacent chunks coalesce into one request"
    );
    let pack_size = built.index.packs[0].size;
    assert_eq!(stats.bytes_fetched, pack_size);
    assert_eq!(src.bytes.load(Ordering::SeqCst), pack_size);
    for (d, data) in &built.chunks {
        assert_eq!(&store.get(d, data.len() as u32).unwrap(), data);
    }
    // Second time: everything is local.
    let again = fetch_missing(
        &built.index,
        &store,
        &src,
        &FetchOptions::default(),
        &Inflight::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        (again.chunks_reused, again.chunks_fetched, again.requests),
        (10, 0, 0)
    );
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_size_and_gap_limits_split_requests() {
    let built = layer(10);
    let (_dir, store) = store();
    let src = FakeSource::new(&built);
    let opts = FetchOptions {
        max_request: 3 * 4096 + 100,
        ..FetchOptions::default()
    };
    let stats = fetch_missing(&built.index, &store, &src, &opts, &Inflight::default())
        .await
        .unwrap();
    // Raw 4096-byte frames: 3 per request -> 4 requests.
    assert_eq!(stats.requests, 4);
    assert!(
        src.ranges
            .lock()
            .unwrap()
            .iter()
            .all(|&(_, len)| len <= opts.max_request)
    );

    // Pre-store every other chunk: the holes between missing chunks are 4 KiB gaps.
    let (_dir2, store2) = store_with_every_other(&built);
    let src = FakeSource::new(&built);
    let no_gap = FetchOptions {
        max_gap: 0,
        ..FetchOptions::default()
    };
    let s = fetch_missing(&built.index, &store2, &src, &no_gap, &Inflight::default())
        .await
        .unwrap();
    assert_eq!((s.requests, s.chunks_fetched, s.chunks_reused), (5, 5, 5));
    assert_eq!(s.bytes_fetched, 5 * 4096, "no gap bytes read");

    let (_dir3, store3) = store_with_every_other(&built);
    let src = FakeSource::new(&built);
    let s = fetch_missing(
        &built.index,
        &store3,
        &src,
        &FetchOptions::default(),
        &Inflight::default(),
    )
    .await
    .unwrap();
    assert_eq!(s.requests, 1, "gaps below max_gap are read through");
    assert_eq!(s.bytes_fetched, 9 * 4096);
}

fn store_with_every_other(built: &Built) -> (tempfile::TempDir, Arc<ChunkStore>) {
    let (dir, store) = store();
    for (i, c) in built.index.chunks.iter().enumerate().take(10) {
        if i % 2 == 1 {
            let d = Digest::from_slice(&c.digest).unwrap();
            let data = &built.chunks[&d];
            store
                .insert_verified(&d, c.size, chunksnap_format::pb::Compression::None, data)
                .unwrap();
        }
    }
    (dir, store)
}

#[tokio::test]
async fn corrupt_data_never_enters_the_store() {
    let built = layer(4);
    let (_dir, store) = store();
    let src = FakeSource::new(&built);
    src.corrupt.store(true, Ordering::SeqCst);
    let err = fetch_missing(
        &built.index,
        &store,
        &src,
        &FetchOptions::default(),
        &Inflight::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, FetchError::Store(StoreError::Corrupt(_))),
        "{err}"
    );
    // Chunks that verified before the damaged one may be stored; each is exactly right, and
    // the damaged one is not there.
    let mut stored = 0;
    for (d, data) in &built.chunks {
        match store.get(d, data.len() as u32) {
            Ok(got) => {
                assert_eq!(&got, data);
                stored += 1;
            }
            Err(e) => assert!(matches!(e, StoreError::Missing(_)), "{e}"),
        }
    }
    assert!(stored < built.chunks.len(), "the damaged chunk was stored");
    assert_eq!(store.stats().chunks as usize, stored);
}

#[tokio::test]
async fn short_read_is_an_error() {
    let built = layer(4);
    let (_dir, store) = store();
    let src = FakeSource::new(&built);
    src.short.store(true, Ordering::SeqCst);
    let err = fetch_missing(
        &built.index,
        &store,
        &src,
        &FetchOptions::default(),
        &Inflight::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::ShortRead { .. }), "{err}");
    assert_eq!(store.stats().chunks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_get_each_chunk_once() {
    let built = Arc::new(layer(20));
    let (_dir, store) = store();
    let src = Arc::new(FakeSource {
        delay: Some(Duration::from_millis(100)),
        ..FakeSource::new(&built)
    });
    let inflight = Inflight::default();
    let opts = FetchOptions {
        max_request: 4096, // one request per chunk, so both callers overlap chunk by chunk
        parallelism: 4,
        ..FetchOptions::default()
    };
    let run = || {
        let (b, s, src, inf) = (built.clone(), store.clone(), src.clone(), inflight.clone());
        tokio::spawn(async move { fetch_missing(&b.index, &s, &*src, &opts, &inf).await })
    };
    let (a, b) = (run(), run());
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert_eq!(
        src.requests.load(Ordering::SeqCst),
        20,
        "each chunk fetched once"
    );
    assert_eq!(a.chunks_fetched + b.chunks_fetched, 20);
    assert_eq!(
        a.chunks_fetched + a.chunks_waited + a.chunks_reused,
        20,
        "{a:?}"
    );
    assert_eq!(
        b.chunks_fetched + b.chunks_waited + b.chunks_reused,
        20,
        "{b:?}"
    );
    assert_eq!(store.stats().chunks, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_retries_when_the_first_fetch_fails() {
    let built = Arc::new(layer(1));
    let (_dir, store) = store();
    let src = Arc::new(FakeSource {
        delay: Some(Duration::from_millis(100)),
        ..FakeSource::new(&built)
    });
    src.fail_once.store(true, Ordering::SeqCst);
    let inflight = Inflight::default();
    let run = || {
        let (b, s, src, inf) = (built.clone(), store.clone(), src.clone(), inflight.clone());
        tokio::spawn(async move {
            fetch_missing(&b.index, &s, &*src, &FetchOptions::default(), &inf).await
        })
    };
    let first = run();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = run();
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(matches!(first, Err(FetchError::Range { .. })), "{first:?}");
    let second = second.unwrap();
    assert_eq!(second.chunks_fetched, 1, "the waiter fetched it itself");
    assert_eq!(src.requests.load(Ordering::SeqCst), 2);
    assert_eq!(store.stats().chunks, 1);
}

/// Counts Range requests in flight at once.
struct Concurrency {
    inner: FakeSource,
    now: AtomicU64,
    peak: AtomicU64,
}

impl RangeSource for Concurrency {
    async fn read_range(&self, pack: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = self.inner.read_range(pack, offset, len).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_capped_across_concurrent_fetches() {
    // Two layers fetched side by side, each allowed 8 requests, share a cap of 3.
    let (a, b) = (layer(40), {
        let mut l = LayerBuilder::default();
        for i in 0..40 {
            l.file(&format!("g{i}"), 0o644, &noise(1000 + i, 4096));
        }
        l.build(4096, 1 << 20)
    });
    let mut packs = a.packs.clone();
    packs.extend(b.packs.clone());
    let source = Concurrency {
        inner: FakeSource {
            packs,
            ..FakeSource::default()
        },
        now: AtomicU64::new(0),
        peak: AtomicU64::new(0),
    };
    let (_dir, store) = store();
    let opts = FetchOptions {
        max_gap: 0,
        max_request: 4096,
        parallelism: 8,
        ..FetchOptions::default()
    };
    let inflight = Inflight::with_request_limit(3);
    let (ra, rb) = tokio::join!(
        fetch_missing(&a.index, &store, &source, &opts, &inflight),
        fetch_missing(&b.index, &store, &source, &opts, &inflight)
    );
    assert!(ra.unwrap().requests >= 40 && rb.unwrap().requests >= 40);
    let peak = source.peak.load(Ordering::SeqCst);
    assert!((2..=3).contains(&peak), "peak {peak} requests in flight");
}

/// v2 of [`layer`]`(n)`: every file with one byte changed, plus delta frames of each v2 chunk
/// against the v1 chunk at the same place, in a pack of their own.
fn with_deltas(v1: &Built, n: u64) -> Built {
    let mut b = LayerBuilder::default();
    for i in 0..n {
        let mut data = noise(i + 1, 4096);
        data[100] ^= 0xff;
        b.file(&format!("f{i}"), 0o644, &data);
    }
    let mut v2 = b.build(4096, 64 << 20);
    let mut frames = Vec::new();
    for (k, c) in v2.index.chunks.iter_mut().enumerate() {
        let base = &v1.index.chunks[k];
        let base_data = &v1.chunks[&Digest::from_slice(&base.digest).unwrap()];
        let data = &v2.chunks[&Digest::from_slice(&c.digest).unwrap()];
        let frame = compress_delta(base_data, data, 3).unwrap();
        c.delta = Some(Delta {
            pack: 1,
            pack_offset: frames.len() as u64,
            stored_size: frame.len() as u32,
            base_first: k as u32,
            base_count: 1,
        });
        frames.extend_from_slice(&frame);
    }
    v2.index.delta_bases = v1
        .index
        .chunks
        .iter()
        .take(n as usize)
        .map(|c| BaseChunk {
            digest: c.digest.clone(),
            size: c.size,
        })
        .collect();
    let digest = Digest::of(&frames).to_string();
    v2.index.packs.push(Pack {
        digest: digest.clone(),
        size: frames.len() as u64,
    });
    v2.packs.insert(digest, Bytes::from(frames));
    v2
}

async fn fetch(built: &Built, src: &FakeSource, store: &Arc<ChunkStore>) -> FetchStats {
    fetch_missing(
        &built.index,
        store,
        src,
        &FetchOptions::default(),
        &Inflight::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn deltas_are_fetched_when_the_store_holds_their_bases() {
    let v1 = layer(4);
    let v2 = with_deltas(&v1, 4);
    let delta_pack = v2.index.packs[1].size;

    // A node holding v1: only the delta frames travel, and v2's chunks come out exact.
    let (_dir, st) = store();
    fetch(&v1, &FakeSource::new(&v1), &st).await;
    let src = FakeSource::new(&v2);
    let stats = fetch(&v2, &src, &st).await;
    assert_eq!((stats.chunks_fetched, stats.chunks_from_deltas), (4, 4));
    assert_eq!(stats.bytes_fetched, delta_pack);
    assert!(
        delta_pack < 4 * 4096 / 20,
        "deltas of one-byte edits: {delta_pack}"
    );
    for (d, data) in &v2.chunks {
        assert_eq!(&st.get(d, data.len() as u32).unwrap(), data);
    }

    // A cold node reads the full chunks and never the delta pack.
    let (_dir, cold) = store();
    let src = FakeSource::new(&v2);
    let stats = fetch(&v2, &src, &cold).await;
    assert_eq!((stats.chunks_fetched, stats.chunks_from_deltas), (4, 0));
    assert!(
        src.ranges
            .lock()
            .unwrap()
            .iter()
            .all(|&(_, len)| len != delta_pack)
    );
}

#[tokio::test]
async fn a_delta_that_does_not_decode_falls_back_to_the_full_chunk() {
    let v1 = layer(4);
    let mut v2 = with_deltas(&v1, 4);
    // The registry serves garbage for the delta pack (same length, so the reads succeed).
    let delta_pack = v2.index.packs[1].digest.clone();
    let len = v2.packs[&delta_pack].len();
    v2.packs.insert(delta_pack, Bytes::from(noise(99, len)));
    let (_dir, st) = store();
    fetch(&v1, &FakeSource::new(&v1), &st).await;
    let stats = fetch(&v2, &FakeSource::new(&v2), &st).await;
    assert_eq!(stats.chunks_from_deltas, 0);
    assert_eq!(stats.delta_fallbacks, 4);
    assert_eq!(stats.chunks_fetched, 4);
    for (d, data) in &v2.chunks {
        assert_eq!(&st.get(d, data.len() as u32).unwrap(), data);
    }
}

#[tokio::test]
async fn a_base_damaged_on_disk_fails_its_delta_and_is_removed() {
    let v1 = layer(4);
    let v2 = with_deltas(&v1, 4);
    let (_dir, st) = store();
    fetch(&v1, &FakeSource::new(&v1), &st).await;
    // Bases are read without hashing them again: the delta decoded from a damaged one fails
    // its own sha256, and the base is then checked and deleted.
    let base = Digest::from_slice(&v1.index.chunks[0].digest).unwrap();
    let path = st.chunk_path(&base);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2000] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let stats = fetch(&v2, &FakeSource::new(&v2), &st).await;
    assert_eq!((stats.chunks_from_deltas, stats.delta_fallbacks), (3, 1));
    assert_eq!(stats.chunks_fetched, 4);
    assert!(!st.contains(&base) && !path.exists());
    for (d, data) in &v2.chunks {
        assert_eq!(&st.get(d, data.len() as u32).unwrap(), data);
    }
}
