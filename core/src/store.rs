//! The node-wide chunk store: verified chunks by digest under `chunks/<2 hex>/<64 hex>`.
//!
//! Each file is one header byte (the [`Compression`] of the frame: 0 raw, 1 zstd) followed by
//! the chunk exactly as stored in its pack, so the store costs about the compressed size.
//! Files are written to a temp file in the same directory and renamed into place: a
//! reader never sees a partial chunk. [`ChunkStore::get`] decompresses and verifies the sha256
//! on every read; a corrupt file is deleted and reported as missing (it can be fetched again).
//!
//! The store keeps an in-memory LRU (rebuilt from file mtimes at open, mtimes bumped on use) and
//! evicts least recently used, unpinned chunks down to its byte budget. [`PinGuard`]s keep the
//! chunks an in-flight prepare needs from being evicted. The API is blocking and thread-safe;
//! async callers go through `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use chunksnap_format::pb::Compression;

use chunksnap_format::digest::Digest;
use chunksnap_format::pack::{PackError, decode_chunk, decompress_chunk};

mod upkeep;

use upkeep::{for_each_file, parse_chunk_name, temp_owner_alive};

/// How stale a chunk file's mtime (its persisted recency) may get before a read refreshes it.
const RECENCY_GRAIN: std::time::Duration = std::time::Duration::from_secs(600);

/// Prefix of temp files; anything named so is an unfinished write that cleanup may delete.
pub const TEMP_PREFIX: &str = ".tmp-";
/// Temp files younger than this are left alone by `gc`/`fsck` (a writer may still own them).
const TEMP_GRACE: Duration = Duration::from_secs(60);

/// Errors from the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The chunk is not in the store (or was corrupt and has been removed).
    #[error("chunk {0} not in store")]
    Missing(Digest),
    /// Stored bytes that do not decode to the declared chunk.
    #[error(transparent)]
    Corrupt(#[from] PackError),
    /// An unknown compression value.
    #[error("unknown chunk compression {0}")]
    BadCompression(i32),
    /// Filesystem error.
    #[error("chunk store I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A thread verifying or storing chunks panicked (a bug; nothing unverified was stored).
    #[error("a chunk worker thread panicked")]
    WorkerPanicked,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Counts of what the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Chunks in the store.
    pub chunks: u64,
    /// Bytes on disk (headers + stored frames).
    pub bytes: u64,
    /// Chunks currently pinned.
    pub pinned: u64,
    /// The byte budget, if any.
    pub budget: Option<u64>,
}

/// What `fsck` found (and, with `repair`, removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Chunks that verified.
    pub ok: u64,
    /// Chunks that failed verification or had a bad name/header.
    pub corrupt: u64,
    /// Stale temp files.
    pub temp_files: u64,
    /// Whether the problems found were removed.
    pub repaired: bool,
}

/// What `gc` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks evicted to meet the budget.
    pub evicted_chunks: u64,
    /// Bytes freed by eviction.
    pub evicted_bytes: u64,
    /// Stale temp files removed.
    pub temp_files: u64,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    bytes: u64,
    tick: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Digest, Meta>,
    /// tick -> digest, oldest first (the LRU order).
    lru: BTreeMap<u64, Digest>,
    pins: HashMap<Digest, usize>,
    total: u64,
    clock: u64,
}

impl State {
    fn touch(&mut self, digest: Digest, bytes: u64) {
        self.clock += 1;
        let tick = self.clock;
        match self.entries.insert(digest, Meta { bytes, tick }) {
            Some(old) => {
                self.lru.remove(&old.tick);
                self.total = self.total - old.bytes + bytes;
            }
            None => self.total += bytes,
        }
        self.lru.insert(tick, digest);
    }

    fn forget(&mut self, digest: &Digest) {
        if let Some(old) = self.entries.remove(digest) {
            self.lru.remove(&old.tick);
            self.total -= old.bytes;
        }
    }
}

/// The chunk store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct ChunkStore {
    chunks_dir: PathBuf,
    budget: Option<u64>,
    state: Arc<Mutex<State>>,
    temp_seq: AtomicU64,
}

