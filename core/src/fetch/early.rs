//! Packs read whole before the index that points into them is known, and a [`RangeSource`]
//! that serves Range reads of those packs from memory.
//!
//! An updating node learns which delta frames it needs only once it has rebuilt the layer's
//! index, one round trip after the index delta. The packs holding those frames are named by
//! the artifact, so a node that will rebuild the index reads them while the index delta is on
//! the wire ([`EarlyPacks::start`]), and the fetch then finds its delta frames already here
//! ([`WithEarlyPacks`]). The bytes are only ever a faster path to the same frames: each chunk
//! decoded from them is checked against its sha256 as always, and a pack that could not be
//! read early is read with Range requests as before.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use tokio::task::AbortHandle;

use super::{FetchError, RangeSource, RangeStream};

/// Packs being read, or read, whole (by digest, `sha256:<hex>`). Cheap to clone; the reads
/// still running stop when the last clone is dropped.
#[derive(Clone, Default)]
pub struct EarlyPacks(Arc<Reads>);

#[derive(Default)]
struct Reads {
    packs: HashMap<String, Shared<BoxFuture<'static, Option<Bytes>>>>,
    running: Vec<AbortHandle>,
    /// Whatever the caller keeps for as long as the bytes are held (a memory reservation).
    _held: Option<Box<dyn Send + Sync>>,
}

impl Drop for Reads {
    fn drop(&mut self) {
        self.running.iter().for_each(AbortHandle::abort);
    }
}

impl EarlyPacks {
    /// Starts each read (pack digest, the read of its whole blob) on the runtime now, keeping
    /// `held` until the last clone is dropped. A read that fails gives `None`: that pack is then
    /// read range by range.
    pub fn start(
        reads: impl IntoIterator<Item = (String, BoxFuture<'static, Option<Bytes>>)>,
        held: impl Send + Sync + 'static,
    ) -> Self {
        let mut all = Reads {
            packs: HashMap::new(),
            running: Vec::new(),
            _held: Some(Box::new(held)),
        };
        for (pack, read) in reads {
            let task = tokio::spawn(read);
            all.running.push(task.abort_handle());
            let done = task.map(|r| r.ok().flatten()).boxed().shared();
            all.packs.insert(pack, done);
        }
        Self(Arc::new(all))
    }

    /// Whether no pack is being read early.
    pub fn is_empty(&self) -> bool {
        self.0.packs.is_empty()
    }

    /// `len` bytes at `offset` of `pack`, if it is read early (waiting for that read) and
    /// holds them.
    async fn slice(&self, pack: &str, offset: u64, len: u64) -> Option<Bytes> {
        let bytes = self.0.packs.get(pack)?.clone().await?;
        let end = offset.checked_add(len)?;
        (end <= bytes.len() as u64).then(|| bytes.slice(offset as usize..end as usize))
    }
}

/// `inner`, except for Range reads of packs in `early`, which come from memory.
pub struct WithEarlyPacks<'a, S> {
    pub inner: &'a S,
    pub early: EarlyPacks,
}

impl<S: RangeSource> RangeSource for WithEarlyPacks<'_, S> {
    fn host(&self) -> &str {
        self.inner.host()
    }

    async fn read_range(&self, pack: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        match self.early.slice(pack, offset, len).await {
            Some(bytes) => Ok(bytes),
            None => self.inner.read_range(pack, offset, len).await,
        }
    }

    async fn stream_range(
        &self,
        pack: &str,
        offset: u64,
        len: u64,
    ) -> Result<RangeStream, FetchError> {
        match self.early.slice(pack, offset, len).await {
            Some(bytes) => Ok(futures::stream::once(async move { Ok(bytes) }).boxed()),
            None => self.inner.stream_range(pack, offset, len).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the Range reads that reach it; every pack is 0, 1, 2, ….
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl RangeSource for Counting {
        async fn read_range(&self, _: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok((offset..offset + len).map(|i| i as u8).collect())
        }
    }

    fn early(pack: &str, read: Option<Bytes>) -> EarlyPacks {
        EarlyPacks::start([(pack.to_owned(), async move { read }.boxed())], ())
    }

    #[tokio::test]
    async fn ranges_of_an_early_pack_come_from_memory() {
        let inner = Counting::default();
        let src = WithEarlyPacks {
            inner: &inner,
            early: early("p", Some(Bytes::from_static(b"abcdef"))),
        };
        assert_eq!(src.read_range("p", 1, 3).await.unwrap(), &b"bcd"[..]);
        let streamed: Vec<_> = src.stream_range("p", 4, 2).await.unwrap().collect().await;
        assert_eq!(streamed[0].as_ref().unwrap(), &b"ef"[..]);
        assert_eq!(inner.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn other_packs_ranges_past_the_end_and_failed_reads_go_to_the_registry() {
        let inner = Counting::default();
        let src = WithEarlyPacks {
            inner: &inner,
            early: early("p", Some(Bytes::from_static(b"abc"))),
        };
        assert_eq!(src.read_range("q", 0, 2).await.unwrap(), &[0u8, 1][..]);
        assert_eq!(src.read_range("p", 2, 2).await.unwrap(), &[2u8, 3][..]);
        assert_eq!(
            src.read_range("p", 100, 2).await.unwrap(),
            &[100u8, 101][..]
        );
        let failed = WithEarlyPacks {
            inner: &inner,
            early: early("p", None),
        };
        assert_eq!(failed.read_range("p", 0, 1).await.unwrap(), &[0u8][..]);
        assert_eq!(inner.0.load(Ordering::Relaxed), 4);
    }
}
