//! Packs read whole before the index that points into them is known, and a [`RangeSource`]
//! that serves Range reads of those packs from memory, as their bytes arrive.
//!
//! An updating node learns which delta frames it needs only once it has rebuilt the layer's
//! index, one round trip after the index delta. The packs holding those frames are named by
//! the artifact, so a node that will rebuild the index reads them while the index delta is on
//! the wire ([`EarlyPacks::start`]), and the fetch then finds its delta frames already here
//! ([`WithEarlyPacks`]). A read of a range the pack has not fully delivered yet streams its
//! bytes as they come, so decoding starts with the first frames rather than after the last
//! (a pack of a few MiB is still on the wire when the index is rebuilt). The bytes are only ever
//! a faster path to the same frames: each chunk decoded from them is checked against its sha256
//! as always, and what a pack could not deliver early is read with Range requests as before.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::{FetchError, RangeSource, RangeStream};

/// A pack's bytes as the registry sends them, once opened; `None` if it could not be opened.
/// The stream ends at the pack's end, or earlier if the read broke.
pub type EarlyRead = BoxFuture<'static, Option<BoxStream<'static, Bytes>>>;

/// Packs being read, or read, whole (by digest, `sha256:<hex>`). Cheap to clone; the reads
/// still running stop when the last clone is dropped.
#[derive(Clone, Default)]
pub struct EarlyPacks(Arc<Reads>);

#[derive(Default)]
struct Reads {
    packs: Vec<(String, Arc<Arriving>)>,
    running: Vec<AbortHandle>,
    /// Whatever the caller keeps for as long as the bytes are held (a memory reservation).
    _held: Option<Box<dyn Send + Sync>>,
}

impl Drop for Reads {
    fn drop(&mut self) {
        self.running.iter().for_each(AbortHandle::abort);
    }
}

/// One pack's bytes, as far as they have arrived.
struct Arriving {
    size: u64,
    /// The pieces received, in order, each with its offset in the pack.
    pieces: Mutex<Vec<(u64, Bytes)>>,
    progress: watch::Receiver<Progress>,
}

#[derive(Clone, Copy, Default)]
struct Progress {
    received: u64,
    /// The read is over: everything, or as much as it will ever deliver, is in.
    ended: bool,
}

impl EarlyPacks {
    /// Starts each read (pack digest, its size, the opening of its blob) on the runtime now,
    /// keeping `held` until the last clone is dropped. A read takes at most `deadline`; what it
    /// has not delivered by then (or ever: it failed, broke, or sent more than `size`) is read
    /// range by range.
    pub fn start(
        reads: impl IntoIterator<Item = (String, u64, EarlyRead)>,
        deadline: impl Fn(u64) -> Duration,
        held: impl Send + Sync + 'static,
    ) -> Self {
        let mut all = Reads {
            packs: Vec::new(),
            running: Vec::new(),
            _held: Some(Box::new(held)),
        };
        for (pack, size, open) in reads {
            let (tx, rx) = watch::channel(Progress::default());
            let arriving = Arc::new(Arriving {
                size,
                pieces: Mutex::new(Vec::new()),
                progress: rx,
            });
            let read = receive(Arc::clone(&arriving), open, tx);
            let task = tokio::spawn(tokio::time::timeout(deadline(size), read));
            all.running.push(task.abort_handle());
            all.packs.push((pack, arriving));
        }
        Self(Arc::new(all))
    }

    /// Whether no pack is being read early.
    pub fn is_empty(&self) -> bool {
        self.0.packs.is_empty()
    }

    fn pack(&self, pack: &str) -> Option<&Arc<Arriving>> {
        self.0.packs.iter().find(|(p, _)| p == pack).map(|(_, a)| a)
    }

    /// `len` bytes at `offset` of `pack`, if it is read early (waiting until they are in) and
    /// its read delivers them.
    async fn slice(&self, pack: &str, offset: u64, len: u64) -> Option<Bytes> {
        let arriving = self.pack(pack)?;
        let end = offset.checked_add(len).filter(|&e| e <= arriving.size)?;
        if len == 0 {
            return Some(Bytes::new());
        }
        (arriving.wait_past(end - 1).await >= end).then(|| arriving.copy(offset, end))
    }

