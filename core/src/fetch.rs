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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chunksnap_format::pb::{Compression, LayerIndex};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Notify;

use crate::store::{ChunkStore, StoreError};
use chunksnap_format::digest::Digest;

mod bounds;
mod limits;
mod verify;

pub use bounds::{LayerCost, MAX_LAYER_CONTENT, check_layer};
pub use limits::{claim_wait, request_deadline};

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
}

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

/// Process-wide registry of chunks being fetched, and the caps on Range requests in flight;
/// clone it freely (shared state).
#[derive(Clone)]
pub struct Inflight {
    map: Arc<Mutex<HashMap<Digest, Arc<Notify>>>>,
    /// One permit per request in flight, over every concurrent fetch: the layers of an image
    /// are fetched side by side, and each response is held in memory until verified, so memory
    /// stays within `2 × limit × FetchOptions::max_request` however many layers there are;
    /// `limit` of them per registry host.
    requests: Arc<limits::Permits>,
}

impl Default for Inflight {
    fn default() -> Self {
        Self::with_request_limit(FetchOptions::default().parallelism)
    }
}

impl Inflight {
    /// At most `limit` Range requests in flight per registry host, and twice that in all,
    /// across every fetch sharing this value.
    pub fn with_request_limit(limit: usize) -> Self {
        Self {
            map: Arc::default(),
            requests: Arc::new(limits::Permits::new(limit)),
        }
    }
}

/// Chunks claimed by one request: each released (its waiters woken) as soon as it is stored,
/// and every one left on drop, success or not. A claim is only ever removed by its owner (the
/// same `Notify`), so a late release never drops a claim another fetch made since.
struct Claims {
    inflight: Inflight,
    owned: HashMap<Digest, Arc<Notify>>,
}

impl Claims {
    fn release_locked(&self, map: &mut HashMap<Digest, Arc<Notify>>, d: &Digest) {
        let Some(mine) = self.owned.get(d) else {
            return;
        };
        if map.get(d).is_some_and(|n| Arc::ptr_eq(n, mine)) {
            map.remove(d);
            mine.notify_waiters();
        }
    }

    /// `d` is in the store: let its waiters go on without waiting for the rest of the request.
    fn release(&self, d: &Digest) {
        let mut map = self.inflight.map.lock().unwrap_or_else(|e| e.into_inner());
        self.release_locked(&mut map, d);
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        let mut map = self.inflight.map.lock().unwrap_or_else(|e| e.into_inner());
        for d in self.owned.keys() {
            self.release_locked(&mut map, d);
        }
    }
}

/// A chunk to fetch: where it is and what it must decode to.
#[derive(Debug, Clone)]
struct Want {
    digest: Digest,
    size: u32,
    pack: u32,
    offset: u64,
    stored: u32,
    how: How,
    /// The chunk's own frame, kept while `how` is a delta: where to go if the delta fails.
    full: Option<FullFrame>,
}

/// What the bytes at a [`Want`]'s range are.
#[derive(Debug, Clone)]
enum How {
    /// The chunk's frame, as the index's `compression` says.
    Full(Compression),
    /// A delta frame against these base chunks (digest, size), in order.
    Delta(Arc<[(Digest, u32)]>),
}

/// Where a chunk's own frame is.
#[derive(Debug, Clone, Copy)]
struct FullFrame {
    pack: u32,
    offset: u64,
    stored: u32,
    compression: Compression,
}

impl Want {
    fn full(digest: Digest, size: u32, f: FullFrame) -> Self {
        Self {
            digest,
            size,
            pack: f.pack,
            offset: f.offset,
            stored: f.stored,
            how: How::Full(f.compression),
            full: None,
        }
    }

