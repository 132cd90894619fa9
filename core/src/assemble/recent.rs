//! Chunks the content stream lists more than once, decoded once: an index may list one tiny
//! chunk millions of times, and each listing used to cost a decompression and a sha256 check.
//! Chunks listed once go straight to the inner reader (no copy, no bookkeeping).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chunksnap_format::pb::Chunk;

use super::ChunkReader;
use crate::store::StoreError;
use chunksnap_format::digest::Digest;

/// Decoded repeated chunks kept before the cache starts over.
const CACHE_BYTES: usize = 16 << 20;

/// Cached chunks and their total size.
type Cache = (HashMap<Digest, Arc<Vec<u8>>>, usize);

/// A [`ChunkReader`] that keeps the chunks listed more than once in the stream.
pub(super) struct Recent<'r> {
    inner: &'r dyn ChunkReader,
    repeated: HashSet<Digest>,
    cache: Mutex<Cache>,
}

impl<'r> Recent<'r> {
    pub(super) fn new(inner: &'r dyn ChunkReader, chunks: &[Chunk]) -> Self {
        let mut seen = HashSet::with_capacity(chunks.len());
        let repeated = chunks
            .iter()
            .filter_map(|c| Digest::from_slice(&c.digest).ok())
            .filter(|d| !seen.insert(*d))
            .collect();
        Self {
            inner,
            repeated,
            cache: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChunkReader for Recent<'_> {
    fn read_chunk(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        if !self.repeated.contains(digest) {
            return self.inner.read_chunk(digest, size);
        }
        if let Some(data) = self
            .lock()
            .0
            .get(digest)
            .filter(|d| d.len() == size as usize)
        {
            return Ok(data.to_vec());
        }
        let data = self.inner.read_chunk(digest, size)?;
        let mut cache = self.lock();
        if cache.1 + data.len() > CACHE_BYTES {
            cache.0.clear();
            cache.1 = 0;
        }
        if data.len() <= CACHE_BYTES {
            cache.1 += data.len();
            cache.0.insert(*digest, Arc::new(data.clone()));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting(AtomicUsize);

    impl ChunkReader for Counting {
        fn read_chunk(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(vec![digest.as_bytes()[0]; size as usize])
        }
    }

    fn chunk(d: &Digest) -> Chunk {
        Chunk {
            digest: d.as_bytes().to_vec(),
            size: 4,
            ..Chunk::default()
        }
    }

    #[test]
    fn a_repeated_chunk_is_read_once() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut chunks = vec![chunk(&b)];
        chunks.extend(std::iter::repeat_n(chunk(&a), 10_000));
        let inner = Counting(AtomicUsize::new(0));
        let recent = Recent::new(&inner, &chunks);
        for c in &chunks {
            let d = Digest::from_slice(&c.digest).unwrap();
            assert_eq!(recent.read_chunk(&d, 4).unwrap(), vec![d.as_bytes()[0]; 4]);
        }
        assert_eq!(inner.0.load(Ordering::SeqCst), 2);
        // Chunks listed once are not kept.
        assert_eq!(recent.lock().0.len(), 1);
    }
}
