//! One Range request, verified as its body arrives: whole chunks received are handed, a piece
//! at a time, to a blocking verifier that decodes, checks and stores them while the rest of the
//! body is still on the wire. Read whole first, a request's chunks were only decoded once its
//! last byte was in, and on a link shared by several requests that is when all of them end.
//!
//! A body that breaks or ends short is finished with [`RangeSource::read_range`] (which the
//! registry client retries); a piece with a damaged full chunk is read once more on its own.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::inflight::Claims;
use super::plan::{Request, Want};
use super::verify::{self, Done};
use super::{FetchError, FetchOptions, RangeSource, request_deadline};
use crate::store::{ChunkStore, StoreError};

/// Bytes of whole chunks gathered before they go to the verifier as one piece (the last piece
/// of a request may be smaller). Big enough for a piece of deltas to share its decoded bases,
/// small enough that decoding starts early.
const PIECE: u64 = 256 << 10;
/// Most bytes a request's buffer is allocated for before they arrive.
const PREALLOCATE_MAX: u64 = 8 << 20;

/// What one request brought.
#[derive(Default)]
pub(super) struct Fetched {
    /// Chunks stored.
    pub(super) stored: u64,
    /// Of those, rebuilt from deltas.
    pub(super) from_deltas: u64,
    /// Bytes received.
    pub(super) bytes: u64,
    /// Delta wants that could not be used: fetch them as full chunks.
    pub(super) retry: Vec<Want>,
}

impl Fetched {
    fn add(&mut self, done: Done) {
        self.stored += done.stored;
        self.from_deltas += done.from_deltas;
        self.retry.extend(done.retry);
    }
}

/// Runs one request within its [`request_deadline`]. Each chunk is stored (and its claim
/// released) as soon as it verifies; full chunks that fail verification (damaged in transit,
/// e.g. by a faulty proxy) are read once more before the fetch fails; deltas that fail go back
/// as full chunks.
pub(super) async fn fetch_request(
    r: Request,
    claims: Arc<Claims>,
    store: &Arc<ChunkStore>,
    source: &impl RangeSource,
    opts: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let deadline = request_deadline(opts, r.len);
    let (pack, offset, len) = (r.pack.clone(), r.start, r.len);
    tokio::time::timeout(deadline, receive(r, claims, store, source))
        .await
        .map_err(|_| FetchError::Deadline {
            pack,
            offset,
            len,
            after: deadline,
        })?
}

async fn receive(
    r: Request,
    claims: Arc<Claims>,
    store: &Arc<ChunkStore>,
    source: &impl RangeSource,
) -> Result<Fetched, FetchError> {
    let mut fetched = Fetched::default();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Request, Bytes)>();
    let verifier = {
        let (store, claims) = (Arc::clone(store), Arc::clone(&claims));
        tokio::task::spawn_blocking(move || verify_pieces(rx, &store, &claims))
    };
    let t0 = std::time::Instant::now();
    let mut body = Body::new(&r);
    let received = body.receive(&r, source, &tx).await;
    let received_in = t0.elapsed();
    drop(tx);
    // The verifier ends once it has the last piece (or at its first error).
    let (done, damaged) = verifier.await??;
    fetched.bytes = received?;
    tracing::debug!(
        pack = %r.pack,
        offset = r.start,
        len = r.len,
        chunks = r.chunks.len(),
        received_ms = received_in.as_millis() as u64,
        verified_ms = t0.elapsed().as_millis() as u64,
        "range request done"
    );
    fetched.add(done);
    for piece in damaged {
        let data = source
            .read_range(&piece.pack, piece.start, piece.len)
            .await?;
        check_length(&piece, data.len() as u64)?;
        fetched.bytes += data.len() as u64;
        let (st, cl) = (Arc::clone(store), Arc::clone(&claims));
        let done = tokio::task::spawn_blocking(move || {
            verify::check_and_store(&piece, &data, &st, &|d| cl.release(d))
        })
        .await??;
        fetched.add(done);
    }
    Ok(fetched)
}

