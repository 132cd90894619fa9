//! Reading the content stream chunk by chunk and writing file contents with holes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use chunksnap_format::pb::Chunk;

use super::{AssembleError, ChunkReader};
use chunksnap_format::digest::Digest;

/// Block size for hole detection: aligned all-zero blocks of this size are not written.
pub const HOLE_BLOCK: usize = 4096;

/// A chunk read ahead by [`prefetch`]: its position in the stream and its bytes.
pub(crate) type Prefetched = (usize, Result<Vec<u8>, crate::store::StoreError>);

/// Chunks read (decompressed + verified) ahead of the writer, in stream order.
const READ_AHEAD: usize = 16;

/// Reads every chunk of the stream (only those `needed`, when given), in order, into `tx` until
/// the receiver goes away. Run on a second thread, it overlaps decompression and sha256 checks
/// with the writer's file I/O.
pub(crate) fn prefetch(
    chunks: &[Chunk],
    needed: Option<&[bool]>,
    reader: &dyn ChunkReader,
    tx: SyncSender<Prefetched>,
) {
    for (i, c) in chunks.iter().enumerate() {
        if needed.is_some_and(|n| !n.get(i).copied().unwrap_or(true)) {
            continue;
        }
        let Ok(digest) = Digest::from_slice(&c.digest) else {
            // The writer reports the bad digest when it reaches this chunk.
            return;
        };
        if tx.send((i, reader.read_chunk(&digest, c.size))).is_err() {
            return;
        }
    }
}

/// Creates the channel [`prefetch`] fills and [`Stream::with_prefetch`] drains.
pub(crate) fn prefetch_channel() -> (SyncSender<Prefetched>, Receiver<Prefetched>) {
    sync_channel(READ_AHEAD)
}

/// A sequential cursor over the content stream, keeping the current chunk in memory.
pub(crate) struct Stream<'a> {
    chunks: &'a [Chunk],
    reader: &'a dyn ChunkReader,
    /// Stream offset at which each chunk starts.
    starts: Vec<u64>,
    current: Option<(usize, Vec<u8>)>,
    /// Chunks from the read-ahead thread, while the writer consumes them in order.
    ahead: Option<Receiver<Prefetched>>,
    /// A read-ahead chunk beyond the one the writer asked for last (kept for later).
    pending: Option<Prefetched>,
}

impl<'a> Stream<'a> {
    pub(crate) fn new(chunks: &'a [Chunk], reader: &'a dyn ChunkReader) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut off = 0u64;
        for c in chunks {
            starts.push(off);
            off += u64::from(c.size);
        }
        Self {
            chunks,
            reader,
            starts,
            current: None,
            ahead: None,
            pending: None,
        }
    }

    /// Takes chunks from a [`prefetch`] thread when they come in order; reads directly
    /// otherwise.
    pub(crate) fn with_prefetch(mut self, ahead: Receiver<Prefetched>) -> Self {
        self.ahead = Some(ahead);
        self
    }

    /// Chunk `i` from the read-ahead thread, if it is still ahead of us.
    fn take_prefetched(&mut self, i: usize) -> Option<Result<Vec<u8>, crate::store::StoreError>> {
        loop {
            let next = match self.pending.take() {
                Some(p) => p,
                None => match self.ahead.as_ref()?.recv() {
                    Ok(p) => p,
                    // The thread ended: read directly from now on.
                    Err(_) => {
                        self.ahead = None;
                        return None;
                    }
                },
            };
            match next {
                (j, data) if j == i => return Some(data),
                (j, _) if j < i => continue,
                // A chunk the read-ahead skipped (seeded files') or the writer went back:
                // read `i` directly and keep the read-ahead one for later.
                later => {
                    self.pending = Some(later);
                    return None;
                }
            }
        }
    }

    fn chunk(&mut self, i: usize) -> Result<&[u8], AssembleError> {
        if self.current.as_ref().map(|(j, _)| *j) != Some(i) {
            let c = &self.chunks[i];
            let digest = Digest::from_slice(&c.digest).map_err(|_| AssembleError::BadIndex {
                reason: format!("chunk {i}: bad digest length"),
            })?;
            let size = c.size;
            let data = match self.take_prefetched(i) {
                Some(data) => data,
                None => self.reader.read_chunk(&digest, size),
            }
            .map_err(|source| AssembleError::Chunk { index: i, source })?;
            self.current = Some((i, data));
        }
        Ok(self
            .current
            .as_ref()
            .map(|(_, d)| d.as_slice())
            .unwrap_or(&[]))
    }

    /// Feeds the stream bytes `[offset, offset + len)` to `sink`, in order.
    pub(crate) fn read(
        &mut self,
        offset: u64,
        len: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), AssembleError>,
    ) -> Result<(), AssembleError> {
        // Validated indexes cannot overflow here; an unvalidated one must not panic.
        let end = offset
            .checked_add(len)
            .ok_or_else(|| AssembleError::BadIndex {
                reason: format!("content range {offset}+{len} overflows"),
            })?;
        let mut pos = offset;
        while pos < end {
            // The chunk containing `pos`: the last one starting at or before it.
            let i = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
            let beyond = || AssembleError::BadIndex {
                reason: format!("content offset {pos} beyond the chunks"),
            };
            let start = *self.starts.get(i).ok_or_else(beyond)?;
            let data = self.chunk(i)?;
            let from = (pos - start) as usize;
            if from >= data.len() {
                return Err(beyond());
            }
            let take = ((end - pos) as usize).min(data.len() - from);
            let piece = &data[from..from + take];
            sink(piece)?;
            pos += take as u64;
        }
        Ok(())
    }
}

