//! Recording a layer's tar-split data (`format::tarsplit`) while scanning it: every byte the tar
//! reader consumes is kept, except regular file contents, which go to the content stream. The
//! tar is read to EOF, so bytes after the end-of-archive blocks are kept too.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom, Write};

use chunksnap_format::pb::TarSplit;

use super::{TarError, TarScan, scan_tar_headers_with, scan_tar_with};
use chunksnap_format::tarsplit::MAX_TAR_SPLIT_RAW;

/// Where the recorded split goes: kept, or compared as it comes with a split already in hand
/// (a node checking an index's split holds no second copy of it).
enum Sink<'e> {
    Keep(TarSplit),
    Compare {
        expected: &'e TarSplit,
        /// Content cuts matched so far.
        cuts: usize,
    },
}

/// What the recorder has seen so far.
struct State<'e> {
    /// Tar stream position (bytes read from the inner reader).
    pos: u64,
    /// Content bytes still to pass through unrecorded.
    skip: u64,
    sink: Sink<'e>,
    /// Raw (non-content) bytes recorded so far.
    raw: usize,
    /// `raw` at the last content cut.
    cut: usize,
    /// The stream could not be recorded faithfully (exceeded [`MAX_TAR_SPLIT_RAW`], or
    /// differs from the split it is compared with).
    broken: bool,
}

impl<'e> State<'e> {
    fn new(sink: Sink<'e>) -> Self {
        Self {
            pos: 0,
            skip: 0,
            sink,
            raw: 0,
            cut: 0,
            broken: false,
        }
    }

    fn content(&mut self, position: u64, size: u64) {
        if size == 0 || self.broken {
            return;
        }
        if position != self.pos || self.skip != 0 {
            self.fail();
            return;
        }
        let raw_len = (self.raw - self.cut) as u64;
        match &mut self.sink {
            Sink::Keep(split) => {
                split.raw_len.push(raw_len);
                split.content_len.push(size);
            }
            Sink::Compare { expected, cuts } => {
                let i = *cuts;
                *cuts += 1;
                if expected.raw_len.get(i) != Some(&raw_len)
                    || expected.content_len.get(i) != Some(&size)
                {
                    self.fail();
                    return;
                }
            }
        }
        self.cut = self.raw;
        self.skip = size;
    }

    fn record(&mut self, bytes: &[u8]) {
        if self.broken || bytes.is_empty() {
            return;
        }
        let end = self.raw + bytes.len();
        if end > MAX_TAR_SPLIT_RAW {
            self.fail();
            return;
        }
        let same = match &mut self.sink {
            Sink::Keep(split) => {
                split.raw.extend_from_slice(bytes);
                true
            }
            Sink::Compare { expected, .. } => expected.raw.get(self.raw..end) == Some(bytes),
        };
        self.raw = end;
        if !same {
            self.fail();
        }
    }

    fn fail(&mut self) {
        self.broken = true;
        if let Sink::Keep(split) = &mut self.sink {
            *split = TarSplit::default();
        }
    }
}

struct Recorder<'s, 'e, R> {
    inner: R,
    state: &'s RefCell<State<'e>>,
}

impl<R: Read> Read for Recorder<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.state.borrow_mut();
        st.pos += n as u64;
        let skipped = usize::try_from(st.skip).unwrap_or(usize::MAX).min(n);
        st.skip -= skipped as u64;
        st.record(&buf[skipped..n]);
        Ok(n)
    }
}

/// Seeking forward: content still to come is seeked over in the inner reader, anything past it
/// is read (and so recorded).
impl<R: Read + Seek> Seek for Recorder<'_, '_, R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let n = match to {
            SeekFrom::Current(n) => u64::try_from(n).ok(),
            _ => None,
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "only forward seeks"))?;
        let content = {
            let mut st = self.state.borrow_mut();
            let c = st.skip.min(n);
            st.skip -= c;
            st.pos += c;
            c
        };
        if content > 0 {
            self.inner.seek(SeekFrom::Current(content as i64))?;
        }
        io::copy(&mut Read::by_ref(self).take(n - content), &mut io::sink())?;
        Ok(self.state.borrow().pos)
    }
}