    /// `len` bytes at `offset` of `pack` as they arrive, if it is read early and holds them.
    /// The stream ends short if the read does.
    fn stream(&self, pack: &str, offset: u64, len: u64) -> Option<RangeStream> {
        let arriving = Arc::clone(self.pack(pack)?);
        let end = offset.checked_add(len).filter(|&e| e <= arriving.size)?;
        let pieces = futures::stream::unfold(offset, move |at| {
            let arriving = Arc::clone(&arriving);
            async move {
                if at >= end {
                    return None;
                }
                let upto = arriving.wait_past(at).await.min(end);
                (upto > at).then(|| (Ok(arriving.copy(at, upto)), upto))
            }
        });
        Some(pieces.boxed())
    }
}

/// Reads the pack into `arriving`, telling its readers through `tx` as bytes come in.
async fn receive(arriving: Arc<Arriving>, open: EarlyRead, tx: watch::Sender<Progress>) {
    let mut received = 0u64;
    if let Some(mut stream) = open.await {
        while let Some(mut piece) = stream.next().await {
            // More than the artifact said: nothing past the pack's size is kept or read.
            let room = arriving.size - received;
            let over = piece.len() as u64 > room;
            if over {
                piece.truncate(room as usize);
            }
            if !piece.is_empty() {
                received += piece.len() as u64;
                arriving.lock().push((received - piece.len() as u64, piece));
                tx.send_replace(Progress {
                    received,
                    ended: false,
                });
            }
            if over {
                break;
            }
        }
    }
    tx.send_replace(Progress {
        received,
        ended: true,
    });
}

