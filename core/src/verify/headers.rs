//! The tar stream a [`TarSplit`] describes with the content left out: its raw bytes (headers,
//! extension records, padding, end-of-archive blocks) can be read, file content can only be
//! seeked over. Scanning it checks every header of a layer without reading a byte of content.

use std::io::{self, Read, Seek, SeekFrom};

use chunksnap_format::pb::TarSplit;

/// One raw run of the split followed by one content run, at its place in the tar stream.
struct Segment {
    /// Where the raw run starts in the tar stream, and in `split.raw`.
    at: u64,
    raw: usize,
    raw_len: usize,
    content_len: u64,
}

/// A reader of the tar stream's raw bytes that seeks over its content.
pub(super) struct Headers<'a> {
    split: &'a TarSplit,
    /// The raw runs with their content, the trailer last (no content).
    segments: Vec<Segment>,
    /// Current segment and position in the tar stream.
    current: usize,
    pos: u64,
}

fn bad_split() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "bad tar-split")
}

impl<'a> Headers<'a> {
    /// Fails on a split whose lengths do not fit its raw bytes (see `tarsplit::validate`).
    pub(super) fn new(split: &'a TarSplit) -> io::Result<Self> {
        if split.raw_len.len() != split.content_len.len() {
            return Err(bad_split());
        }
        let mut segments = Vec::with_capacity(split.raw_len.len() + 1);
        let (mut at, mut raw) = (0u64, 0usize);
        let runs = split.raw_len.iter().zip(&split.content_len);
        for (raw_len, content_len) in runs.map(|(r, c)| (Some(*r), *c)).chain([(None, 0)]) {
            let raw_len = match raw_len {
                Some(n) => usize::try_from(n).map_err(|_| bad_split())?,
                None => split.raw.len().checked_sub(raw).ok_or_else(bad_split)?,
            };
            let end = raw.checked_add(raw_len).filter(|e| *e <= split.raw.len());
            end.ok_or_else(bad_split)?;
            segments.push(Segment {
                at,
                raw,
                raw_len,
                content_len,
            });
            at = (raw_len as u64)
                .checked_add(content_len)
                .and_then(|n| at.checked_add(n))
                .ok_or_else(bad_split)?;
            raw += raw_len;
        }
        Ok(Self {
            split,
            segments,
            current: 0,
            pos: 0,
        })
    }
}

impl Read for Headers<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(s) = self.segments.get(self.current) else {
                return Ok(0);
            };
            let into = self.pos - s.at;
            if into < s.raw_len as u64 {
                let from = s.raw + into as usize;
                let n = (s.raw_len - into as usize).min(buf.len());
                buf[..n].copy_from_slice(&self.split.raw[from..from + n]);
                self.pos += n as u64;
                return Ok(n);
            }
            if into < s.raw_len as u64 + s.content_len {
                // A tar reader that reads file content here is not reading the headers the
                // split says it holds.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the tar-split places file content where a header is read",
                ));
            }
            if self.current + 1 == self.segments.len() {
                return Ok(0);
            }
            self.current += 1;
        }
    }
}

impl Seek for Headers<'_> {
    /// Forward only (a tar reader never goes back).
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(_) => None,
        };
        let target = target
            .filter(|t| *t >= self.pos)
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "seek backwards"))?;
        self.pos = target;
        while self
            .segments
            .get(self.current + 1)
            .is_some_and(|next| next.at <= self.pos)
        {
            self.current += 1;
        }
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_read_content_seeked_over() {
        let split = TarSplit {
            raw: b"AAbbbC".to_vec(),
            raw_len: vec![2, 3],
            content_len: vec![4, 0],
        };
        let mut h = Headers::new(&split).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(h.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"AA");
        // Content is not readable, only skipped.
        assert!(h.read(&mut buf).is_err());
        assert_eq!(h.seek(SeekFrom::Current(4)).unwrap(), 6);
        let mut rest = Vec::new();
        h.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bbbC");
        assert!(h.seek(SeekFrom::Start(0)).is_err());
    }

    #[test]
    fn inconsistent_splits_are_refused() {
        let split = TarSplit {
            raw: b"AA".to_vec(),
            raw_len: vec![3],
            content_len: vec![1],
        };
        assert!(Headers::new(&split).is_err());
    }
}