/// [`super::scan_tar`] that also records the tar-split data, reading `reader` to EOF. The split
/// is `None` when the layer cannot be recorded (more than [`MAX_TAR_SPLIT_RAW`] bytes of
/// non-content, or a reader that did not consume the stream in order): such a layer cannot be
/// verified by nodes.
pub fn scan_tar_split(
    reader: impl Read,
    content: &mut impl Write,
) -> Result<(TarScan, Option<TarSplit>), TarError> {
    let state = RefCell::new(State::new(Sink::Keep(TarSplit::default())));
    let mut rec = Recorder {
        inner: reader,
        state: &state,
    };
    let scan = scan_tar_with(&mut rec, content, &mut |pos, size| {
        state.borrow_mut().content(pos, size)
    })?;
    match finish(rec, &state, scan)? {
        (scan, true, Sink::Keep(split)) => Ok((scan, Some(split))),
        (scan, _, _) => Ok((scan, None)),
    }
}

/// [`scan_tar_split`] of a reader that can seek over file content (such as a tar-split's own
/// raw bytes): headers are scanned and the split recorded without reading any content, and
/// the entries have no content digests.
pub fn scan_tar_split_headers(
    reader: impl Read + Seek,
) -> Result<(TarScan, Option<TarSplit>), TarError> {
    match scan_headers(reader, Sink::Keep(TarSplit::default()))? {
        (scan, true, Sink::Keep(split)) => Ok((scan, Some(split))),
        (scan, _, _) => Ok((scan, None)),
    }
}

/// [`scan_tar_split_headers`] that compares the split with `expected` as it is recorded
/// instead of keeping it: the bool says whether they are the same.
pub fn scan_tar_split_headers_matching(
    reader: impl Read + Seek,
    expected: &TarSplit,
) -> Result<(TarScan, bool), TarError> {
    let (scan, ok, _) = scan_headers(reader, Sink::Compare { expected, cuts: 0 })?;
    Ok((scan, ok))
}

fn scan_headers<'e>(
    reader: impl Read + Seek,
    sink: Sink<'e>,
) -> Result<(TarScan, bool, Sink<'e>), TarError> {
    let state = RefCell::new(State::new(sink));
    let mut rec = Recorder {
        inner: reader,
        state: &state,
    };
    let scan = scan_tar_headers_with(&mut rec, &mut |pos, size| {
        state.borrow_mut().content(pos, size)
    })?;
    finish(rec, &state, scan)
}