/// Bytes buffered before whole blocks are written out.
const FLUSH_AT: usize = 1 << 20;

/// Writes a file's contents sequentially, leaving aligned all-zero blocks as holes. Input is
/// buffered so blocks are judged whole whatever the chunk boundaries. The file must be empty.
pub(crate) struct SparseWriter<'f> {
    file: &'f File,
    /// File offset of `buf[0]`; always a multiple of `HOLE_BLOCK`.
    pos: u64,
    buf: Vec<u8>,
    /// Bytes skipped as holes.
    hole_bytes: u64,
    /// The file's length so far (the end of the last write).
    len: u64,
}

impl<'f> SparseWriter<'f> {
    pub(crate) fn new(file: &'f File) -> Self {
        Self {
            file,
            pos: 0,
            buf: Vec::new(),
            hole_bytes: 0,
            len: 0,
        }
    }

    fn write_at(&mut self, from: usize, to: usize) -> std::io::Result<()> {
        let at = self.pos + from as u64;
        self.file.write_all_at(&self.buf[from..to], at)?;
        self.len = at + (to - from) as u64;
        Ok(())
    }

    /// Buffers `data`; returns whether whole blocks were written out (or left as holes).
    pub(crate) fn write(&mut self, data: &[u8]) -> std::io::Result<bool> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FLUSH_AT {
            self.flush(false)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Bytes from the start of the file that are final: written, or holes (a hole beyond the
    /// file's current end reads as its end until a later write or [`Self::finish`] extends it).
    pub(crate) fn final_bytes(&self) -> u64 {
        self.pos
    }

    /// Writes buffered whole blocks (and with `last`, the trailing partial block).
    fn flush(&mut self, last: bool) -> std::io::Result<()> {
        let whole = self.buf.len() / HOLE_BLOCK * HOLE_BLOCK;
        let upto = if last { self.buf.len() } else { whole };
        let mut run_start: Option<usize> = None;
        let mut at = 0;
        while at < upto {
            let end = (at + HOLE_BLOCK).min(upto);
            let zero = is_zero(&self.buf[at..end]);
            match (zero, run_start) {
                (true, Some(s)) => {
                    self.write_at(s, at)?;
                    run_start = None;
                }
                (false, None) => run_start = Some(at),
                _ => {}
            }
            if zero {
                self.hole_bytes += (end - at) as u64;
            }
            at = end;
        }
        if let Some(s) = run_start {
            self.write_at(s, upto)?;
        }
        self.buf.drain(..upto);
        self.pos += upto as u64;
        Ok(())
    }

    /// Writes what is left and sets the final length (a trailing hole extends the file).
    /// Returns the bytes left as holes.
    pub(crate) fn finish(mut self) -> std::io::Result<u64> {
        self.flush(true)?;
        // Only a trailing hole needs the length set (a truncate is a journaled inode update).
        if self.len != self.pos {
            self.file.set_len(self.pos)?;
        }
        Ok(self.hole_bytes)
    }
}

fn is_zero(block: &[u8]) -> bool {
    // Word-sized compares; much faster than a byte loop with an early exit.
    let mut words = block.chunks_exact(16);
    words.all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}