/// How a read turns a stored frame into the chunk: hashed or not (`get`, `get_unhashed`).
type Decode = fn(&[u8], Compression, u64, &Digest) -> Result<Vec<u8>, PackError>;

/// Keeps a set of chunks from being evicted while it lives.
pub struct PinGuard {
    state: Arc<Mutex<State>>,
    digests: Vec<Digest>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        for d in &self.digests {
            if let Some(n) = st.pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    st.pins.remove(d);
                }
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave State half-updated in a way that matters
    // (worst case: stale accounting), so keep going rather than poison every caller.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChunkStore {
    /// Opens (creating if needed) the store under `dir`, rebuilding the LRU from file mtimes.
    pub fn open(dir: &Path, budget_bytes: Option<u64>) -> Result<Self, StoreError> {
        let chunks_dir = dir.join("chunks");
        fs::create_dir_all(&chunks_dir).map_err(io_err(&chunks_dir))?;
        let mut found: Vec<(SystemTime, Digest, u64)> = Vec::new();
        for_each_file(&chunks_dir, |path, name, md| {
            // A crashed writer's temp file would otherwise wait out TEMP_GRACE for a gc.
            if name.starts_with(TEMP_PREFIX) && !temp_owner_alive(name) {
                let _ = fs::remove_file(path);
            }
            if let Some(d) = parse_chunk_name(path, name) {
                let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((mtime, d, md.len()));
            }
        })?;
        found.sort();
        let mut st = State::default();
        for (_, d, bytes) in found {
            st.touch(d, bytes);
        }
        Ok(Self {
            chunks_dir,
            budget: budget_bytes,
            state: Arc::new(Mutex::new(st)),
            temp_seq: AtomicU64::new(0),
        })
    }