/// Verifies pieces as they come; pieces whose full chunks were damaged are handed back to be
/// read again.
fn verify_pieces(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(Request, Bytes)>,
    store: &ChunkStore,
    claims: &Claims,
) -> Result<(Done, Vec<Request>), StoreError> {
    let mut all = Done::default();
    let mut damaged = Vec::new();
    while let Some((piece, data)) = rx.blocking_recv() {
        match verify::check_and_store(&piece, &data, store, &|d| claims.release(d)) {
            Ok(done) => all.add(done),
            Err(StoreError::Corrupt(e)) => {
                tracing::warn!(pack = %piece.pack, offset = piece.start, cause = %e, "chunk failed verification; reading the range again");
                damaged.push(piece);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((all, damaged))
}

/// A request's body as it arrives: the bytes not yet handed to the verifier, and which chunks
/// those are.
struct Body {
    buf: BytesMut,
    /// Offset in the request of `buf`'s first byte.
    base: u64,
    /// First chunk of the request not yet handed out.
    next: usize,
}

impl Body {
    fn new(r: &Request) -> Self {
        Self {
            buf: BytesMut::with_capacity(r.len.min(PREALLOCATE_MAX) as usize),
            base: 0,
            next: 0,
        }
    }

    /// Bytes of the request received so far.
    fn received(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Receives the whole body, handing whole chunks to `tx` as they are in; what a broken or
    /// short stream left out is read with `read_range`. Returns the bytes received.
    async fn receive(
        &mut self,
        r: &Request,
        source: &impl RangeSource,
        tx: &tokio::sync::mpsc::UnboundedSender<(Request, Bytes)>,
    ) -> Result<u64, FetchError> {
        let mut stream = source.stream_range(&r.pack, r.start, r.len).await?;
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(bytes) => {
                    self.take(r, &bytes)?;
                    self.hand_out(r, tx, false);
                }
                Err(e) => {
                    tracing::debug!(pack = %r.pack, offset = r.start, cause = %e, "range body broke; reading the rest");
                    break;
                }
            }
        }
        let got = self.received();
        if got < r.len {
            let rest = source
                .read_range(&r.pack, r.start + got, r.len - got)
                .await?;
            if rest.len() as u64 != r.len - got {
                return Err(FetchError::ShortRead {
                    pack: r.pack.clone(),
                    offset: r.start + got,
                    expected: r.len - got,
                    got: rest.len() as u64,
                });
            }
            self.take(r, &rest)?;
        }
        self.hand_out(r, tx, true);
        Ok(self.received())
    }

    fn take(&mut self, r: &Request, bytes: &[u8]) -> Result<(), FetchError> {
        let got = self.received() + bytes.len() as u64;
        if got > r.len {
            return Err(FetchError::range(
                &r.pack,
                r.start,
                r.len,
                format!("the answer ran past the range ({got} bytes or more)"),
            ));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Sends the whole chunks received so far as one piece, once they make up [`PIECE`] bytes
    /// or the body is complete (`last`).
    fn hand_out(
        &mut self,
        r: &Request,
        tx: &tokio::sync::mpsc::UnboundedSender<(Request, Bytes)>,
        last: bool,
    ) {
        let Some((upto, end)) = ready(&r.chunks, r.start, self.next, self.received()) else {
            return;
        };
        if !last && end - self.base < PIECE {
            return;
        }
        let data = self.buf.split_to((end - self.base) as usize).freeze();
        let piece = Request {
            pack: r.pack.clone(),
            start: r.start + self.base,
            len: end - self.base,
            chunks: r.chunks[self.next..upto].to_vec(),
        };
        (self.base, self.next) = (end, upto);
        // A verifier that stopped has its error for the caller: nothing to do here.
        let _ = tx.send((piece, data));
    }
}

/// The longest run of chunks from `next` on whose bytes are all within the first `received`
/// bytes of the request and which no later chunk's bytes overlap (plan sorts chunks by
/// offset): (index after the run, request offset where the run's bytes end).
fn ready(chunks: &[Want], start: u64, next: usize, received: u64) -> Option<(usize, u64)> {
    let mut run = None;
    let mut end = 0;
    for (i, w) in chunks.iter().enumerate().skip(next) {
        end = end.max(w.offset - start + u64::from(w.stored));
        if end > received {
            break;
        }
        if chunks.get(i + 1).is_none_or(|n| n.offset - start >= end) {
            run = Some((i + 1, end));
        }
    }
    run
}

fn check_length(r: &Request, got: u64) -> Result<(), FetchError> {
    if got == r.len {
        return Ok(());
    }
    Err(FetchError::ShortRead {
        pack: r.pack.clone(),
        offset: r.start,
        expected: r.len,
        got,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::plan::FullFrame;
    use chunksnap_format::digest::Digest;
    use chunksnap_format::pb::Compression;

    fn want(offset: u64, stored: u32) -> Want {
        Want::full(
            Digest::of(&offset.to_le_bytes()),
            stored,
            FullFrame {
                pack: 0,
                offset,
                stored,
                compression: Compression::None,
            },
        )
    }

    #[test]
    fn only_whole_chunks_not_overlapped_later_are_ready() {
        let chunks = [want(100, 10), want(110, 10), want(125, 10)];
        assert_eq!(ready(&chunks, 100, 0, 9), None);
        assert_eq!(ready(&chunks, 100, 0, 10), Some((1, 10)));
        assert_eq!(ready(&chunks, 100, 0, 34), Some((2, 20)));
        assert_eq!(ready(&chunks, 100, 2, 35), Some((3, 35)));
        // Each chunk's bytes reach into the next one's: only all three make a piece.
        let overlapping = [want(0, 10), want(5, 20), want(20, 10)];
        assert_eq!(ready(&overlapping, 0, 0, 29), None);
        assert_eq!(ready(&overlapping, 0, 0, 30), Some((3, 30)));
    }
}
