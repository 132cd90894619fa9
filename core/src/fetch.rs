//! Fetching the chunks a layer needs and the store lacks, from packs, with Range reads.
//!
//! [`fetch_missing`] dedupes the index's chunks by digest, skips those already in the store,
//! groups the rest per pack, sorts them by offset and coalesces neighbours into one Range
//! request across gaps up to [`FetchOptions::max_gap`], capped at
//! [`FetchOptions::max_request`]; requests run [`FetchOptions::parallelism`] at a time. Every
//! chunk is decompressed (bounded) and its sha256 checked on a blocking thread before it enters
//! the store: a short read or a bad chunk fails the fetch and nothing unverified is stored.
//!
//! [`Inflight`] is shared process-wide so that concurrent fetches needing the same chunk fetch
//! it once: the first claims it, the others wait for it; if the first fails, a waiter claims
//! and fetches it itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chunksnap_proto::index::{Compression, LayerIndex};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{Notify, Semaphore};

use crate::digest::Digest;
use crate::format::pack::decompress_chunk;
use crate::store::{ChunkStore, StoreError};

/// How many times a chunk another fetch was getting is waited for before giving up.
const MAX_ROUNDS: usize = 4;

/// Errors from fetching chunks.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The range source (registry) failed.
    #[error("reading {len} bytes at {offset} of pack {pack}: {source}")]
    Range {
        pack: String,
        offset: u64,
        len: u64,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The source returned a different number of bytes than asked for.
    #[error("pack {pack}: asked for {expected} bytes at {offset}, got {got}")]
    ShortRead {
        pack: String,
        offset: u64,
        expected: u64,
        got: u64,
    },
    /// The index is inconsistent (bad digest, pack reference out of range).
    #[error("bad index: {0}")]
    BadIndex(String),
    /// A chunk failed verification, or the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Chunks another fetch was getting never arrived.
    #[error("{0} chunk(s) still missing after waiting for concurrent fetches")]
    StillMissing(usize),
    /// A blocking task panicked or was cancelled.
    #[error("verification task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl FetchError {
    /// Wraps a range source's own error.
    pub fn range(
        pack: &str,
        offset: u64,
        len: u64,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Range {
            pack: pack.to_owned(),
            offset,
            len,
            source: source.into(),
        }
    }
}

/// Reads byte ranges of pack blobs (implemented by the registry client, and by test fakes).
pub trait RangeSource: Send + Sync {
    /// Exactly `len` bytes at `offset` of the pack blob with digest `pack` (`sha256:<hex>`).
    fn read_range(
        &self,
        pack: &str,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Bytes, FetchError>> + Send;
}

/// Request shaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// Largest gap of unneeded bytes read to join two chunks into one request (32 KiB: see
    /// the gap sweep in docs/benchmarks.md).
    pub max_gap: u64,
    /// Largest request in bytes (8 MiB); a single larger chunk still gets its own request.
    pub max_request: u64,
    /// Requests in flight at once (8).
    pub parallelism: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            max_gap: 32 << 10,
            max_request: 8 << 20,
            parallelism: 8,
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Distinct chunks the layer needs.
    pub chunks_needed: u64,
    /// Chunks this call fetched and stored.
    pub chunks_fetched: u64,
    /// Bytes received from the source (including coalescing gaps).
    pub bytes_fetched: u64,
    /// Range requests made.
    pub requests: u64,
    /// Chunks already in the store.
    pub chunks_reused: u64,
    /// Chunks a concurrent fetch got for us.
    pub chunks_waited: u64,
}

/// Process-wide registry of chunks being fetched, and the process-wide cap on Range requests in
/// flight; clone it freely (shared state).
#[derive(Clone)]
pub struct Inflight {
    map: Arc<Mutex<HashMap<Digest, Arc<Notify>>>>,
    /// One permit per request in flight, over every concurrent fetch: the layers of an image
    /// are fetched side by side, and each response is held in memory until verified, so memory
    /// stays within `requests × FetchOptions::max_request` however many layers there are.
    requests: Arc<Semaphore>,
}

impl Default for Inflight {
    fn default() -> Self {
        Self::with_request_limit(FetchOptions::default().parallelism)
    }
}

impl Inflight {
    /// At most `limit` Range requests in flight across every fetch sharing this value.
    pub fn with_request_limit(limit: usize) -> Self {
        Self {
            map: Arc::default(),
            requests: Arc::new(Semaphore::new(limit.max(1))),
        }
    }
}

/// Chunks claimed by one fetch; released (and waiters woken) on drop, success or not.
struct Claims {
    inflight: Inflight,
    digests: Vec<Digest>,
}

impl Drop for Claims {
    fn drop(&mut self) {
        let mut map = self.inflight.map.lock().unwrap_or_else(|e| e.into_inner());
        for d in &self.digests {
            if let Some(n) = map.remove(d) {
                n.notify_waiters();
            }
        }
    }
}