impl Arriving {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Bytes)>> {
        // The pieces are only ever appended whole: a panic elsewhere leaves them consistent.
        self.pieces.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until more than `at` bytes are in, or the read is over (a deadline, an abort or
    /// an error end it); returns how many bytes are in.
    async fn wait_past(&self, at: u64) -> u64 {
        let mut rx = self.progress.clone();
        if let Ok(p) = rx.wait_for(|p| p.received > at || p.ended).await {
            return p.received;
        }
        // The read was stopped (deadline, abort): what is in is all there will be.
        rx.borrow().received
    }

    /// The bytes `from..to` of the pack, all of which have arrived: a slice of one piece when
    /// they lie within it, else a copy.
    fn copy(&self, from: u64, to: u64) -> Bytes {
        let pieces = self.lock();
        let first = pieces.partition_point(|(at, p)| at + p.len() as u64 <= from);
        let mut out = BytesMut::new();
        for (at, piece) in pieces[first..].iter().take_while(|(at, _)| *at < to) {
            let lo = from.saturating_sub(*at) as usize;
            let hi = (to - at).min(piece.len() as u64) as usize;
            if out.is_empty() {
                if (hi - lo) as u64 == to - from {
                    return piece.slice(lo..hi);
                }
                out.reserve((to - from) as usize);
            }
            out.extend_from_slice(&piece[lo..hi]);
        }
        out.freeze()
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
        match self.early.stream(pack, offset, len) {
            Some(stream) => Ok(stream),
            None => self.inner.stream_range(pack, offset, len).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use tokio::sync::mpsc;

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

    const DEADLINE: Duration = Duration::from_secs(60);

    /// Pack `pack` of `size` bytes read early: delivering `read` in one piece, or failing.
    fn early(pack: &str, size: u64, read: Option<Bytes>) -> EarlyPacks {
        let open = async move { read.map(|b| futures::stream::once(async move { b }).boxed()) };
        EarlyPacks::start([(pack.to_owned(), size, open.boxed())], |_| DEADLINE, ())
    }

    /// Pack `pack` of `size` bytes read early (for at most `deadline`), its pieces sent
    /// through the returned sender.
    fn arriving(
        pack: &str,
        size: u64,
        deadline: Duration,
    ) -> (EarlyPacks, mpsc::UnboundedSender<Bytes>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let pieces = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
        let open = async move { Some(pieces) }.boxed();
        let early = EarlyPacks::start([(pack.to_owned(), size, open)], move |_| deadline, ());
        (early, tx)
    }

    async fn all(stream: RangeStream) -> Vec<u8> {
        let pieces: Vec<_> = stream.collect().await;
        pieces
            .into_iter()
            .flat_map(|p| p.unwrap().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn ranges_of_an_early_pack_come_from_memory() {
        let inner = Counting::default();
        let src = WithEarlyPacks {
            inner: &inner,
            early: early("p", 6, Some(Bytes::from_static(b"abcdef"))),
        };
        assert_eq!(src.read_range("p", 1, 3).await.unwrap(), &b"bcd"[..]);
        assert_eq!(all(src.stream_range("p", 4, 2).await.unwrap()).await, b"ef");
        assert_eq!(inner.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn other_packs_ranges_past_the_end_and_failed_reads_go_to_the_registry() {
        let inner = Counting::default();
        let src = WithEarlyPacks {
            inner: &inner,
            early: early("p", 3, Some(Bytes::from_static(b"abc"))),
        };
        assert_eq!(src.read_range("q", 0, 2).await.unwrap(), &[0u8, 1][..]);
        assert_eq!(src.read_range("p", 2, 2).await.unwrap(), &[2u8, 3][..]);
        assert_eq!(
            src.read_range("p", 100, 2).await.unwrap(),
            &[100u8, 101][..]
        );
        let failed = WithEarlyPacks {
            inner: &inner,
            early: early("p", 3, None),
        };
        assert_eq!(failed.read_range("p", 0, 1).await.unwrap(), &[0u8][..]);
        assert_eq!(inner.0.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_range_streams_its_bytes_as_the_pack_arrives() {
        let inner = Counting::default();
        let (early, tx) = arriving("p", 8, DEADLINE);
        let src = WithEarlyPacks {
            inner: &inner,
            early,
        };
        let mut stream = src.stream_range("p", 1, 6).await.unwrap();
        tx.send(Bytes::from_static(b"abc")).unwrap();
        // The first bytes of the range come before the rest of the pack exists.
        assert_eq!(stream.next().await.unwrap().unwrap(), &b"bc"[..]);
        tx.send(Bytes::from_static(b"de")).unwrap();
        tx.send(Bytes::from_static(b"fgh")).unwrap();
        let rest: Vec<u8> = all(stream).await;
        assert_eq!(rest, b"defg");
        // Ranges across pieces, and within one.
        assert_eq!(src.read_range("p", 2, 4).await.unwrap(), &b"cdef"[..]);
        assert_eq!(src.read_range("p", 5, 3).await.unwrap(), &b"fgh"[..]);
        assert_eq!(inner.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_read_that_breaks_leaves_the_rest_to_the_registry_and_one_too_long_stops_at_the_size()
    {
        let inner = Counting::default();
        let (early, tx) = arriving("p", 6, DEADLINE);
        let src = WithEarlyPacks {
            inner: &inner,
            early,
        };
        tx.send(Bytes::from_static(b"abc")).unwrap();
        drop(tx);
        // The stream ends where the read broke; the caller reads the rest by Range.
        assert_eq!(all(src.stream_range("p", 1, 4).await.unwrap()).await, b"bc");
        assert_eq!(src.read_range("p", 3, 2).await.unwrap(), &[3u8, 4][..]);
        assert_eq!(src.read_range("p", 0, 2).await.unwrap(), &b"ab"[..]);
        assert_eq!(inner.0.load(Ordering::Relaxed), 1);

        // A read sending more than the pack's size: the pack's bytes are kept, the rest is not,
        // and the read stops there (the sender sees its receiver gone).
        let (early, tx) = arriving("p", 2, DEADLINE);
        tx.send(Bytes::from_static(b"abc")).unwrap();
        let src = WithEarlyPacks {
            inner: &inner,
            early,
        };
        assert_eq!(src.read_range("p", 0, 2).await.unwrap(), &b"ab"[..]);
        while !tx.is_closed() {
            tokio::task::yield_now().await;
        }
        assert_eq!(inner.0.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_read_ends_at_its_deadline() {
        let inner = Counting::default();
        let (early, tx) = arriving("p", 4, Duration::from_secs(5));
        tx.send(Bytes::from_static(b"ab")).unwrap();
        let src = WithEarlyPacks {
            inner: &inner,
            early,
        };
        let t = tokio::time::Instant::now();
        // The sender stays open: only the deadline ends the read.
        assert_eq!(
            src.read_range("p", 0, 4).await.unwrap(),
            &[0u8, 1, 2, 3][..]
        );
        assert!(t.elapsed() >= Duration::from_secs(5));
        assert_eq!(src.read_range("p", 0, 2).await.unwrap(), &b"ab"[..]);
        drop(tx);
    }
}
