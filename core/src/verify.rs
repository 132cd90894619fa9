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
//! With a [`Progress`], the files are read as the assembler finishes them, so the stream is
//! hashed alongside the assembly rather than after it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use chunksnap_format::pb::{EntryType, LayerIndex, TarSplit};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

mod headers;

use crate::assemble::{Available, ChunkReader, Progress};
use crate::tarscan::TarError;
use crate::tarscan::split::scan_tar_split_headers;
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
    let (scan, rescan) = scan_tar_split_headers(headers).map_err(|e| match e {
        TarError::Read(_) | TarError::Write(_) => VerifyError::SplitMismatch,
        other => VerifyError::Tar(other),
    })?;
    if rescan.as_ref() != Some(split) {
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

/// Content from an assembled layer directory: each regular file of the index is read from its
/// path beneath the directory (no symlink followed), and must be exactly its indexed size; content
/// no entry holds (replaced entries) comes from the chunks. With a [`Progress`], each file is
/// read as far as the assembler has finished it, waiting for the rest.
pub struct AssembledContent<'a> {
    root: OwnedFd,
    /// By content offset: the entry and its path.
    files: HashMap<u64, (usize, &'a [u8])>,
    chunks: ChunkRange<'a>,
    current: Current<'a>,
    cancel: Option<&'a AtomicBool>,
    progress: Option<&'a Progress>,
    /// The directory of the last file opened, resolved beneath the root.
    dir: Option<(Vec<u8>, OwnedFd)>,
}

enum Current<'a> {
    None,
    File(FileRead<'a>),
    Chunks,
}

impl<'a> AssembledContent<'a> {
    /// Reads `dir` (assembled from `index`); `reader` gives chunks, `cancel` stops reading.
    pub fn new(
        index: &'a LayerIndex,
        dir: &Path,
        reader: &'a dyn ChunkReader,
        cancel: Option<&'a AtomicBool>,
    ) -> io::Result<Self> {
        let root = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let files = index
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.r#type == EntryType::File as i32 && e.size > 0)
            .map(|(i, e)| (e.offset, (i, e.path.as_slice())))
            .collect();
        Ok(Self {
            root,
            files,
            chunks: ChunkRange::new(index, reader),
            current: Current::None,
            cancel,
            progress: None,
            dir: None,
        })
    }

    /// Reads `dir` while it is being assembled: each file once `progress` says it is final.
    pub fn while_assembled(mut self, progress: &'a Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    fn cancelled(&self) -> io::Result<()> {
        match self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(io::ErrorKind::Interrupted.into()),
            _ => Ok(()),
        }
    }

    fn open(&mut self, entry: usize, path: &'a [u8], len: u64) -> io::Result<FileRead<'a>> {
        let available = match self.progress {
            Some(p) => p.wait_beyond(entry, 0).map_err(unfinished)?,
            None => Available::All,
        };
        let fd = self.open_beneath(path)?;
        let file = File::from(fd);
        let pending = match (available, self.progress) {
            (Available::Upto(n), Some(p)) => {
                check_file(&file, path, None)?;
                Some((p, entry, n))
            }
            _ => {
                check_file(&file, path, Some(len))?;
                None
            }
        };
        Ok(FileRead {
            file,
            path,
            pos: 0,
            len,
            pending,
            extent: Extent::Data(0),
        })
    }
}

impl AssembledContent<'_> {
    /// Opens the file at `path` beneath the root, following no symlink. Consecutive files
    /// mostly share a directory, which is resolved once for them (a deep path costs a lookup
    /// per component, and a layer can hold tens of thousands of small files).
    fn open_beneath(&mut self, path: &[u8]) -> io::Result<OwnedFd> {
        let beneath = ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        let file = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(beneath);
        let Some(slash) = path.iter().rposition(|b| *b == b'/') else {
            return openat2_retry(&self.root, path, file);
        };
        let (dir, name) = (&path[..slash], &path[slash + 1..]);
        if self.dir.as_ref().is_none_or(|(d, _)| d.as_slice() != dir) {
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(beneath);
            let fd = openat2_retry(&self.root, dir, how)?;
            self.dir = Some((dir.to_vec(), fd));
        }
        match &self.dir {
            Some((_, fd)) => openat2_retry(fd, name, file),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

fn openat2_retry(at: &OwnedFd, path: &[u8], how: OpenHow) -> io::Result<OwnedFd> {
    loop {
        match openat2(at, OsStr::from_bytes(path), how) {
            Err(Errno::EAGAIN) => continue,
            r => return Ok(r?),
        }
    }
}

/// The wait for the assembler ended without the file: read as a cancellation.
fn unfinished(_: crate::assemble::Unfinished) -> io::Error {
    io::ErrorKind::Interrupted.into()
}

/// Checks that `file` is a regular file (of `len` bytes, if given).
fn check_file(file: &File, path: &[u8], len: Option<u64>) -> io::Result<()> {
    let st = fstat(file)?;
    let regular = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
    if !regular || len.is_some_and(|len| st.st_size as u64 != len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{:?} is not a regular file of {} bytes",
                String::from_utf8_lossy(path),
                len.map_or_else(|| "some".into(), |l| l.to_string())
            ),
        ));
    }
    Ok(())
}