/// A chunk to fetch: where it is and what it must decode to.
#[derive(Debug, Clone, Copy)]
struct Want {
    digest: Digest,
    size: u32,
    pack: u32,
    offset: u64,
    stored: u32,
    compression: Compression,
}

/// One Range request and the chunks inside it.
#[derive(Debug)]
struct Request {
    pack: String,
    start: u64,
    len: u64,
    chunks: Vec<Want>,
}

/// Fetches into `store` every chunk of `index` that it lacks. Callers should [`ChunkStore::pin`]
/// the layer's chunks first so that a tight budget cannot evict them before assembly.
pub async fn fetch_missing(
    index: &LayerIndex,
    store: &Arc<ChunkStore>,
    source: &impl RangeSource,
    opts: &FetchOptions,
    inflight: &Inflight,
) -> Result<FetchStats, FetchError> {
    fetch_needed(index, None, store, source, opts, inflight).await
}

/// [`fetch_missing`] for only the chunks marked in `needed` (one flag per chunk of `index`;
/// `None` = all), e.g. those of files that are not seeded.
pub async fn fetch_needed(
    index: &LayerIndex,
    needed: Option<&[bool]>,
    store: &Arc<ChunkStore>,
    source: &impl RangeSource,
    opts: &FetchOptions,
    inflight: &Inflight,
) -> Result<FetchStats, FetchError> {
    let mut wants: Vec<Want> = Vec::new();
    let mut seen = HashSet::new();
    for (i, c) in index.chunks.iter().enumerate() {
        if needed.is_some_and(|n| !n.get(i).copied().unwrap_or(true)) {
            continue;
        }
        let digest = Digest::from_slice(&c.digest)
            .map_err(|e| FetchError::BadIndex(format!("chunk {i}: {e}")))?;
        if !seen.insert(digest) {
            continue;
        }
        if c.pack as usize >= index.packs.len() {
            return Err(FetchError::BadIndex(format!(
                "chunk {i}: pack {} out of range",
                c.pack
            )));
        }
        // `plan` adds offsets and sizes: an unvalidated index must not make that overflow.
        if c.pack_offset
            .checked_add(u64::from(c.stored_size))
            .is_none()
        {
            return Err(FetchError::BadIndex(format!(
                "chunk {i}: pack range {}+{} overflows",
                c.pack_offset, c.stored_size
            )));
        }
        let compression = Compression::try_from(c.compression)
            .map_err(|_| StoreError::BadCompression(c.compression))?;
        wants.push(Want {
            digest,
            size: c.size,
            pack: c.pack,
            offset: c.pack_offset,
            stored: c.stored_size,
            compression,
        });
    }
    let mut stats = FetchStats {
        chunks_needed: wants.len() as u64,
        ..FetchStats::default()
    };
    wants.retain(|w| !store.contains(&w.digest));
    stats.chunks_reused = stats.chunks_needed - wants.len() as u64;

    for _ in 0..MAX_ROUNDS {
        if wants.is_empty() {
            return Ok(stats);
        }
        // Claim what nobody is fetching; remember what others are fetching.
        let mut mine = Vec::new();
        let mut waits = Vec::new();
        let mut theirs = Vec::new();
        {
            let mut map = inflight.map.lock().unwrap_or_else(|e| e.into_inner());
            for w in wants.drain(..) {
                if store.contains(&w.digest) {
                    stats.chunks_waited += 1;
                    continue;
                }
                match map.get(&w.digest) {
                    Some(n) => {
                        // Created under the lock, so the owner's notify_waiters cannot be missed.
                        waits.push(Arc::clone(n).notified_owned());
                        theirs.push(w);
                    }
                    None => {
                        map.insert(w.digest, Arc::new(Notify::new()));
                        mine.push(w);
                    }
                }
            }
        }
        let requests = plan(&mine, index, opts);
        stats.requests += requests.len() as u64;
        // Claims are released per request (plan puts every claimed chunk in exactly one), so a
        // waiter, e.g. an assembly that needs one chunk, wakes as soon as its request is in.
        let claimed: Vec<(Request, Claims)> = requests
            .into_iter()
            .map(|r| {
                let digests = r.chunks.iter().map(|w| w.digest).collect();
                let claims = Claims {
                    inflight: inflight.clone(),
                    digests,
                };
                (r, claims)
            })
            .collect();
        debug_assert_eq!(
            claimed.iter().map(|(r, _)| r.chunks.len()).sum::<usize>(),
            mine.len()
        );
        let fetched: Vec<(u64, u64)> = futures::stream::iter(claimed)
            .map(|(r, claims)| async move {
                // Never closed, so acquiring cannot fail; without a permit, go on regardless.
                let _permit = inflight.requests.acquire().await.ok();
                let result = fetch_request(r, store, source).await;
                drop(claims);
                result
            })
            .buffer_unordered(opts.parallelism.max(1))
            .try_collect()
            .await?;
        for (chunks, bytes) in fetched {
            stats.chunks_fetched += chunks;
            stats.bytes_fetched += bytes;
        }
        futures::future::join_all(waits).await;
        for w in theirs {
            if store.contains(&w.digest) {
                stats.chunks_waited += 1;
            } else {
                wants.push(w); // the other fetch failed: try ourselves next round
            }
        }
    }
    if wants.is_empty() {
        Ok(stats)
    } else {
        Err(FetchError::StillMissing(wants.len()))
    }
}

