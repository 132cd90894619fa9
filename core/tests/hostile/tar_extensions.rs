//! Tar extension records the `tar` crate would read whole (GNU long names and link names, PAX
//! extended headers): one declaring more than `MAX_TAR_EXTENSION` bytes is refused with the
//! offset of its header, having read little more than that header.

use std::cell::Cell;
use std::io::{self, Read};

use chunksnap_core::tarscan::{ExtensionTooLarge, MAX_TAR_EXTENSION, TarError, scan_tar};

const GIB: u64 = 1 << 30;

/// A header of `kind` declaring `size` bytes (no data).
fn header(kind: tar::EntryType, name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// `data` padded to whole blocks.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// Reads `prefix`, then endless zeros; counts what was read.
struct Hostile<'a> {
    inner: io::Chain<&'a [u8], io::Repeat>,
    read: &'a Cell<u64>,
}

impl Read for Hostile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Scans `prefix` followed by endless zeros; returns the error and the bytes read.
fn scan_hostile(prefix: &[u8]) -> (ExtensionTooLarge, u64) {
    let read = Cell::new(0);
    let r = scan_tar(
        Hostile {
            inner: prefix.chain(io::repeat(0)),
            read: &read,
        },
        &mut io::sink(),
    );
    match r {
        Err(TarError::ExtensionTooLarge(e)) => (e, read.get()),
        other => panic!("expected ExtensionTooLarge, got {other:?}"),
    }
}

#[test]
fn huge_long_names_and_pax_headers_are_refused_with_their_offset() {
    let file = [header(tar::EntryType::Regular, "a", 5), padded(b"hello")].concat();
    for (kind, what) in [
        (tar::EntryType::GNULongName, "GNU long name"),
        (tar::EntryType::GNULongLink, "GNU long link name"),
        (tar::EntryType::XHeader, "PAX extended header"),
    ] {
        let tar = [file.clone(), header(kind, "././@LongLink", 4 * GIB)].concat();
        let (e, read) = scan_hostile(&tar);
        assert_eq!((e.offset, e.kind, e.size), (1024, what, 4 * GIB));
        // The header was the last thing read: a reader fills at most one buffer past it.
        assert!(read < 1024 + 512 + (64 << 10), "{what}: read {read} bytes");
        assert!(e.to_string().contains("offset 1024"), "{e}");
    }
    // At the limit is fine (tar then reads it, here as zeros, and finds no entry after it).
    let tar = header(tar::EntryType::XHeader, "x", MAX_TAR_EXTENSION);
    let r = scan_tar(
        [tar, vec![0; MAX_TAR_EXTENSION as usize + 1024]]
            .concat()
            .as_slice(),
        &mut io::sink(),
    );
    assert!(!matches!(r, Err(TarError::ExtensionTooLarge(_))), "{r:?}");
}

#[test]
fn a_pax_size_record_is_followed_to_the_next_header() {
    // The file's header says 0 bytes, its PAX record 1030: tar reads 1030 (three blocks). A
    // follower that ignored the record would take the zeros for the end of the archive and
    // miss the long name after them.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("size", &b"1030"[..])]).unwrap();
    let mut tar = b.into_inner().unwrap();
    tar.truncate(tar.len() - 1024); // the builder's end-of-archive blocks
    let pax_end = tar.len() as u64;
    tar.extend(header(tar::EntryType::Regular, "f", 0));
    tar.extend(padded(&[0u8; 1030]));
    let long = tar.len() as u64;
    tar.extend(header(
        tar::EntryType::GNULongName,
        "././@LongLink",
        64 << 20,
    ));
    let (e, _) = scan_hostile(&tar);
    assert_eq!(e.offset, long);
    assert_eq!(long, pax_end + 512 + 1536);
}
