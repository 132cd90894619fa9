//! Seeding: reusing identical files from layer directories already on the node.
//!
//! A rollout's v2 layer mostly holds the same files as v1's. When an earlier layer directory
//! (a committed snapshot, never modified again) has a regular file with the same content
//! digest and the same metadata, the assembler hardlinks that inode instead of writing the
//! bytes again, and its chunks need not be fetched or read at all (casync's seeds, but
//! sharing the inode, as composefs and nydus share page cache between images).
//!
//! [`Seeding::plan`] decides from the indexes alone; the assembler then checks each seed file
//! before linking it: opened beneath the seed directory without following symlinks, it must be
//! a regular file whose size, owner, mode and mtime match, and whose sha256 matches the index.
//! A seed that fails any check is reported and the file is written from chunks instead.
//!
//! Sharing an inode is invisible inside containers: overlayfs copies a lower file up before any
//! write, and the layer directories are read-only once committed. The link count of a seeded
//! file counts the other layers' links too.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chunksnap_format::pb::{Entry, EntryType, LayerIndex};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, SFlag};

use chunksnap_format::digest::Hasher;

/// An earlier layer's directory on this node and the index it was built from.
#[derive(Debug, Clone)]
pub struct Seed {
    pub index: Arc<LayerIndex>,
    pub dir: PathBuf,
}

/// Which files of a layer can be linked from which seeds.
#[derive(Debug, Default)]
pub struct Seeding {
    seeds: Vec<Seed>,
    /// Per entry of the layer: (seed, entry of the seed's index) to link from.
    sources: HashMap<usize, (usize, usize)>,
    bytes: u64,
}

/// What makes two files interchangeable: content and every attribute the assembler sets.
#[derive(PartialEq, Eq, Hash)]
struct FileKey<'a> {
    digest: &'a [u8],
    size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
    xattrs: Vec<(&'a str, &'a [u8])>,
}

impl<'a> FileKey<'a> {
    /// `None` for anything that is not a regular file with a known, non-empty content.
    fn of(e: &'a Entry) -> Option<Self> {
        if e.r#type != EntryType::File as i32 || e.content_digest.len() != 32 || e.size == 0 {
            return None;
        }
        let mut xattrs: Vec<_> = e
            .xattrs
            .iter()
            .map(|x| (x.name.as_str(), x.value.as_slice()))
            .collect();
        xattrs.sort_unstable();
        Some(Self {
            digest: &e.content_digest,
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: (e.mtime_sec, e.mtime_nsec),
            xattrs,
        })
    }
}

/// [`Seeding::plan_cancellable`] stopped because its cancel flag was set.
#[derive(Debug, thiserror::Error)]
#[error("seed planning cancelled")]
pub struct PlanCancelled;

/// Entries between two looks at the cancel flag.
const CANCEL_EVERY: usize = 4096;

/// The seed files with one key, in (seed, entry) order, and how far they are used up: every
/// candidate before `next` is used, so the search for an unused one never looks back (linear
/// over the whole plan, however many files share a key).
struct Candidates {
    list: Vec<(usize, usize)>,
    next: usize,
}

impl Seeding {
    /// Matches every regular file of `index` against `seeds`. A seed file is used at most once,
    /// so that files which are merely identical do not become hardlinks of each other; a seed
    /// file at the same path is preferred, then earlier seeds.
    pub fn plan(index: &LayerIndex, seeds: Vec<Seed>) -> Self {
        // Never cancelled: the flag is never set.
        Self::plan_cancellable(index, seeds, &AtomicBool::new(false)).unwrap_or_default()
    }

