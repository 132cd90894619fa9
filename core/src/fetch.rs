//! Fetching the chunks a layer needs and the store lacks, from packs, with Range reads.
//!
//! [`fetch_missing`] dedupes the index's chunks by digest, skips those already in the store,
//! groups the rest per pack, sorts them by offset and coalesces neighbours into one Range
//! request across gaps up to [`FetchOptions::max_gap`], capped at
//! [`FetchOptions::max_request`]; requests run [`FetchOptions::parallelism`] at a time. Every
//! chunk is decompressed (bounded) and its sha256 checked on a blocking thread before it enters
//! the store, while the rest of its request is still arriving (`request`): a short read or a
//! bad chunk fails the fetch and nothing unverified is stored.
//!
//! [`Inflight`] is shared process-wide so that concurrent fetches needing the same chunk fetch
//! it once: the first claims it, the others wait for it; if the first fails, a waiter claims
//! and fetches it itself, and one that waited [`claim_wait`] fetches it itself regardless.
//!
//! A slow registry costs the others nothing ([`limits`]): each Range request ends within
//! [`request_deadline`] (a floor plus its size at [`FetchOptions::min_rate`]) in
//! [`FetchError::Deadline`], and requests take a permit of their registry host before one of
//! the process-wide pool, so a stalling host holds at most its own share.
//!
//! Deltas: a chunk with a [`Delta`](chunksnap_format::pb::Delta) whose base chunks are all
//! in the store is fetched as its delta frame (usually a small fraction of the chunk) and
//! decoded against those bases, read and verified from the store. The bases are pinned for the
//! fetch; a delta that cannot be used after all (a base gone or corrupt, a frame that does not
//! decode to the chunk) is fetched as the full chunk in the next round, never trusted.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chunksnap_format::pb::{Compression, LayerIndex};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Notify;

use crate::store::{ChunkStore, StoreError};
use chunksnap_format::digest::Digest;

mod bounds;
mod early;
mod inflight;
mod limits;
mod plan;
mod request;
mod verify;

pub use bounds::{LayerCost, MAX_LAYER_CONTENT, check_layer};
pub use early::{EarlyPacks, EarlyRead, WithEarlyPacks};
use inflight::Claims;
pub use inflight::Inflight;
pub use limits::{claim_wait, request_deadline};
pub use plan::estimate;
use plan::{FullFrame, Request, Want, check_range, plan, use_deltas};
use request::{Fetched, fetch_request};

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
    /// A Range request did not complete within its deadline (a stalling or trickling source).
    #[error("reading {len} bytes at {offset} of pack {pack}: no complete answer within {after:?}")]
    Deadline {
        pack: String,
        offset: u64,
        len: u64,
        after: Duration,
    },
    /// The layer would cost more disk than allowed ([`check_layer`]).
    #[error("{what}: {bytes} bytes, more than the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        bytes: u64,
        limit: u64,
    },
    /// The fetch was abandoned (its prepare went away).
    #[error("fetch cancelled")]
    Cancelled,
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
    /// The registry host the reads go to: requests take a permit of their host (see
    /// [`Inflight`]). Sources that are not a registry share one.
    fn host(&self) -> &str {
        ""
    }

    /// Exactly `len` bytes at `offset` of the pack blob with digest `pack` (`sha256:<hex>`).
    fn read_range(
        &self,
        pack: &str,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Bytes, FetchError>> + Send;

    /// The same bytes as they arrive, so that chunks are verified while the rest is on the
    /// wire. The stream may break or end early: the caller reads what is missing with
    /// [`read_range`](Self::read_range). By default, all of it at once from `read_range`.
    fn stream_range(
        &self,
        pack: &str,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<RangeStream, FetchError>> + Send {
        async move {
            let bytes = self.read_range(pack, offset, len).await?;
            Ok(futures::stream::once(async move { Ok(bytes) }).boxed())
        }
    }
}

/// A Range request's bytes as they arrive ([`RangeSource::stream_range`]).
pub type RangeStream = futures::stream::BoxStream<'static, Result<Bytes, FetchError>>;

/// Request shaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// Largest gap of unneeded bytes read to join two chunks into one request (32 KiB: see
    /// the gap sweep in docs/benchmarks.md).
    pub max_gap: u64,
    /// Largest request in bytes (4 MiB); a single larger chunk still gets its own request.
    pub max_request: u64,
    /// Requests in flight at once (8), and per registry host across every fetch.
    pub parallelism: usize,
    /// Every Range request may take this long whatever its size (20 s), plus its size at
    /// `min_rate`: see [`request_deadline`].
    pub request_floor: Duration,
    /// Slowest transfer rate a request is allowed beyond the floor, bytes/s (64 KiB/s).
    pub min_rate: u64,
    /// Largest layer content fetched for ([`MAX_LAYER_CONTENT`]): see [`check_layer`].
    pub max_layer_content: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            max_gap: 32 << 10,
            max_request: 4 << 20,
            parallelism: 8,
            request_floor: Duration::from_secs(20),
            min_rate: 64 << 10,
            max_layer_content: MAX_LAYER_CONTENT,
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
    /// Of `chunks_fetched`, those rebuilt from a delta frame against chunks already stored.
    pub chunks_from_deltas: u64,
    /// Deltas that could not be used after all (then the full chunk was fetched).
    pub delta_fallbacks: u64,
    /// Chunks another fetch had claimed but not delivered within [`claim_wait`], then
    /// fetched by this one.
    pub claims_overtaken: u64,
}

