//! Reading a layer's rebuilt tar on a second thread, in large blocks, hashing it there: reading
//! the assembled files back and hashing them then overlap with the scan that checks the index
//! against the tar. On a two-core node, where nothing else runs while containerd waits for the
//! layer, this takes most of the hashing and file reading off the verification's critical path.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, sync_channel};

use chunksnap_format::digest::{Digest, Sha256Reader};

/// Bytes read per block.
const BLOCK: usize = 1 << 20;
/// Blocks read ahead of the scan (bounds the memory held: `BLOCKS × BLOCK`).
const BLOCKS: usize = 4;

/// The producer stopped because its source was cancelled (read as `Interrupted`). Passed on
/// as an error of another kind: readers such as `io::copy` retry `Interrupted` for ever.
#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

fn cancelled() -> io::Error {
    io::Error::other(Cancelled)
}

/// Whether `e` says the read was cancelled.
pub(super) fn is_cancelled(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted || e.get_ref().is_some_and(|e| e.is::<Cancelled>())
}

/// Runs `consume` over the bytes of `source`, which a second thread reads and hashes. Returns
/// what `consume` returned and the sha256 of all of `source` (`None` when reading it failed or
/// `consume` stopped before its end: the error then reached `consume`, or it had its own).
pub(super) fn with_read_ahead<T>(
    source: impl Read + Send,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> (T, Option<Digest>) {
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(BLOCKS);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut tar = Sha256Reader::new(source);
            loop {
                let mut block = vec![0u8; BLOCK];
                match fill(&mut tar, &mut block) {
                    Ok(0) => return Some(tar.finish().1),
                    Ok(n) => {
                        block.truncate(n);
                        // The scan stopped early (its own error): nothing more to do.
                        if tx.send(Ok(block)).is_err() {
                            return None;
                        }
                    }
                    Err(e) => {
                        let e = if is_cancelled(&e) { cancelled() } else { e };
                        let _ = tx.send(Err(e));
                        return None;
                    }
                }
            }
        });
        let mut reader = Blocks {
            rx,
            block: Vec::new(),
            pos: 0,
            failed: None,
        };
        let out = consume(&mut reader);
        // Unblocks the producer if the scan stopped early.
        drop(reader);
        let digest = producer.join().ok().flatten();
        (out, digest)
    })
}

/// Reads until `buf` is full or the end; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && n == 0 => return Err(e),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(n),
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The consumer's side: the blocks in order, then the end, or the producer's error (again on
/// every later read, so a consumer that retries never sees a clean end).
struct Blocks {
    rx: Receiver<io::Result<Vec<u8>>>,
    block: Vec<u8>,
    pos: usize,
    failed: Option<(io::ErrorKind, String, bool)>,
}

impl Read for Blocks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg, was_cancelled)) = &self.failed {
            return Err(if *was_cancelled {
                cancelled()
            } else {
                io::Error::new(*kind, msg.clone())
            });
        }
        while self.pos == self.block.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.block = block;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = Some((e.kind(), e.to_string(), is_cancelled(&e)));
                    return Err(e);
                }
                // The producer is done: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = (self.block.len() - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_consumer_sees_every_byte_and_the_digest_covers_them() {
        for n in [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 17] {
            let src = data(n);
            let (got, digest) = with_read_ahead(src.as_slice(), |r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v).map(|_| v)
            });
            assert_eq!(got.unwrap(), src, "n = {n}");
            assert_eq!(digest, Some(Digest::of(&src)), "n = {n}");
        }
    }

    #[test]
    fn a_read_error_reaches_the_consumer_and_gives_no_digest() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
        }
        let (got, digest) = with_read_ahead(Failing(BLOCK + 5), |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)
        });
        assert!(is_cancelled(&got.unwrap_err()));
        assert_eq!(digest, None);
    }

    #[test]
    fn a_consumer_that_stops_early_does_not_hang() {
        let src = data(20 * BLOCK);
        let (got, digest) = with_read_ahead(src.as_slice(), |r| {
            let mut b = [0u8; 10];
            r.read(&mut b)
        });
        assert_eq!(got.unwrap(), 10);
        assert_eq!(digest, None);
    }
}