/// What fetching the chunks of `index` for which `wanted` holds (each distinct digest once)
/// would cost with `opts`: (requests, bytes read including coalescing gaps). For tuning.
pub fn estimate(
    index: &LayerIndex,
    mut wanted: impl FnMut(&Digest) -> bool,
    opts: &FetchOptions,
) -> (u64, u64) {
    let mut seen = HashSet::new();
    let wants: Vec<Want> = index
        .chunks
        .iter()
        .filter_map(|c| {
            let digest = Digest::from_slice(&c.digest).ok()?;
            (seen.insert(digest) && wanted(&digest) && (c.pack as usize) < index.packs.len())
                .then_some(Want {
                    digest,
                    size: c.size,
                    pack: c.pack,
                    offset: c.pack_offset,
                    stored: c.stored_size,
                    compression: Compression::try_from(c.compression).ok()?,
                })
        })
        .collect();
    let requests = plan(&wants, index, opts);
    let bytes = requests.iter().map(|r| r.len).sum();
    (requests.len() as u64, bytes)
}

/// Groups chunks per pack, by offset, into coalesced requests.
fn plan(wants: &[Want], index: &LayerIndex, opts: &FetchOptions) -> Vec<Request> {
    let mut per_pack: BTreeMap<u32, Vec<Want>> = BTreeMap::new();
    for w in wants {
        per_pack.entry(w.pack).or_default().push(*w);
    }
    let mut out = Vec::new();
    for (pack, mut chunks) in per_pack {
        chunks.sort_by_key(|w| w.offset);
        let pack = index.packs[pack as usize].digest.clone();
        let mut cur: Option<Request> = None;
        for w in chunks {
            let end = w.offset + u64::from(w.stored);
            if let Some(r) = cur.as_mut() {
                let r_end = r.start + r.len;
                let gap = w.offset.saturating_sub(r_end);
                if gap <= opts.max_gap && end - r.start <= opts.max_request && w.offset >= r.start {
                    r.len = r.len.max(end - r.start);
                    r.chunks.push(w);
                    continue;
                }
            }
            if let Some(r) = cur.take() {
                out.push(r);
            }
            cur = Some(Request {
                pack: pack.clone(),
                start: w.offset,
                len: u64::from(w.stored),
                chunks: vec![w],
            });
        }
        out.extend(cur);
    }
    out
}

/// Runs one request; returns (chunks stored, bytes received). Bytes that fail verification
/// (damaged in transit, e.g. by a faulty proxy) are read once more before the fetch fails.
async fn fetch_request(
    r: Request,
    store: &Arc<ChunkStore>,
    source: &impl RangeSource,
) -> Result<(u64, u64), FetchError> {
    let r = Arc::new(r);
    let mut received = 0;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let data = source.read_range(&r.pack, r.start, r.len).await?;
        if data.len() as u64 != r.len {
            return Err(FetchError::ShortRead {
                pack: r.pack.clone(),
                offset: r.start,
                expected: r.len,
                got: data.len() as u64,
            });
        }
        received += data.len() as u64;
        let (req, st) = (Arc::clone(&r), Arc::clone(store));
        let verified = tokio::task::spawn_blocking(move || -> Result<u64, FetchError> {
            // Verify every chunk of the request before storing any of them.
            let mut verified = Vec::with_capacity(req.chunks.len());
            for w in &req.chunks {
                let from = (w.offset - req.start) as usize;
                let stored = data.slice(from..from + w.stored as usize);
                decompress_chunk(&stored, w.compression, w.size.into(), &w.digest)
                    .map_err(StoreError::from)?;
                verified.push((w, stored));
            }
            for (w, stored) in &verified {
                st.insert_verified(&w.digest, w.size, w.compression, stored)?;
            }
            Ok(verified.len() as u64)
        })
        .await?;
        match verified {
            Ok(n) => return Ok((n, received)),
            Err(FetchError::Store(StoreError::Corrupt(e))) if attempt < 2 => {
                tracing::warn!(pack = %r.pack, offset = r.start, cause = %e, "chunk failed verification; reading the range again");
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use chunksnap_proto::index::{Chunk, Pack};

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
}
