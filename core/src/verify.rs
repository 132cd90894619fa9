//! Proof that an assembled layer is the image's own layer.
//!
//! The index is a referrer that nothing chains to the image manifest, so a node trusts none of
//! it until this check passes: the layer tar is rebuilt from the index's tar-split data and the
//! *assembled files* (what the container will see, seeded files included), its sha256 must be
//! the diffID containerd expects (via the chainID it commits the layer as, see [`check_chain`]),
//! and scanning that tar's headers exactly as the converter does must give back the index's
//! entries and tar-split data. So every entry's metadata (mode, owner, times, xattrs, links,
//! devices) is the layer's, and every file's content is, through the diffID. The index's
//! content digests are not part of the proof: they are hints for seeding, which hashes a seed
//! file before it links it. Content of entries the tar replaced (a path named twice) is not in
//! the directory; it is read from the layer's chunks (each verified by sha256).
//!
//! With a [`Progress`](crate::assemble::Progress), the files are read as the assembler finishes them, so the stream is
//! hashed alongside the assembly rather than after it.

use std::io::{self, Read, Write};

use chunksnap_format::pb::{LayerIndex, TarSplit};

mod assembled;
mod chunk_range;
mod headers;

pub use assembled::AssembledContent;

use crate::assemble::ChunkReader;
use crate::tarscan::TarError;
use crate::tarscan::split::scan_tar_split_headers_matching;
use chunk_range::ChunkRange;
use chunksnap_format::digest::{Digest, Sha256Reader, Sha256Writer};
use chunksnap_format::tarsplit::{ContentSource, Sequential, TarStream};
use headers::Headers;

/// Why a layer is not proven to be the one asked for.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the index has no tar-split data (format 1, or not recordable): cannot verify")]
    NoTarSplit,
    #[error("reading the layer back: {0}")]
    Read(#[source] io::Error),
    #[error("the rebuilt tar does not scan: {0}")]
    Tar(#[from] TarError),
    #[error("the index's tar-split data is not what the rebuilt tar gives")]
    SplitMismatch,
    #[error("entry {entry} ({path:?}) is not what the rebuilt tar says")]
    EntryMismatch { entry: usize, path: String },
    #[error("the index has {index} entries, the rebuilt tar {tar}")]
    EntryCount { index: usize, tar: usize },
    #[error(
        "the layer's diffID is {actual}, but containerd asked for a layer with chainID {target} (parent {parent:?})"
    )]
    ChainMismatch {
        actual: Digest,
        target: String,
        parent: String,
    },
    #[error("parent {0:?} is not a chainID")]
    BadParent(String),
    #[error("cancelled")]
    Cancelled,
}

/// The chainID of a layer with diffID `diff_id` on `parent` (`""`: the bottom layer), as in the
/// OCI image spec: `sha256(parent + " " + diff_id)`, or `diff_id` itself at the bottom.
pub fn chain_id(parent: &str, diff_id: &Digest) -> Result<String, VerifyError> {
    if parent.is_empty() {
        return Ok(diff_id.to_string());
    }
    Digest::parse(parent).map_err(|_| VerifyError::BadParent(parent.to_owned()))?;
    Ok(Digest::of(format!("{parent} {diff_id}").as_bytes()).to_string())
}

/// Checks that a layer with diffID `diff_id` on `parent` is the one containerd commits as
/// `target` (its extraction Prepare names the parent's chainID and labels the target chainID,
/// both derived from the image config that the manifest digest covers).
pub fn check_chain(parent: &str, target: &str, diff_id: &Digest) -> Result<(), VerifyError> {
    if chain_id(parent, diff_id)? == target {
        Ok(())
    } else {
        Err(VerifyError::ChainMismatch {
            actual: *diff_id,
            target: target.to_owned(),
            parent: parent.to_owned(),
        })
    }
}