    /// [`Seeding::plan`] that stops with [`PlanCancelled`] soon after `cancel` is set (it looks
    /// every few thousand entries). Linear in the entries of `index` and of the seeds.
    pub fn plan_cancellable(
        index: &LayerIndex,
        seeds: Vec<Seed>,
        cancel: &AtomicBool,
    ) -> Result<Self, PlanCancelled> {
        let check = |n: usize| {
            if n.is_multiple_of(CANCEL_EVERY) && cancel.load(Ordering::Relaxed) {
                Err(PlanCancelled)
            } else {
                Ok(())
            }
        };
        let mut by_key: HashMap<FileKey<'_>, Candidates> = HashMap::new();
        // Seed files by path: paths are unique within an index, so at most one per seed.
        let mut by_path: HashMap<&[u8], Vec<(usize, usize)>> = HashMap::new();
        let mut n = 0;
        for (s, seed) in seeds.iter().enumerate() {
            for (i, e) in seed.index.entries.iter().enumerate() {
                n += 1;
                check(n)?;
                if let Some(k) = FileKey::of(e) {
                    by_key
                        .entry(k)
                        .or_insert_with(|| Candidates {
                            list: Vec::new(),
                            next: 0,
                        })
                        .list
                        .push((s, i));
                    by_path.entry(e.path.as_slice()).or_default().push((s, i));
                }
            }
        }
        let seed_entry = |(s, i): (usize, usize)| &seeds[s].index.entries[i];
        let mut used = HashSet::new();
        let mut sources = HashMap::new();
        let mut bytes = 0;
        // A hardlink entry applies its own owner, mode, xattrs and mtime to its target's inode
        // (as containerd does); a seeded inode is shared with another snapshot, so hardlink
        // targets are always written.
        let link_targets: HashSet<&[u8]> = index
            .entries
            .iter()
            .filter(|e| e.r#type == EntryType::Hardlink as i32)
            .map(|e| e.link_target.as_slice())
            .collect();
        // Same path first.
        for (i, e) in index.entries.iter().enumerate() {
            check(i)?;
            if link_targets.contains(e.path.as_slice()) {
                continue;
            }
            let Some(key) = FileKey::of(e) else { continue };
            let Some(at_path) = by_path.get(e.path.as_slice()) else {
                continue;
            };
            let pick = at_path.iter().copied().find(|c| {
                !used.contains(c) && FileKey::of(seed_entry(*c)).is_some_and(|k| k == key)
            });
            if let Some(c) = pick {
                used.insert(c);
                sources.insert(i, c);
                bytes += e.size;
            }
        }
        // Then the first unused file with the same key anywhere.
        for (i, e) in index.entries.iter().enumerate() {
            check(i)?;
            if sources.contains_key(&i) || link_targets.contains(e.path.as_slice()) {
                continue;
            }
            let Some(cands) = FileKey::of(e).and_then(|k| by_key.get_mut(&k)) else {
                continue;
            };
            while cands.list.get(cands.next).is_some_and(|c| used.contains(c)) {
                cands.next += 1;
            }
            if let Some(&c) = cands.list.get(cands.next) {
                cands.next += 1;
                used.insert(c);
                sources.insert(i, c);
                bytes += e.size;
            }
        }
        drop(by_key);
        drop(by_path);
        Ok(Self {
            seeds,
            sources,
            bytes,
        })
    }

    /// Files planned to be linked from seeds.
    pub fn files(&self) -> usize {
        self.sources.len()
    }

    /// Content bytes of those files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// For each chunk of `index`: whether a file not planned from a seed needs it. Only these
    /// chunks have to be fetched and read.
    pub fn needed_chunks(&self, index: &LayerIndex) -> Vec<bool> {
        let mut starts = Vec::with_capacity(index.chunks.len());
        let mut off = 0u64;
        for c in &index.chunks {
            starts.push(off);
            off += u64::from(c.size);
        }
        let mut needed = vec![false; index.chunks.len()];
        for (i, e) in index.entries.iter().enumerate() {
            if e.r#type != EntryType::File as i32 || e.size == 0 || self.sources.contains_key(&i) {
                continue;
            }
            let first = starts.partition_point(|&s| s <= e.offset).saturating_sub(1);
            let end = e.offset.saturating_add(e.size);
            for (n, start) in starts.iter().enumerate().skip(first) {
                if *start >= end {
                    break;
                }
                needed[n] = true;
            }
        }
        needed
    }

    /// The seed file planned for entry `i` of the layer, if any.
    pub(crate) fn source(&self, i: usize) -> Option<(usize, &Entry)> {
        let (s, e) = *self.sources.get(&i)?;
        Some((s, self.seeds.get(s)?.index.entries.get(e)?))
    }

