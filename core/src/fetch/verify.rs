//! Turning the bytes of one Range request into verified chunks in the store.
//!
//! Full frames are decompressed (bounded) and checked against their sha256. Delta frames are
//! decoded against their base chunks, read from the store, then checked the same way (the
//! bases are not hashed again: a damaged base gives a chunk that fails its sha256); a delta
//! that fails has its bases checked and is handed back to be fetched as the full chunk. Each chunk is stored
//! as soon as it checks out and its waiters are released, so an assembly waiting for it goes
//! on while the rest of the request is decoded. Neighbouring deltas mostly share their bases
//! (their windows over the previous version overlap), so decoded bases are cached per worker;
//! a request with many chunks is split into contiguous slices, one per CPU. Runs on a blocking
//! thread.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chunksnap_format::pb::Compression;

use super::plan::{How, Request, Want};
use crate::store::{ChunkStore, StoreError};
use chunksnap_format::delta::decompress_delta;
use chunksnap_format::digest::Digest;
use chunksnap_format::pack::{StoredChunk, decompress_chunk};

/// Decoded base chunks kept per worker before the cache starts over.
const BASE_CACHE_BYTES: usize = 8 << 20;
/// Fewer chunks than this per worker are not worth another thread.
const MIN_PER_WORKER: usize = 16;

/// What one request's bytes gave.
#[derive(Default)]
pub(super) struct Done {
    /// Chunks stored.
    pub stored: u64,
    /// Of those, rebuilt from deltas.
    pub from_deltas: u64,
    /// Deltas that could not be used: fetch these as full chunks.
    pub retry: Vec<Want>,
}

impl Done {
    /// Adds what `other` gave to this.
    pub(super) fn add(&mut self, other: Done) {
        self.stored += other.stored;
        self.from_deltas += other.from_deltas;
        self.retry.extend(other.retry);
    }
}

/// Base chunks decoded from the store, kept while deltas reuse them.
struct Bases<'s> {
    store: &'s ChunkStore,
    cache: HashMap<Digest, Arc<Vec<u8>>>,
    bytes: usize,
}

impl<'s> Bases<'s> {
    fn new(store: &'s ChunkStore) -> Self {
        Self {
            store,
            cache: HashMap::new(),
            bytes: 0,
        }
    }

    /// The concatenation of `bases`, each read from the store (verified) or the cache.
    fn prefix(&mut self, bases: &[(Digest, u32)]) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(bases.iter().map(|(_, s)| *s as usize).sum());
        for (d, size) in bases {
            let data = match self.cache.get(d) {
                Some(data) => data.clone(),
                None => {
                    // Unhashed: the delta decoded from them is checked against its sha256.
                    let data = Arc::new(self.store.get_unhashed(d, *size)?);
                    if self.bytes + data.len() > BASE_CACHE_BYTES {
                        self.cache.clear();
                        self.bytes = 0;
                    }
                    self.bytes += data.len();
                    self.cache.insert(*d, data.clone());
                    data
                }
            };
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// After a delta failed: reads its bases hashed, which deletes any damaged on disk, and
    /// forgets them here.
    fn check(&mut self, bases: &[(Digest, u32)]) {
        for (d, size) in bases {
            if let Some(data) = self.cache.remove(d) {
                self.bytes -= data.len();
            }
            let _ = self.store.get(d, *size);
        }
    }
}

/// Checks the chunks of `req` against `data` (the request's bytes) and stores each one that
/// checks out, calling `stored` for it. A full chunk that fails is an error (the caller may
/// read the range again); a delta that fails goes to [`Done::retry`].
pub(super) fn check_and_store(
    req: &Request,
    data: &Bytes,
    store: &ChunkStore,
    stored: &(dyn Fn(&Digest) + Sync),
) -> Result<Done, StoreError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(req.chunks.len() / MIN_PER_WORKER)
        .max(1);
    if workers == 1 {
        return slice(&req.chunks, req.start, data, store, stored);
    }
    let per = req.chunks.len().div_ceil(workers);
    let parts: Vec<Result<Done, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = req
            .chunks
            .chunks(per)
            .map(|part| s.spawn(move || slice(part, req.start, data, store, stored)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(StoreError::WorkerPanicked)))
            .collect()
    });
    let mut all = Done::default();
    for part in parts {
        all.add(part?);
    }
    Ok(all)
}

fn slice(
    wants: &[Want],
    start: u64,
    data: &Bytes,
    store: &ChunkStore,
    stored_cb: &(dyn Fn(&Digest) + Sync),
) -> Result<Done, StoreError> {
    let mut bases = Bases::new(store);
    let mut out = Done::default();
    for w in wants {
        let from = (w.offset - start) as usize;
        let stored = data.slice(from..from + w.stored as usize);
        let (compression, frame) = match &w.how {
            How::Full(compression) => {
                decompress_chunk(&stored, *compression, w.size.into(), &w.digest)?;
                (*compression, stored)
            }
            How::Delta(list) => {
                let rebuilt = bases
                    .prefix(list)
                    .and_then(|base| {
                        Ok(decompress_delta(&stored, &base, w.size.into(), &w.digest)?)
                    })
                    // Stored raw: compressing them (zstd level 1) took a tenth of a seeded
                    // update's CPU time on the assembly's critical path, and reading them back
                    // for the assembly then needs no decompression either. They are the
                    // changed part of a layer, a small share of the store.
                    .map(|plain| StoredChunk {
                        compression: Compression::None,
                        data: plain,
                    });
                match rebuilt {
                    Ok(s) => {
                        out.from_deltas += 1;
                        (s.compression, Bytes::from(s.data))
                    }
                    Err(e) => {
                        tracing::warn!(chunk = %w.digest, cause = %e, "delta unusable; fetching the full chunk");
                        bases.check(list);
                        out.retry.push(w.clone());
                        continue;
                    }
                }
            }
        };
        store.insert_verified(&w.digest, w.size, compression, &frame)?;
        stored_cb(&w.digest);
        out.stored += 1;
    }
    Ok(out)
}