/// Checks the index's entries against the headers of its tar-split data, then rebuilds the
/// layer tar from the split and `source` and returns its sha256 (the diffID) for the caller to
/// check.
pub fn verify_tar(index: &LayerIndex, source: impl ContentSource) -> Result<Digest, VerifyError> {
    let split = index.tar_split.as_ref().ok_or(VerifyError::NoTarSplit)?;
    check_headers(index, split)?;
    hash_tar(TarStream::new(split, source))
}

/// Scans the headers the tar-split holds as the converter scans a layer (content is seeked
/// over): the entries and the split must come back exactly as the index has them.
fn check_headers(index: &LayerIndex, split: &TarSplit) -> Result<(), VerifyError> {
    let headers = Headers::new(split).map_err(|_| VerifyError::SplitMismatch)?;
    let (scan, same) = scan_tar_split_headers_matching(headers, split).map_err(|e| match e {
        TarError::Read(_) | TarError::Write(_) => VerifyError::SplitMismatch,
        other => VerifyError::Tar(other),
    })?;
    if !same {
        return Err(VerifyError::SplitMismatch);
    }
    if scan.entries.len() != index.entries.len() {
        return Err(VerifyError::EntryCount {
            index: index.entries.len(),
            tar: scan.entries.len(),
        });
    }
    let mut scanned = scan.entries;
    let differs = |i: usize, e: &mut chunksnap_format::pb::Entry| {
        // Content digests are hints (see the module docs); the diffID covers the content.
        e.content_digest
            .clone_from(&index.entries[i].content_digest);
        *e != index.entries[i]
    };
    if let Some(entry) = (0..scanned.len()).find(|i| differs(*i, &mut scanned[*i])) {
        return Err(VerifyError::EntryMismatch {
            entry,
            path: String::from_utf8_lossy(&index.entries[entry].path).into_owned(),
        });
    }
    Ok(())
}

/// Bytes hashed at a time.
const BLOCK: usize = 1 << 20;

/// The sha256 of all of `tar`, read in large blocks.
fn hash_tar(mut tar: impl Read) -> Result<Digest, VerifyError> {
    let mut hasher = Sha256Writer::new(io::sink());
    let mut block = vec![0u8; BLOCK];
    loop {
        match tar.read(&mut block) {
            Ok(0) => return Ok(hasher.finish().1),
            Ok(n) => hasher.write_all(&block[..n]).map_err(VerifyError::Read)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(VerifyError::Cancelled),
            Err(e) => return Err(VerifyError::Read(e)),
        }
    }
}

/// Writes the layer's original uncompressed tar, rebuilt from the index's tar-split data and its
/// chunks, to `out`; returns its sha256 (the layer's diffID when the index is faithful).
pub fn write_tar(
    index: &LayerIndex,
    reader: &dyn ChunkReader,
    out: &mut impl io::Write,
) -> Result<Digest, VerifyError> {
    let split = index.tar_split.as_ref().ok_or(VerifyError::NoTarSplit)?;
    let mut content = ChunkRange::new(index, reader);
    let size = content.starts.last().copied().unwrap_or(0)
        + index.chunks.last().map_or(0, |c| u64::from(c.size));
    if size > 0 {
        content.seek(0, size).map_err(VerifyError::Read)?;
    }
    let mut tar = Sha256Reader::new(TarStream::new(split, Sequential(content)));
    io::copy(&mut tar, out).map_err(VerifyError::Read)?;
    Ok(tar.finish().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = Digest::of(b"layer");
        assert_eq!(chain_id("", &d).unwrap(), d.to_string());
        let parent = Digest::of(b"parent").to_string();
        let want = Digest::of(format!("{parent} {d}").as_bytes()).to_string();
        assert_eq!(chain_id(&parent, &d).unwrap(), want);
        check_chain(&parent, &want, &d).unwrap();
        assert!(matches!(
            check_chain("", &want, &d),
            Err(VerifyError::ChainMismatch { .. })
        ));
        assert!(matches!(
            check_chain("not-a-digest", &want, &d),
            Err(VerifyError::BadParent(_))
        ));
    }
}
