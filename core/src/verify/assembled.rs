//! Reading a layer's content back from its assembled directory (also while it is being
//! assembled), for the stream whose sha256 must be the layer's diffID.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use chunksnap_format::pb::{EntryType, LayerIndex};
use chunksnap_format::tarsplit::ContentSource;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

use super::chunk_range::ChunkRange;
use crate::assemble::{Available, ChunkReader, Progress};

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
                "{:?} is not a regular file{}",
                String::from_utf8_lossy(path),
                len.map_or_else(String::new, |l| format!(" of {l} bytes"))
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