    /// The same chunk as its own frame (after a delta could not be used).
    fn into_full(self) -> Self {
        match self.full {
            Some(f) => Self::full(self.digest, self.size, f),
            None => self,
        }
    }
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
            let frame = FullFrame {
                pack: c.pack,
                offset: c.pack_offset,
                stored: c.stored_size,
                compression: Compression::try_from(c.compression).ok()?,
            };
            (seen.insert(digest) && wanted(&digest) && (c.pack as usize) < index.packs.len())
                .then(|| Want::full(digest, c.size, frame))
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
        per_pack.entry(w.pack).or_default().push(w.clone());
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

/// Index sanity for a frame's pack range: `plan` adds offsets and sizes, so an unvalidated
/// index must not make that overflow or point past the pack list.
fn check_range(
    index: &LayerIndex,
    chunk: usize,
    pack: u32,
    offset: u64,
    stored: u32,
) -> Result<(), FetchError> {
    if pack as usize >= index.packs.len() {
        return Err(FetchError::BadIndex(format!(
            "chunk {chunk}: pack {pack} out of range"
        )));
    }
    if offset.checked_add(u64::from(stored)).is_none() {
        return Err(FetchError::BadIndex(format!(
            "chunk {chunk}: pack range {offset}+{stored} overflows"
        )));
    }
    Ok(())
}

/// Switches every want whose chunk has a delta with all bases in the store to that delta, and
/// pins those bases (the returned guard) so that eviction cannot take them mid-fetch.
fn use_deltas(
    index: &LayerIndex,
    delta_of: &HashMap<Digest, usize>,
    wants: &mut [Want],
    store: &ChunkStore,
) -> Result<Option<crate::store::PinGuard>, FetchError> {
    if delta_of.is_empty() {
        return Ok(None);
    }
    let mut pinned = Vec::new();
    for w in wants.iter_mut() {
        let Some(&i) = delta_of.get(&w.digest) else {
            continue;
        };
        let Some(d) = index.chunks.get(i).and_then(|c| c.delta.as_ref()) else {
            continue;
        };
        let first = d.base_first as usize;
        let Some(bases) = index
            .delta_bases
            .get(first..first.saturating_add(d.base_count as usize))
        else {
            return Err(FetchError::BadIndex(format!(
                "chunk {i}: delta bases out of range"
            )));
        };
        let bases = bases
            .iter()
            .map(|b| Ok((Digest::from_slice(&b.digest)?, b.size)))
            .collect::<Result<Vec<_>, chunksnap_format::digest::DigestError>>()
            .map_err(|e| FetchError::BadIndex(format!("chunk {i}: delta base: {e}")))?;
        if bases.is_empty() || !bases.iter().all(|(b, _)| store.contains(b)) {
            continue;
        }
        check_range(index, i, d.pack, d.pack_offset, d.stored_size)?;
        pinned.extend(bases.iter().map(|(b, _)| *b));
        let How::Full(compression) = w.how else {
            continue;
        };
        w.full = Some(FullFrame {
            pack: w.pack,
            offset: w.offset,
            stored: w.stored,
            compression,
        });
        w.pack = d.pack;
        w.offset = d.pack_offset;
        w.stored = d.stored_size;
        w.how = How::Delta(bases.into());
    }
    Ok((!pinned.is_empty()).then(|| store.pin(pinned)))
}

/// What one request brought.
struct Fetched {
    /// Chunks stored.
    stored: u64,
    /// Of those, rebuilt from deltas.
    from_deltas: u64,
    /// Bytes received.
    bytes: u64,
    /// Delta wants that could not be used: fetch them as full chunks.
    retry: Vec<Want>,
}

/// Runs one request. Each chunk is stored (and its claim released) as soon as it verifies; full
/// chunks that fail verification (damaged in transit, e.g. by a faulty proxy) are read once
/// more before the fetch fails; deltas that fail go back as full chunks.
async fn fetch_request(
    r: Request,
    claims: Arc<Claims>,
    store: &Arc<ChunkStore>,
    source: &impl RangeSource,
    opts: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let r = Arc::new(r);
    let mut received = 0;
    let mut attempt = 0;
    let deadline = request_deadline(opts, r.len);
    loop {
        attempt += 1;
        let data = tokio::time::timeout(deadline, source.read_range(&r.pack, r.start, r.len))
            .await
            .map_err(|_| FetchError::Deadline {
                pack: r.pack.clone(),
                offset: r.start,
                len: r.len,
                after: deadline,
            })??;
        if data.len() as u64 != r.len {
            return Err(FetchError::ShortRead {
                pack: r.pack.clone(),
                offset: r.start,
                expected: r.len,
                got: data.len() as u64,
            });
        }
        received += data.len() as u64;
        let (req, st, cl) = (Arc::clone(&r), Arc::clone(store), Arc::clone(&claims));
        let verified = tokio::task::spawn_blocking(move || -> Result<Fetched, FetchError> {
            let done = verify::check_and_store(&req, &data, &st, &|d| cl.release(d))?;
            Ok(Fetched {
                stored: done.stored,
                from_deltas: done.from_deltas,
                bytes: 0,
                retry: done.retry,
            })
        })
        .await?;
        match verified {
            Ok(f) => {
                return Ok(Fetched {
                    bytes: received,
                    ..f
                });
            }
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
}