/// One file of the directory, read up to its indexed length.
struct FileRead<'a> {
    file: File,
    path: &'a [u8],
    pos: u64,
    len: u64,
    /// While the assembler is still writing it: where it reports, the entry, and how many
    /// bytes from the start are final.
    pending: Option<(&'a Progress, usize, u64)>,
    /// What the file holds from `pos` on, as far as is known.
    extent: Extent,
}

/// A run of a file: data up to an offset, or a hole (zeros) up to an offset.
#[derive(Debug, Clone, Copy)]
enum Extent {
    Data(u64),
    Hole(u64),
}

impl Extent {
    fn end(self) -> u64 {
        match self {
            Extent::Data(e) | Extent::Hole(e) => e,
        }
    }
}

/// Files from this size on are read hole-aware: reading a hole makes the kernel allocate and
/// clear page-cache pages (a sparse disk image read back at a few hundred MB/s), while its
/// zeros are known without reading.
const SPARSE_FROM: u64 = 1 << 20;

impl FileRead<'_> {
    /// The run of the file at `pos`, ending by `limit` (what is final of it).
    fn extent_at(&self, limit: u64) -> io::Result<Extent> {
        use nix::unistd::{Whence, lseek};
        let pos = self.pos;
        let at = i64::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = self.file.as_fd();
        let run = match lseek(fd, at, Whence::SeekData) {
            Ok(d) if d as u64 > pos => Extent::Hole(d as u64),
            Ok(_) => Extent::Data(lseek(fd, at, Whence::SeekHole)? as u64),
            // No data from `pos` on (up to the file's current end, and what is final past it
            // is a hole the writer left).
            Err(Errno::ENXIO) => Extent::Hole(limit),
            // The filesystem cannot tell: read it.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => Extent::Data(limit),
            Err(e) => return Err(e.into()),
        };
        // Past `limit` the writer may still change what is there.
        Ok(match run {
            Extent::Data(e) => Extent::Data(e.min(limit)),
            Extent::Hole(e) => Extent::Hole(e.min(limit)),
        })
    }
}

impl Read for FileRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos >= self.len || buf.is_empty() {
                return Ok(0);
            }
            let limit = match self.pending {
                None => self.len,
                Some((_, _, upto)) if self.pos < upto => upto.min(self.len),
                Some((p, entry, _)) => {
                    match p.wait_beyond(entry, self.pos).map_err(unfinished)? {
                        Available::All => {
                            self.pending = None;
                            check_file(&self.file, self.path, Some(self.len))?;
                        }
                        Available::Upto(n) => self.pending = Some((p, entry, n)),
                    }
                    continue;
                }
            };
            if self.pos >= self.extent.end() {
                self.extent = if self.len >= SPARSE_FROM {
                    self.extent_at(limit)?
                } else {
                    Extent::Data(limit)
                };
                if self.pos >= self.extent.end() {
                    // A run ending where it starts: the filesystem answered oddly; read.
                    self.extent = Extent::Data(limit);
                }
            }
            let end = self.extent.end().min(limit);
            let want = buf
                .len()
                .min(usize::try_from(end - self.pos).unwrap_or(usize::MAX));
            if let Extent::Hole(_) = self.extent {
                buf[..want].fill(0);
                self.pos += want as u64;
                return Ok(want);
            }
            let mut n = self.file.read_at(&mut buf[..want], self.pos)?;
            if n == 0 {
                if self.pending.is_none() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                // Beyond the file's end but within what is final: a hole the writer left,
                // which a later write or the final length turns into zeros.
                buf[..want].fill(0);
                n = want;
            }
            self.pos += n as u64;
            return Ok(n);
        }
    }
}

impl Read for AssembledContent<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.current {
            Current::None => Ok(0),
            Current::File(f) => f.read(buf),
            Current::Chunks => {
                self.cancelled()?;
                self.chunks.read(buf)
            }
        }
    }
}

impl ContentSource for AssembledContent<'_> {
    fn begin(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.cancelled()?;
        self.current = match self.files.get(&offset).copied() {
            Some((entry, path)) => Current::File(self.open(entry, path, len)?),
            None => {
                self.chunks.seek(offset, len)?;
                Current::Chunks
            }
        };
        Ok(())
    }
}

/// A range of the content stream read from the layer's chunks.
struct ChunkRange<'a> {
    index: &'a LayerIndex,
    reader: &'a dyn ChunkReader,
    /// Stream offset where each chunk starts.
    starts: Vec<u64>,
    /// Next chunk to read, the bytes of the current one from `pos`, and what is left to give.
    next: usize,
    data: Vec<u8>,
    pos: usize,
    left: u64,
}

impl<'a> ChunkRange<'a> {
    fn new(index: &'a LayerIndex, reader: &'a dyn ChunkReader) -> Self {
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

    fn seek(&mut self, offset: u64, len: u64) -> io::Result<()> {
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