    /// The path of a chunk's file.
    pub fn chunk_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.chunks_dir.join(&hex[..2]).join(hex)
    }

    /// Whether the store holds `digest` (from the in-memory index; no disk access).
    pub fn contains(&self, digest: &Digest) -> bool {
        lock(&self.state).entries.contains_key(digest)
    }

    /// Stores a chunk that the caller has verified (`stored` decodes to `size` bytes with
    /// sha256 `digest`). Atomic: temp file + rename. Evicts to the budget afterwards.
    pub fn insert_verified(
        &self,
        digest: &Digest,
        size: u32,
        compression: Compression,
        stored: &[u8],
    ) -> Result<(), StoreError> {
        let _ = size; // recorded by the index, not the file; kept for symmetry with `get`
        {
            // Already stored (e.g. a concurrent fetch won): just mark it used.
            let mut st = lock(&self.state);
            if let Some(m) = st.entries.get(digest).copied() {
                st.touch(*digest, m.bytes);
                return Ok(());
            }
        }
        let path = self.chunk_path(digest);
        let dir = path.parent().unwrap_or(&self.chunks_dir);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}-{seq}",
            digest.hex(),
            std::process::id()
        ));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&[compression as u8])?;
            // No fsync: a chunk torn by a crash is never used (a hashed read drops it; a
            // layer that read it unhashed fails its diffID check, and its chunks are then
            // read hashed); an fsync per chunk made fetching thousands of chunks disk-bound.
            f.write_all(stored)
        };
        // The rename happens under the lock so eviction never races a fresh insert.
        let renamed = write().and_then(|()| {
            let mut st = lock(&self.state);
            fs::rename(&tmp, &path)?;
            st.touch(*digest, stored.len() as u64 + 1);
            Ok(())
        });
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io { path, source: e });
        }
        if self.budget.is_some() {
            self.evict_to_budget()?;
        }
        Ok(())
    }

    /// The uncompressed bytes of a chunk, verified. A corrupt file is deleted and reported as
    /// [`StoreError::Missing`].
    pub fn get(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        self.read(digest, size, decompress_chunk)
    }

    /// [`get`](Self::get) without hashing the bytes again: for readers whose result is proven
    /// another way, an assembly checked against the layer's diffID or a delta decoded from
    /// these bases and checked against its own sha256. Each chunk was verified when it was
    /// stored; what this skips is the check against damage on disk since, which the reader's
    /// own proof catches (it then has the layer's chunks checked with [`get`](Self::get), which
    /// drops damaged ones). A frame that does not decode is still deleted.
    pub fn get_unhashed(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        self.read(digest, size, decode_chunk)
    }

    fn read(&self, digest: &Digest, size: u32, decode: Decode) -> Result<Vec<u8>, StoreError> {
        let path = self.chunk_path(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Inserts rename under the state lock: look again under it, or a chunk stored
                // between our open and this point would be forgotten (and fetched again).
                let mut st = lock(&self.state);
                if !path.exists() {
                    st.forget(digest);
                }
                return Err(StoreError::Missing(*digest));
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(io_err(&path))?;
        let decoded = match raw.split_first() {
            Some((&0, rest)) => decode(rest, Compression::None, size.into(), digest),
            Some((&1, rest)) => decode(rest, Compression::Zstd, size.into(), digest),
            Some((&h, _)) => Err(PackError::Corrupt {
                digest: *digest,
                reason: format!("unknown header byte {h}"),
            }),
            None => Err(PackError::Corrupt {
                digest: *digest,
                reason: "empty file".into(),
            }),
        };
        match decoded {
            Ok(data) => {
                // Persist recency for the next open, at most once per RECENCY_GRAIN per chunk:
                // an mtime update per read dirtied an inode (a journal write) per chunk.
                // Failure only costs LRU precision.
                let now = SystemTime::now();
                let stale = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_or(true, |m| {
                        now.duration_since(m).is_ok_and(|d| d > RECENCY_GRAIN)
                    });
                if stale {
                    let _ = file.set_modified(now);
                }
                lock(&self.state).touch(*digest, raw.len() as u64);
                Ok(data)
            }
            // The stored frame declares the size it was verified with: a different size is the
            // caller's index being wrong (maybe forged), not the file. Never delete for that.
            Err(e @ PackError::SizeMismatch { .. }) => Err(StoreError::Corrupt(e)),
            Err(e) => {
                tracing::warn!(%digest, cause = %e, "removing corrupt chunk");
                // Under the lock, so no insert's rename interleaves with the removal.
                let mut st = lock(&self.state);
                let _ = fs::remove_file(&path);
                st.forget(digest);
                Err(StoreError::Missing(*digest))
            }
        }
    }

    /// Pins `digests` (present or not yet fetched) until the guard is dropped.
    pub fn pin(&self, digests: impl IntoIterator<Item = Digest>) -> PinGuard {
        let digests: Vec<Digest> = digests.into_iter().collect();
        let mut st = lock(&self.state);
        for d in &digests {
            *st.pins.entry(*d).or_insert(0) += 1;
        }
        PinGuard {
            state: Arc::clone(&self.state),
            digests,
        }
    }

    /// Counts of what the store holds.
    pub fn stats(&self) -> StoreStats {
        let st = lock(&self.state);
        StoreStats {
            chunks: st.entries.len() as u64,
            bytes: st.total,
            pinned: st.pins.len() as u64,
            budget: self.budget,
        }
    }

    /// Evicts least recently used, unpinned chunks until the store fits its budget.
    /// Returns (chunks, bytes) evicted.
    pub fn evict_to_budget(&self) -> Result<(u64, u64), StoreError> {
        let Some(budget) = self.budget else {
            return Ok((0, 0));
        };
        let mut evicted = (0, 0);
        let mut st = lock(&self.state);
        let mut victims = Vec::new();
        let mut total = st.total;
        for (_, d) in st.lru.iter() {
            if total <= budget {
                break;
            }
            if st.pins.contains_key(d) {
                continue;
            }
            if let Some(m) = st.entries.get(d) {
                total -= m.bytes;
                victims.push(*d);
            }
        }
        // Removing under the lock keeps a concurrent insert of the same digest from being lost.
        for d in victims {
            let path = self.chunk_path(&d);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path, source: e }),
            }
            if let Some(m) = st.entries.get(&d) {
                evicted.0 += 1;
                evicted.1 += m.bytes;
            }
            st.forget(&d);
        }
        Ok(evicted)
    }
}

#[cfg(test)]
mod crash_tests;
