//! The index's tar-split data ([`TarSplit`]): every byte of the layer tar that is not regular
//! file content (headers, extension records, padding, end-of-archive blocks), so that the exact
//! uncompressed tar stream, and so its sha256 (the layer's diffID), is a function of the index
//! and the content stream. This is what lets a node prove a layer it assembled is the image's
//! own (see `crate::verify`) and `chunkconv extract --tar` rebuild the original tar.
//!
//! [`TarStream`] replays it: raw bytes from the index, content from a [`ContentSource`].

use std::io::{self, Read};

use crate::pb::TarSplit;

/// Largest `raw` the converter records (headers are ~1 KiB per entry with padding; a layer with
/// more is left unverifiable rather than making an index nodes would refuse).
pub const MAX_TAR_SPLIT_RAW: usize = 128 << 20;

/// Why tar-split data is inconsistent with its index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarSplitError {
    #[error("tar-split has {raw} raw lengths but {content} content lengths")]
    Lengths { raw: usize, content: usize },
    #[error("tar-split raw bytes: lengths sum past the {len} bytes stored, or above the maximum")]
    Raw { len: usize },
    #[error("tar-split content lengths sum to {sum:?}, but the content stream is {content_size}")]
    Content { sum: Option<u64>, content_size: u64 },
}

/// Checks that `split` describes exactly `content_size` bytes of content and stays within its
/// raw bytes.
pub fn validate(split: &TarSplit, content_size: u64) -> Result<(), TarSplitError> {
    if split.raw_len.len() != split.content_len.len() {
        return Err(TarSplitError::Lengths {
            raw: split.raw_len.len(),
            content: split.content_len.len(),
        });
    }
    let raw_sum = split
        .raw_len
        .iter()
        .try_fold(0u64, |acc, n| acc.checked_add(*n));
    if split.raw.len() > MAX_TAR_SPLIT_RAW || raw_sum.is_none_or(|s| s > split.raw.len() as u64) {
        return Err(TarSplitError::Raw {
            len: split.raw.len(),
        });
    }
    let sum = split
        .content_len
        .iter()
        .try_fold(0u64, |acc, n| acc.checked_add(*n));
    if sum != Some(content_size) {
        return Err(TarSplitError::Content { sum, content_size });
    }
    Ok(())
}

/// Gives content stream bytes to a [`TarStream`].
pub trait ContentSource: Read {
    /// The next `len` bytes read must be those of the content stream at `offset` (segments are
    /// asked for in stream order, each exactly once; `len` is never 0).
    fn begin(&mut self, offset: u64, len: u64) -> io::Result<()>;
}

/// The content stream itself as a source, read sequentially (e.g. the concatenated chunks).
pub struct Sequential<R>(pub R);

impl<R: Read> Read for Sequential<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> ContentSource for Sequential<R> {
    fn begin(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The tar stream a [`TarSplit`] describes, as a reader. Fails (`UnexpectedEof` /
/// `InvalidData`) if the source gives fewer bytes than a segment needs or the split is
/// inconsistent; run [`validate`] first.
pub struct TarStream<'a, S> {
    split: &'a TarSplit,
    source: S,
    phase: Phase,
    /// Current segment (`split.raw_len.len()` = the trailer).
    segment: usize,
    /// Position in `split.raw`, and the end of the raw bytes being emitted.
    raw_pos: usize,
    raw_end: usize,
    /// Content bytes still to read for the current segment.
    content_left: u64,
    /// Content stream offset of the next segment's content.
    offset: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Raw,
    Content,
    Done,
}

impl<'a, S: ContentSource> TarStream<'a, S> {
    /// A reader of the tar stream, with content from `source`.
    pub fn new(split: &'a TarSplit, source: S) -> Self {
        Self {
            split,
            source,
            phase: Phase::Start,
            segment: 0,
            raw_pos: 0,
            raw_end: 0,
            content_left: 0,
            offset: 0,
        }
    }

    /// The content source back.
    pub fn into_source(self) -> S {
        self.source
    }

    /// Starts emitting the raw bytes of the current segment.
    fn enter_raw(&mut self) -> io::Result<()> {
        let end = match self.split.raw_len.get(self.segment) {
            Some(n) => usize::try_from(*n)
                .ok()
                .and_then(|n| self.raw_pos.checked_add(n)),
            None => Some(self.split.raw.len()),
        };
        self.raw_end = end
            .filter(|e| *e <= self.split.raw.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad tar-split"))?;
        self.phase = Phase::Raw;
        Ok(())
    }
}

impl<S: ContentSource> Read for TarStream<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.phase {
                Phase::Start => self.enter_raw()?,
                Phase::Raw if self.raw_pos < self.raw_end => {
                    let n = (self.raw_end - self.raw_pos).min(buf.len());
                    buf[..n].copy_from_slice(&self.split.raw[self.raw_pos..self.raw_pos + n]);
                    self.raw_pos += n;
                    return Ok(n);
                }
                Phase::Raw if self.segment >= self.split.raw_len.len() => self.phase = Phase::Done,
                Phase::Raw => {
                    let len = self.split.content_len.get(self.segment).copied();
                    let len = len.ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "bad tar-split")
                    })?;
                    if len > 0 {
                        self.source.begin(self.offset, len)?;
                    }
                    self.content_left = len;
                    self.offset += len;
                    self.phase = Phase::Content;
                }
                Phase::Content if self.content_left > 0 => {
                    let want = usize::try_from(self.content_left)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let n = self.source.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    self.content_left -= n as u64;
                    return Ok(n);
                }
                Phase::Content => {
                    self.segment += 1;
                    self.enter_raw()?;
                }
                Phase::Done => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split() -> TarSplit {
        TarSplit {
            raw: b"AAbbbC".to_vec(),
            raw_len: vec![2, 3],
            content_len: vec![4, 0],
        }
    }

    #[test]
    fn replays_raw_and_content_in_order() {
        let s = split();
        validate(&s, 4).unwrap();
        let mut out = Vec::new();
        TarStream::new(&s, Sequential(&b"1234"[..]))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"AA1234bbbC");
    }

    #[test]
    fn short_content_is_an_error() {
        let s = split();
        let mut out = Vec::new();
        let err = TarStream::new(&s, Sequential(&b"12"[..]))
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn validate_refuses_inconsistent_splits() {
        let s = split();
        assert!(matches!(
            validate(&s, 5),
            Err(TarSplitError::Content { .. })
        ));
        let mut bad = split();
        bad.raw_len = vec![2, 9];
        assert!(matches!(validate(&bad, 4), Err(TarSplitError::Raw { .. })));
        bad.raw_len = vec![2];
        assert!(matches!(
            validate(&bad, 4),
            Err(TarSplitError::Lengths { .. })
        ));
        bad.raw_len = vec![u64::MAX, 1];
        assert!(matches!(validate(&bad, 4), Err(TarSplitError::Raw { .. })));
    }

    #[test]
    fn empty_split_is_just_the_trailer() {
        let s = TarSplit {
            raw: vec![0; 1024],
            ..TarSplit::default()
        };
        validate(&s, 0).unwrap();
        let mut out = Vec::new();
        TarStream::new(&s, Sequential(io::empty()))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, vec![0; 1024]);
    }
}
