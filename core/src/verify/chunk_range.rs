//! A range of a layer's content stream, read from its chunks.

use std::io::{self, Read};

use chunksnap_format::digest::Digest;
use chunksnap_format::pb::LayerIndex;

use crate::assemble::ChunkReader;

/// A range of the content stream read from the layer's chunks.
pub(super) struct ChunkRange<'a> {
    index: &'a LayerIndex,
    reader: &'a dyn ChunkReader,
    /// Stream offset where each chunk starts.
    pub(super) starts: Vec<u64>,
    /// Next chunk to read, the bytes of the current one from `pos`, and what is left to give.
    next: usize,
    data: Vec<u8>,
    pos: usize,
    left: u64,
}

impl<'a> ChunkRange<'a> {
    pub(super) fn new(index: &'a LayerIndex, reader: &'a dyn ChunkReader) -> Self {
        let mut at = 0u64;
        let starts = index
            .chunks
            .iter()
            .map(|c| {
                let s = at;
                at += u64::from(c.size);
                s
            })
            .collect();
        Self {
            index,
            reader,
            starts,
            next: 0,
            data: Vec::new(),
            pos: 0,
            left: 0,
        }
    }

    pub(super) fn seek(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let i = self.starts.partition_point(|s| *s <= offset);
        let Some(chunk) = i.checked_sub(1) else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        self.load(chunk)?;
        self.pos = usize::try_from(offset - self.starts[chunk]).unwrap_or(usize::MAX);
        self.left = len;
        Ok(())
    }

    fn load(&mut self, i: usize) -> io::Result<()> {
        let c = self
            .index
            .chunks
            .get(i)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let digest = Digest::from_slice(&c.digest)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.data = self
            .reader
            .read_chunk(&digest, c.size)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.pos = 0;
        self.next = i + 1;
        Ok(())
    }
}

impl Read for ChunkRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.data.len() {
            self.load(self.next)?;
        }
        let n = (self.data.len() - self.pos)
            .min(buf.len())
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}