    pub(crate) fn seed_dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.seeds.iter().map(|s| &s.dir)
    }
}

/// Why a planned seed file was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SeedReject {
    #[error("cannot open: {0}")]
    Open(Errno),
    #[error("not a regular file with the indexed size, owner, mode, mtime and xattrs")]
    Changed,
    #[error("content differs from its index")]
    Content,
    #[error("read: {0}")]
    Read(std::io::Error),
}

/// Read size for hashing a seed file.
const SEED_READ: usize = 256 << 10;

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Opens seed file `rel` beneath `root` and checks it against `want`; the returned fd is ready
/// for `linkat(AT_EMPTY_PATH)`, so what was checked is exactly what gets linked. Also returns
/// its `(st_dev, st_ino)`.
pub(crate) fn open_checked(
    root: BorrowedFd<'_>,
    rel: &[u8],
    want: &Entry,
) -> Result<(OwnedFd, (u64, u64)), SeedReject> {
    // O_NOATIME: linking a seed changes its ctime, so under `relatime` every read of it would
    // otherwise also write its atime (an inode update in the journal per seeded file).
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open = |flags: OFlag| {
        let how = OpenHow::new().flags(flags).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        loop {
            match openat2(root, std::ffi::OsStr::from_bytes(rel), how) {
                Err(Errno::EAGAIN) => continue,
                r => return r,
            }
        }
    };
    let fd = match open(flags | OFlag::O_NOATIME) {
        // Only the file's owner (or CAP_FOWNER) may ask for O_NOATIME.
        Err(Errno::EPERM) => open(flags),
        r => r,
    }
    .map_err(SeedReject::Open)?;
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(SeedReject::Open)?;
    if !same_attrs(&st, want) || !same_xattrs(fd.as_fd(), want) {
        return Err(SeedReject::Changed);
    }
    let mut file = File::from(fd);
    let digest = READ_BUF.with_borrow_mut(|buf| {
        // Zeroed once per thread: a fresh 256 KiB buffer per seed cost a memset each, and a
        // layer links thousands of seeds.
        if buf.is_empty() {
            buf.resize(SEED_READ, 0);
        }
        let mut hasher = Hasher::new();
        let mut left = want.size;
        loop {
            // Asking for one byte more than is left ends a small file in one read: getting
            // exactly what is left is its end (a regular file returns short only at its end),
            // and getting more means it grew since the fstat.
            let ask =
                usize::try_from(left.saturating_add(1)).map_or(buf.len(), |n| n.min(buf.len()));
            match file.read(&mut buf[..ask]) {
                Ok(0) => return Ok(hasher.finish()),
                Ok(n) if n as u64 > left => return Err(SeedReject::Changed),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    left -= n as u64;
                    if left == 0 && n < ask {
                        return Ok(hasher.finish());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SeedReject::Read(e)),
            }
        }
    })?;
    if digest.as_bytes().as_slice() != want.content_digest.as_slice() {
        return Err(SeedReject::Content);
    }
    Ok((OwnedFd::from(file), (st.st_dev, st.st_ino)))
}

/// Whether the file's xattrs are exactly the entry's (an unreadable list counts as different).
fn same_xattrs(fd: BorrowedFd<'_>, want: &Entry) -> bool {
    let Ok(mut have) = super::fsops::list_xattrs(fd) else {
        return false;
    };
    let mut want: Vec<_> = want
        .xattrs
        .iter()
        .map(|x| (x.name.as_bytes().to_vec(), x.value.clone()))
        .collect();
    have.sort_unstable();
    want.sort_unstable();
    have == want
}

fn same_attrs(st: &FileStat, want: &Entry) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
        && st.st_size as u64 == want.size
        && u64::from(st.st_uid) == want.uid
        && u64::from(st.st_gid) == want.gid
        && st.st_mode & 0o7777 == want.mode
        && st.st_mtime == want.mtime_sec
        && st.st_mtime_nsec == i64::from(want.mtime_nsec)
}
