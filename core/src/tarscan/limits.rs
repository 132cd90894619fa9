//! A bound on the tar extension records the `tar` crate reads whole into memory.
//!
//! `tar` buffers a GNU long name (`L`), long link name (`K`) or PAX extended header (`x`) whole
//! before the entry it describes, for whatever size its header declares; a gzip layer of a few
//! MiB can declare and deliver gigabytes of one. [`Limited`] passes the tar stream through
//! unchanged while following its headers exactly as `tar` does (the same next-header arithmetic,
//! including a PAX `size` override), and fails the read that would deliver a header announcing
//! a larger record than [`MAX_TAR_EXTENSION`], before `tar` allocates for it.

use std::io::{self, Read, Seek, SeekFrom};

use tar::{EntryType, Header, PaxExtensions};

/// Largest GNU long name, long link name or PAX extended header record set of one entry. Linux
/// paths stop at 4 KiB; xattrs (`SCHILY.xattr.*`) are the only large PAX records in images,
/// and ext4 caps a file's xattrs at one block.
pub const MAX_TAR_EXTENSION: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// A tar extension record above [`MAX_TAR_EXTENSION`].
#[derive(Debug, thiserror::Error)]
#[error(
    "tar entry at offset {offset}: {kind} of {size} bytes is above the {MAX_TAR_EXTENSION} byte limit"
)]
pub struct ExtensionTooLarge {
    /// Offset of the extension's header in the uncompressed tar.
    pub offset: u64,
    /// "GNU long name", "GNU long link name" or "PAX extended header".
    pub kind: &'static str,
    pub size: u64,
}

enum State {
    /// Collecting the header block that starts at this offset.
    Header(u64),
    /// Passing an entry's data and padding through, up to the next header's offset; a PAX
    /// extended header's data is also kept, to follow its `size` record as `tar` does.
    Body { end: u64, pax: Option<Vec<u8>> },
    /// Past the end of the archive, or an entry `tar` handles differently (GNU sparse, which
    /// the scan refuses anyway): nothing more to follow.
    Done,
}

/// See the module docs.
pub struct Limited<R> {
    inner: R,
    pos: u64,
    header: Vec<u8>,
    state: State,
    /// The `size` record of the last PAX extended header: overrides the next entry's size.
    pax_size: Option<u64>,
}

impl<R: Read> Limited<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            pos: 0,
            header: Vec::with_capacity(BLOCK as usize),
            state: State::Header(0),
            pax_size: None,
        }
    }

    /// Follows `bytes`, which start at offset `self.pos`.
    fn observe(&mut self, mut bytes: &[u8]) -> Result<(), ExtensionTooLarge> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Header(start) => {
                    let start = *start;
                    let take = (BLOCK as usize - self.header.len()).min(bytes.len());
                    self.header.extend_from_slice(&bytes[..take]);
                    (bytes, self.pos) = (&bytes[take..], self.pos + take as u64);
                    if self.header.len() == BLOCK as usize {
                        self.state = self.next_state(start)?;
                        self.header.clear();
                    }
                }
                State::Body { end, pax } => {
                    let take = usize::try_from(*end - self.pos)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    if let Some(pax) = pax {
                        pax.extend_from_slice(&bytes[..take]);
                    }
                    (bytes, self.pos) = (&bytes[take..], self.pos + take as u64);
                    if self.pos == *end {
                        if let Some(pax) = pax.take() {
                            self.pax_size = pax_size(&pax);
                        }
                        self.state = State::Header(self.pos);
                    }
                }
            }
        }
        Ok(())
    }

    /// What follows the complete header block that started at `start`.
    fn next_state(&mut self, start: u64) -> Result<State, ExtensionTooLarge> {
        // `tar` ends the archive at the first zero block.
        if self.header.iter().all(|b| *b == 0) {
            return Ok(State::Done);
        }
        let header = Header::from_byte_slice(&self.header);
        let Ok(declared) = header.entry_size() else {
            return Ok(State::Done);
        };
        let kind = header.entry_type();
        let extension = match kind {
            EntryType::GNULongName => Some("GNU long name"),
            EntryType::GNULongLink => Some("GNU long link name"),
            EntryType::XHeader => Some("PAX extended header"),
            _ => None,
        };
        if let Some(kind) = extension
            && declared > MAX_TAR_EXTENSION
        {
            return Err(ExtensionTooLarge {
                offset: start,
                kind,
                size: declared,
            });
        }
        let size = match kind {
            EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => declared,
            // A global header ends the pending extensions without using their size.
            EntryType::XGlobalHeader => {
                self.pax_size = None;
                declared
            }
            EntryType::GNUSparse => return Ok(State::Done),
            _ => self.pax_size.take().unwrap_or(declared),
        };
        let Some(end) = size
            .checked_add(BLOCK - 1)
            .and_then(|s| (start + BLOCK).checked_add(s & !(BLOCK - 1)))
        else {
            return Ok(State::Done);
        };
        let pax = (kind == EntryType::XHeader).then(Vec::new);
        if end == start + BLOCK && pax.is_none() {
            return Ok(State::Header(end));
        }
        Ok(State::Body { end, pax })
    }
}

/// The `size` record of PAX extended header data, read as `tar` reads it.
fn pax_size(data: &[u8]) -> Option<u64> {
    for record in PaxExtensions::new(data) {
        let record = record.ok()?;
        if record.key() == Ok("size") {
            return record.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }
}

/// Seeking forward over an entry's data (what `tar` does to skip content it was not asked to
/// read); anything else the seek would pass over is read, so it is observed as usual.
impl<R: Read + Seek> Seek for Limited<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let n = match to {
            SeekFrom::Current(n) => u64::try_from(n).ok(),
            _ => None,
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "only forward seeks"))?;
        match self.state {
            State::Body { end, pax: None } if self.pos.checked_add(n).is_some_and(|p| p <= end) => {
                self.inner.seek(SeekFrom::Current(n as i64))?;
                self.pos += n;
                if self.pos == end {
                    self.state = State::Header(end);
                }
            }
            _ => {
                io::copy(&mut Read::by_ref(self).take(n), &mut io::sink())?;
            }
        }
        self.inner.stream_position()
    }
}

/// The [`ExtensionTooLarge`] inside an error from [`Limited`] (as `tar` passed it on, possibly
/// wrapped), if that is what it is.
pub fn extension_error(e: &io::Error) -> Option<&ExtensionTooLarge> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|c| c as _);
    while let Some(c) = cause {
        if let Some(found) = c.downcast_ref::<ExtensionTooLarge>() {
            return Some(found);
        }
        cause = c
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref().map(|c| c as _))
            .or_else(|| c.source());
    }
    None
}
