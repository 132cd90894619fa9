//! sha256 digests of chunks and blobs: [`Digest`] (parse/display as `sha256:<hex>`) and
//! [`Sha256Writer`], which hashes whatever is written through it.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Errors from parsing a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Not of the form `sha256:<64 lowercase hex>`.
    #[error("invalid sha256 digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    Invalid(String),
    /// A raw digest that is not 32 bytes long.
    #[error("invalid raw sha256 digest: {0} bytes, expected 32")]
    BadLength(usize),
}

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The sha256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parses `sha256:<64 lowercase hex>` (the OCI form; upper-case hex is rejected as OCI does).
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let invalid = || DigestError::Invalid(s.to_owned());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(invalid)?;
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| invalid())?;
        Ok(Self(out))
    }

    /// A digest from its 32 raw bytes (as stored in the layer index).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DigestError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| DigestError::BadLength(bytes.len()))
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex())
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Incremental sha256, usable as an [`io::Write`] sink on its own.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes writes through to `inner` while hashing and counting the bytes actually written.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> Sha256Writer<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
            written: 0,
        }
    }
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
    /// The inner writer, the digest and the byte count of everything written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.written)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Hash only what the inner writer accepted, so partial writes stay consistent.
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes reads through from `inner` while hashing and counting the bytes read.
pub struct Sha256Reader<R> {
    inner: R,
    hasher: Hasher,
    read: u64,
}

impl<R: io::Read> Sha256Reader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
            read: 0,
        }
    }
    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
    /// The inner reader, the digest and the byte count of everything read.
    pub fn finish(self) -> (R, Digest, u64) {
        (self.inner, self.hasher.finish(), self.read)
    }
}

impl<R: io::Read> io::Read for Sha256Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn of_empty_matches_known_value() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
    }

    #[test]
    fn parse_display_round_trip() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
        assert_eq!(Digest::from_slice(d.as_bytes()).unwrap(), d);
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "sha256:",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::from_slice(&[0; 31]),
            Err(DigestError::BadLength(31))
        );
    }

    #[test]
    fn writer_and_reader_hash_passthrough() {
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (inner, d, n) = w.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(d, Digest::of(b"hello world"));
        assert_eq!(n, 11);

        let mut r = Sha256Reader::new(&b"hello world"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let (_, d2, n2) = r.finish();
        assert_eq!((d2, n2), (d, 11));
    }
}