impl FetchStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &FetchStats) {
        self.chunks_needed += other.chunks_needed;
        self.chunks_fetched += other.chunks_fetched;
        self.bytes_fetched += other.bytes_fetched;
        self.requests += other.requests;
        self.chunks_reused += other.chunks_reused;
        self.chunks_waited += other.chunks_waited;
        self.chunks_from_deltas += other.chunks_from_deltas;
        self.delta_fallbacks += other.delta_fallbacks;
        self.claims_overtaken += other.claims_overtaken;
    }
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
/// `None` = all, after [`check_layer`]), e.g. those of files that are not seeded.
pub async fn fetch_needed(
    index: &LayerIndex,
    needed: Option<&[bool]>,
    store: &Arc<ChunkStore>,
    source: &impl RangeSource,
    opts: &FetchOptions,
    inflight: &Inflight,
) -> Result<FetchStats, FetchError> {
    if needed.is_none() {
        check_layer(index, store.stats().budget, opts.max_layer_content)?;
    }
    let mut wants: Vec<Want> = Vec::new();
    let mut seen = HashSet::new();
    let mut delta_of: HashMap<Digest, usize> = HashMap::new();
    for (i, c) in index.chunks.iter().enumerate() {
        if needed.is_some_and(|n| !n.get(i).copied().unwrap_or(true)) {
            continue;
        }
        let digest = Digest::from_slice(&c.digest)
            .map_err(|e| FetchError::BadIndex(format!("chunk {i}: {e}")))?;
        if !seen.insert(digest) {
            continue;
        }
        check_range(index, i, c.pack, c.pack_offset, c.stored_size)?;
        let compression = Compression::try_from(c.compression)
            .map_err(|_| StoreError::BadCompression(c.compression))?;
        if c.delta.is_some() {
            delta_of.insert(digest, i);
        }
        let frame = FullFrame {
            pack: c.pack,
            offset: c.pack_offset,
            stored: c.stored_size,
            compression,
        };
        wants.push(Want::full(digest, c.size, frame));
    }
    let mut stats = FetchStats {
        chunks_needed: wants.len() as u64,
        ..FetchStats::default()
    };
    wants.retain(|w| !store.contains(&w.digest));
    stats.chunks_reused = stats.chunks_needed - wants.len() as u64;
    let _bases = use_deltas(index, &delta_of, &mut wants, store)?;
    // Chunks whose claim outlived `claim_wait`: fetched without waiting for the claim again.
    let mut overtake: HashSet<Digest> = HashSet::new();

    for _ in 0..MAX_ROUNDS {
        if wants.is_empty() {
            return Ok(stats);
        }
        // Claim what nobody is fetching; remember what others are fetching.
        let mut mine = Vec::new();
        let mut notes = HashMap::new();
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
                    Some(_) if overtake.contains(&w.digest) => mine.push(w),
                    Some(n) => {
                        // Created under the lock, so the owner's notify_waiters cannot be missed.
                        waits.push(Arc::clone(n).notified_owned());
                        theirs.push(w);
                    }
                    None => {
                        let note = Arc::new(Notify::new());
                        map.insert(w.digest, note.clone());
                        notes.insert(w.digest, note);
                        mine.push(w);
                    }
                }
            }
        }
        let requests = plan(&mine, index, opts);
        stats.requests += requests.len() as u64;
        // Each request owns the claims of its chunks (plan puts every claimed chunk in exactly
        // one) and releases each as it is stored, so a waiter, e.g. an assembly that needs one
        // chunk, goes on as soon as that chunk is in.
        let claimed: Vec<(Request, Arc<Claims>)> = requests
            .into_iter()
            .map(|r| {
                let owned = r
                    .chunks
                    .iter()
                    .filter_map(|w| Some((w.digest, notes.get(&w.digest)?.clone())))
                    .collect();
                let claims = Arc::new(Claims {
                    inflight: inflight.clone(),
                    owned,
                });
                (r, claims)
            })
            .collect();
        debug_assert_eq!(
            claimed.iter().map(|(r, _)| r.chunks.len()).sum::<usize>(),
            mine.len()
        );
        let fetched: Vec<Fetched> = futures::stream::iter(claimed)
            .map(|(r, claims)| async move {
                // Never closed, so acquiring cannot fail; without a permit, go on regardless.
                let _permit = inflight.requests.acquire(source.host()).await;
                fetch_request(r, claims, store, source, opts).await
            })
            .buffer_unordered(opts.parallelism.max(1))
            .try_collect()
            .await?;
        for f in fetched {
            stats.chunks_fetched += f.stored;
            stats.chunks_from_deltas += f.from_deltas;
            stats.bytes_fetched += f.bytes;
            stats.delta_fallbacks += f.retry.len() as u64;
            wants.extend(f.retry.into_iter().map(Want::into_full));
        }
        // A claim whose owner stalls (a slow registry, an abandoned prepare) is not waited
        // for longer than its largest request may take: then the chunk is fetched here.
        let waited = tokio::time::timeout(claim_wait(opts), futures::future::join_all(waits)).await;
        for w in theirs {
            if store.contains(&w.digest) {
                stats.chunks_waited += 1;
            } else {
                if waited.is_err() && overtake.insert(w.digest) {
                    stats.claims_overtaken += 1;
                }
                wants.push(w); // the other fetch failed or stalls: try ourselves next round
            }
        }
    }
    if wants.is_empty() {
        Ok(stats)
    } else {
        Err(FetchError::StillMissing(wants.len()))
    }
}

#[cfg(test)]
mod tests;