/// Reads the rest of the stream; the bool says whether the split came out whole (and, when
/// compared, the same as the one expected).
fn finish<'e, R: Read>(
    mut rec: Recorder<'_, 'e, R>,
    state: &RefCell<State<'e>>,
    scan: TarScan,
) -> Result<(TarScan, bool, Sink<'e>), TarError> {
    io::copy(&mut rec, &mut io::sink()).map_err(TarError::Read)?;
    drop(rec);
    let st = state.replace(State::new(Sink::Keep(TarSplit::default())));
    let complete = match &st.sink {
        Sink::Keep(_) => true,
        Sink::Compare { expected, cuts } => {
            st.raw == expected.raw.len()
                && *cuts == expected.raw_len.len()
                && *cuts == expected.content_len.len()
        }
    };
    Ok((scan, !st.broken && st.skip == 0 && complete, st.sink))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use chunksnap_format::tarsplit::{Sequential, TarStream, validate};

    /// Scans `tar`, then rebuilds it from the split and the content stream.
    fn round_trip(tar: &[u8]) -> (TarScan, TarSplit) {
        let mut content = Vec::new();
        let (scan, split) = scan_tar_split(tar, &mut content).unwrap();
        let split = split.expect("recorded");
        validate(&split, scan.content_size).unwrap();
        let mut out = Vec::new();
        TarStream::new(&split, Sequential(content.as_slice()))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, tar, "rebuilt tar differs");
        (scan, split)
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h
    }

    #[test]
    fn rebuilds_every_kind_of_entry_bit_for_bit() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(tar::EntryType::Directory, 0, 0o755),
            "d/",
            &[][..],
        )
        .unwrap();
        b.append_data(
            &mut header(tar::EntryType::Regular, 5, 0o644),
            "d/a",
            &b"hello"[..],
        )
        .unwrap();
        b.append_data(
            &mut header(tar::EntryType::Regular, 0, 0o644),
            "d/empty",
            &[][..],
        )
        .unwrap();
        let long = format!("d/{}", "x".repeat(300));
        b.append_data(
            &mut header(tar::EntryType::Regular, 3, 0o600),
            &long,
            &b"abc"[..],
        )
        .unwrap();
        let mut h = header(tar::EntryType::Link, 0, 0o644);
        b.append_link(&mut h, "d/hl", "d/a").unwrap();
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, "d/sl", "y".repeat(200)).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
            .unwrap();
        b.append_data(
            &mut header(tar::EntryType::Regular, 2, 0o755),
            "d/x",
            &b"xy"[..],
        )
        .unwrap();
        // Replaced path: the first content stays in the stream and in the split.
        b.append_data(
            &mut header(tar::EntryType::Regular, 4, 0o644),
            "d/a",
            &b"new!"[..],
        )
        .unwrap();
        let mut tar = b.into_inner().unwrap();
        // Record padding past the end-of-archive blocks, and a byte of junk.
        tar.extend_from_slice(&[0; 8192]);
        tar.push(7);
        let (scan, split) = round_trip(&tar);
        assert_eq!(split.content_len, vec![5, 3, 2, 4]);
        assert_eq!(scan.content_size, 14);

        // Seeking over the content instead of reading it records the same split and entries.
        let (headers, again) = scan_tar_split_headers(std::io::Cursor::new(&tar)).unwrap();
        assert_eq!(again.as_ref(), Some(&split));
        // Compared as it is recorded: the same, and any difference is seen.
        let (_, same) =
            scan_tar_split_headers_matching(std::io::Cursor::new(&tar), &split).unwrap();
        assert!(same);
        for altered in [
            TarSplit {
                raw: [split.raw.as_slice(), &[0]].concat(),
                ..split.clone()
            },
            TarSplit {
                raw: split.raw[..split.raw.len() - 1].to_vec(),
                ..split.clone()
            },
            TarSplit {
                raw_len: split.raw_len[1..].to_vec(),
                ..split.clone()
            },
            TarSplit {
                content_len: [split.content_len.as_slice(), &[1]].concat(),
                ..split.clone()
            },
            TarSplit {
                content_len: vec![5, 3, 2, 5],
                ..split.clone()
            },
            {
                let mut raw = split.raw.clone();
                raw[100] ^= 1;
                TarSplit {
                    raw,
                    ..split.clone()
                }
            },
        ] {
            let (_, same) =
                scan_tar_split_headers_matching(std::io::Cursor::new(&tar), &altered).unwrap();
            assert!(!same);
        }
        let mut want = scan.entries;
        want.iter_mut().for_each(|e| e.content_digest.clear());
        assert_eq!(headers.entries, want);
        assert_eq!(headers.content_size, 14);
    }

    #[test]
    fn a_tar_without_files_is_all_raw() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(tar::EntryType::Directory, 0, 0o755),
            "d/",
            &[][..],
        )
        .unwrap();
        let tar = b.into_inner().unwrap();
        let (_, split) = round_trip(&tar);
        assert!(split.raw_len.is_empty());
        assert_eq!(split.raw, tar);
    }

    #[test]
    fn directory_named_like_a_file_keeps_its_data_raw() {
        // A regular entry whose name ends in '/' is a directory; its data is not content.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 3, 0o755);
        h.set_path("odd/").unwrap();
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let (scan, split) = round_trip(&tar);
        assert_eq!(scan.content_size, 0);
        assert!(split.content_len.is_empty());
    }
}
