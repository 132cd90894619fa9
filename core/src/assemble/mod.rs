//! The layer assembler: writes a layer's filesystem from its index and a [`ChunkReader`].
//!
//! Entries are applied in index (= tar) order with containerd's semantics (`archive/tar.go`
//! `applyNaive` + `createTarFile`): an existing path is removed first unless both are
//! directories (then metadata is merged); ownership, then xattrs (so `security.capability`
//! survives the chown), then mode (after chown, which clears setuid/setgid), then mtime;
//! directory mtimes are set at the very end, since creating children changes them; missing
//! parents are created 0755. Regular file contents come from the content stream, read
//! sequentially; aligned all-zero 4 KiB blocks become holes.
//!
//! Whiteouts: [`WhiteoutMode::Overlay`] turns `.wh.NAME` into a 0/0 character device with the
//! whiteout entry's uid/gid (mode 0, mtime not set, exactly as containerd's
//! `OverlayConvertWhiteout`) and `.wh..wh..opq` into `trusted.overlay.opaque=y` on the directory.
//! [`WhiteoutMode::Apply`] deletes `NAME`, or empties the directory of everything this layer did
//! not create (containerd's default converter).
//!
//! Seeding ([`Seeding`]): a regular file identical to one in an earlier layer directory on the
//! node is hardlinked from there after checking it, and its chunks are never read.
//!
//! Safety: nothing is written outside `dest`. Paths with `..` or a leading `/` are rejected;
//! parents are opened with `openat2` relative to `dest` and every change is an `*at` call on
//! the parent fd. In Overlay mode any symlink in a parent position is an error
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). In Apply mode symlinks left by lower layers (e.g.
//! Debian merged-usr `bin -> usr/bin`) are followed but scoped to `dest` (`RESOLVE_IN_ROOT`),
//! as containerd's `fs.RootPath` does: `a -> /etc` then `a/passwd` writes `dest/etc/passwd`.

mod attrs;
mod content;
mod fsops;
mod recent;
mod seed;
mod writer;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chunksnap_format::pb::{EntryType, LayerIndex};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

pub use content::HOLE_BLOCK;
use fsops::{Resolve, escape_or_sys, sys};
pub use seed::{PlanCancelled, Seed, Seeding};

use crate::store::{ChunkStore, StoreError};
use chunksnap_format::digest::Digest;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";

/// Gives the uncompressed, verified bytes of a chunk.
pub trait ChunkReader: Sync {
    /// The bytes of the chunk with `digest` (`size` bytes long).
    fn read_chunk(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError>;
}

// Implemented here, not in `store`, so the dependency points one way: assemble -> store.
impl ChunkReader for ChunkStore {
    fn read_chunk(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        self.get(digest, size)
    }
}

/// How whiteout entries are materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Overlayfs whiteouts (char device 0/0, `trusted.overlay.opaque`), for snapshot layers.
    Overlay,
    /// Delete the whited-out paths, for applying layers in order into one directory.
    Apply,
}

/// Counts of what was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssembleStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Char/block devices and fifos.
    pub specials: u64,
    pub whiteouts: u64,
    /// File bytes written (not counting holes).
    pub bytes_written: u64,
    /// File bytes left as holes.
    pub hole_bytes: u64,
    /// Regular files hardlinked from a seed instead of written (not counted in `files`).
    pub seeded_files: u64,
    /// Their content bytes.
    pub seeded_bytes: u64,
    /// Planned seed files that failed their check and were written from chunks.
    pub seeds_rejected: u64,
}

impl AssembleStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &AssembleStats) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.hardlinks += other.hardlinks;
        self.specials += other.specials;
        self.whiteouts += other.whiteouts;
        self.bytes_written += other.bytes_written;
        self.hole_bytes += other.hole_bytes;
        self.seeded_files += other.seeded_files;
        self.seeded_bytes += other.seeded_bytes;
        self.seeds_rejected += other.seeds_rejected;
    }
}

/// Errors from assembling a layer.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A path that is absolute, contains `..` or is otherwise not a safe relative path.
    #[error("unsafe path {path:?}")]
    UnsafePath { path: String },
    /// Resolving a path would leave the destination or cross a symlink.
    #[error("path {path:?} escapes the destination or crosses a symlink")]
    Escape { path: String },
    /// A hardlink whose target does not exist.
    #[error("hardlink {path:?}: target {target:?} does not exist")]
    MissingHardlinkTarget { path: String, target: String },
    /// The index is inconsistent.
    #[error("bad index: {reason}")]
    BadIndex { reason: String },
    /// A chunk could not be read.
    #[error("chunk {index}: {source}")]
    Chunk { index: usize, source: StoreError },
    /// A system call failed.
    #[error("{op} {path:?}: {errno}")]
    Sys {
        op: &'static str,
        path: String,
        errno: Errno,
    },
    /// A writer thread panicked.
    #[error("a writer thread panicked")]
    WorkerPanicked,
    /// [`AssembleOptions::cancel`] was set: the output is incomplete.
    #[error("assembly cancelled")]
    Cancelled,
    /// Opening the destination or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A safe relative path split into components.
struct EntryPath<'a> {
    full: &'a [u8],
    parent: Vec<&'a [u8]>,
    name: &'a [u8],
}

/// Splits a path, dropping empty and `.` components; rejects `..` and absolute paths.
/// `None` means the root itself.
fn split_path(path: &[u8]) -> Result<Option<EntryPath<'_>>, AssembleError> {
    let unsafe_path = || AssembleError::UnsafePath {
        path: String::from_utf8_lossy(path).into_owned(),
    };
    if path.first() == Some(&b'/') || path.contains(&0) {
        return Err(unsafe_path());
    }
    let mut comps: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_path()),
            c => comps.push(c),
        }
    }
    let Some(name) = comps.pop() else {
        return Ok(None);
    };
    Ok(Some(EntryPath {
        full: path,
        parent: comps,
        name,
    }))
}

fn join(parent: &[&[u8]], name: &[u8]) -> Vec<u8> {
    let mut v = parent.join(&b'/');
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Options beyond the whiteout mode.
#[derive(Debug, Clone, Copy)]
pub struct AssembleOptions<'a> {
    /// How whiteouts are materialised.
    pub mode: WhiteoutMode,
    /// The lower layers' directories, nearest first (overlay `lowerdir` order). A parent
    /// directory the layer implies without an entry copies its owner, mode, times and
    /// non-`trusted.*` xattrs from the nearest lower layer that has it (containerd's
    /// `WithParents`); without one it is `0755 root:root`. Only meaningful for Overlay mode.
    pub parents: &'a [PathBuf],
    /// Files to link from earlier layers instead of writing (Overlay mode only).
    pub seeding: Option<&'a Seeding>,
    /// Set by another thread to stop early (checked per entry and per file job); the call
    /// then returns [`AssembleError::Cancelled`] once no thread writes into `dest` any more.
    pub cancel: Option<&'a AtomicBool>,
}

/// Writes the filesystem of the layer described by `index` into `dest` (an existing directory).
/// Blocking; run it on a blocking thread.
pub fn assemble_layer(
    index: &LayerIndex,
    chunks: &dyn ChunkReader,
    dest: &Path,
    mode: WhiteoutMode,
) -> Result<AssembleStats, AssembleError> {
    let opts = AssembleOptions {
        mode,
        parents: &[],
        seeding: None,
        cancel: None,
    };
    assemble_layer_with(index, chunks, dest, &opts)
}

/// [`assemble_layer`] with lower layer directories (see [`AssembleOptions::parents`]).
pub fn assemble_layer_with(
    index: &LayerIndex,
    chunks: &dyn ChunkReader,
    dest: &Path,
    opts: &AssembleOptions<'_>,
) -> Result<AssembleStats, AssembleError> {
    let open = |path: &Path| -> Result<OwnedFd, AssembleError> {
        File::open(path)
            .map(OwnedFd::from)
            .map_err(|source| AssembleError::Io {
                path: path.to_owned(),
                source,
            })
    };
    let recent = recent::Recent::new(chunks, &index.chunks);
    let chunks: &dyn ChunkReader = &recent;
    let root = open(dest)?;
    let parents = opts
        .parents
        .iter()
        .map(|p| open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let seeding = opts.seeding.filter(|_| opts.mode == WhiteoutMode::Overlay);
    let seeds = match seeding {
        Some(s) => s
            .seed_dirs()
            .map(|d| {
                // A seed that cannot be opened only costs its files being written.
                open(d)
                    .inspect_err(|e| tracing::warn!(cause = %e, "seed directory unusable"))
                    .ok()
            })
            .collect(),
        None => Vec::new(),
    };
    let needed = seeding.map(|s| s.needed_chunks(index));
    let (tx, rx) = content::prefetch_channel();
    let shared = writer::Shared::new(
        seeding.map(|s| (s, seeds)),
        &index.chunks,
        chunks,
        opts.cancel,
    );
    // The walk, the read-ahead and the workers share the CPUs; one worker per CPU keeps them
    // busy while the walk waits on syscalls.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let workers = if workers > 1 { workers } else { 0 };
    let (pool, jobs) = writer::queue(&shared, workers);
    // Into an empty directory in Overlay mode, only paths this layer created can exist, so
    // the walk need not look before creating (a look waits on the directory lock a worker's
    // link holds).
    let fresh = opts.mode == WhiteoutMode::Overlay
        && fsops::list_dir(root.as_fd())
            .map_err(sys("list", b"."))?
            .is_empty();
    std::thread::scope(|scope| {
        scope.spawn(|| content::prefetch(&index.chunks, needed.as_deref(), chunks, tx));
        let handles: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| writer::worker(&jobs, &shared)))
            .collect();
        let ctx = Context {
            root: root.as_fd(),
            parents,
            mode: opts.mode,
            seeding,
            pool,
            fresh,
        };
        // The pool (and with it the queue's sender) is dropped when the walk returns, so the
        // workers stop, also on error.
        let mut stats = assemble_entries(index, chunks, ctx, rx);
        for h in handles {
            match (h.join(), stats.as_mut()) {
                (Ok(w), Ok(s)) => s.add(&w),
                (Err(_), _) => stats = Err(AssembleError::WorkerPanicked),
                (Ok(_), Err(_)) => {}
            }
        }
        stats
    })
}

/// What the walk works with besides the index and chunks.
struct Context<'s, 'a> {
    root: BorrowedFd<'a>,
    parents: Vec<OwnedFd>,
    mode: WhiteoutMode,
    seeding: Option<&'a Seeding>,
    pool: writer::Pool<'s, 'a>,
    fresh: bool,
}

/// The walk of [`assemble_layer_with`]: every entry in order, then directory mtimes.
fn assemble_entries<'s, 'a>(
    index: &'a LayerIndex,
    chunks: &'a dyn ChunkReader,
    ctx: Context<'s, 'a>,
    ahead: std::sync::mpsc::Receiver<content::Prefetched>,
) -> Result<AssembleStats, AssembleError> {
    let mode = ctx.mode;
    let mut a = Assembler {
        root: ctx.root,
        parents: ctx.parents,
        seeding: ctx.seeding,
        pool: ctx.pool,
        last_parent: None,
        removed: false,
        how: match mode {
            WhiteoutMode::Overlay => Resolve::Strict,
            WhiteoutMode::Apply => Resolve::InRoot,
        },
        mode,
        stream: content::Stream::new(&index.chunks, chunks).with_prefetch(ahead),
        stats: AssembleStats::default(),
        unpacked: HashSet::new(),
        fresh: ctx.fresh,
        dirs: Vec::new(),
    };
    for (i, entry) in index.entries.iter().enumerate() {
        if a.pool.cancelled() {
            return Err(AssembleError::Cancelled);
        }
        a.entry(i, entry)?;
    }
    a.pool.drain(&mut a.stats)?;
    // Directory mtimes last: creating their children changed them. Like containerd, set on
    // whatever the path holds by now (a later entry may have replaced the directory), without
    // following a symlink.
    for (path, ts) in std::mem::take(&mut a.dirs) {
        let Some(p) = split_path(&path)? else {
            continue;
        };
        let parent = p.parent.join(&b'/');
        let fd = fsops::open_dir(a.root, &parent, a.how)
            .map_err(|e| escape_or_sys(e, "open", &parent))?;
        attrs::set_mtime_at(fd.as_fd(), p.name, &path, ts)?;
    }
    Ok(a.stats)
}

struct Assembler<'s, 'a> {
    root: BorrowedFd<'a>,
    parents: Vec<OwnedFd>,
    seeding: Option<&'a Seeding>,
    pool: writer::Pool<'s, 'a>,
    /// The previous entry's parent directory (path, fd), reused by the next entry in it and
    /// shared with the seed jobs queued for it.
    last_parent: Option<(Vec<u8>, Arc<OwnedFd>)>,
    /// Whether the current entry removed anything (then the cached parent is dropped).
    removed: bool,
    how: Resolve,
    mode: WhiteoutMode,
    stream: content::Stream<'a>,
    stats: AssembleStats,
    /// Paths this layer created, implied parents and whiteout devices included (Apply mode's
    /// opaque whiteouts keep these; a path in here may also have a job still pending).
    unpacked: HashSet<Vec<u8>>,
    /// `dest` was empty and whiteouts are devices: a path not in `unpacked` does not exist.
    fresh: bool,
    /// Directories whose mtime is set at the end.
    dirs: Vec<(Vec<u8>, TimeSpec)>,
}

type Entry = chunksnap_format::pb::Entry;

impl<'a> Assembler<'_, 'a> {
    fn entry(&mut self, i: usize, e: &'a Entry) -> Result<(), AssembleError> {
        let Some(p) = split_path(&e.path)? else {
            return Ok(()); // the root itself: containerd ignores it too
        };
        // Consecutive entries mostly share a parent: reuse its fd while nothing was removed
        // (a removal could have replaced the directory the cached fd points to).
        let key = p.parent.join(&b'/');
        let parent = match self.last_parent.take() {
            Some((k, fd)) if k == key => fd,
            _ => {
                let unpacked = &mut self.unpacked;
                let fd = fsops::open_or_create_dir(
                    self.root,
                    &p.parent,
                    self.how,
                    &self.parents,
                    &mut |implied| {
                        unpacked.insert(implied);
                    },
                )?;
                Arc::new(fd)
            }
        };
        self.removed = false;
        self.entry_in(i, &parent, &p, e)?;
        if !self.removed {
            self.last_parent = Some((key, parent));
        }
        Ok(())
    }

    fn entry_in(
        &mut self,
        i: usize,
        parent: &Arc<OwnedFd>,
        p: &EntryPath<'_>,
        e: &'a Entry,
    ) -> Result<(), AssembleError> {
        let dir = parent.as_fd();
        if p.name.starts_with(WHITEOUT_PREFIX) {
            self.stats.whiteouts += 1;
            return self.whiteout(dir, p, e);
        }
        let ty = EntryType::try_from(e.r#type).map_err(|_| AssembleError::BadIndex {
            reason: format!("{}: unknown entry type {}", lossy(p.full), e.r#type),
        })?;
        let rel = join(&p.parent, p.name);
        let ours = self.unpacked.contains(&rel);
        if ours {
            // A job for the earlier entry at this path may still be pending.
            self.pool.drain(&mut self.stats)?;
        }
        // Replace whatever is there, unless both are directories (then merge metadata).
        if (ours || !self.fresh)
            && let Some(st) = fsops::lstat_at(dir, p.name).map_err(sys("lstat", p.full))?
            && !(fsops::is_dir(&st) && ty == EntryType::Dir)
        {
            self.removed = true;
            fsops::remove_all(dir, p.name).map_err(sys("remove", p.full))?;
        }
        let mtime = TimeSpec::new(e.mtime_sec, i64::from(e.mtime_nsec));
        let name = OsStr::from_bytes(p.name);
        match ty {
            EntryType::File => self.file(i, parent, p, e)?,
            EntryType::Dir => {
                // With its own permission bits (the umask may clear some): usually no chmod.
                let perm = Mode::from_bits_truncate(e.mode & 0o777);
                match nix::sys::stat::mkdirat(dir, name, perm) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(err) => return Err(sys("mkdir", p.full)(err)),
                }
                let fd = fsops::open_child_dir(dir, p.name).map_err(sys("open", p.full))?;
                attrs::owner_xattrs_mode(fd.as_fd(), None, p.full, e, true)?;
                self.dirs.push((rel.clone(), mtime));
                self.stats.dirs += 1;
            }
            EntryType::Symlink => {
                nix::unistd::symlinkat(OsStr::from_bytes(&e.link_target), dir, name)
                    .map_err(sys("symlink", p.full))?;
                attrs::owner_xattrs_mode(dir, Some(p.name), p.full, e, false)?;
                attrs::set_mtime_at(dir, p.name, p.full, mtime)?;
                self.stats.symlinks += 1;
            }
            EntryType::Hardlink => {
                self.hardlink(dir, p, e)?;
                attrs::set_mtime_at(dir, p.name, p.full, mtime)?;
                self.stats.hardlinks += 1;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match ty {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = nix::sys::stat::makedev(u64::from(e.dev_major), u64::from(e.dev_minor));
                nix::sys::stat::mknodat(dir, name, kind, Mode::from_bits_truncate(0o600), dev)
                    .map_err(sys("mknod", p.full))?;
                attrs::owner_xattrs_mode(dir, Some(p.name), p.full, e, true)?;
                attrs::set_mtime_at(dir, p.name, p.full, mtime)?;
                self.stats.specials += 1;
            }
        }
        if !ours {
            self.unpacked.insert(rel);
        }
        Ok(())
    }

    fn file(
        &mut self,
        i: usize,
        parent: &Arc<OwnedFd>,
        p: &EntryPath<'_>,
        e: &'a Entry,
    ) -> Result<(), AssembleError> {
        if self.seeding.is_some_and(|s| s.source(i).is_some()) {
            let job = writer::Job::Seed {
                dir: parent.clone(),
                index: i,
                entry: e,
            };
            return self.pool.submit(job, &mut self.stats);
        }
        let dir = parent.as_fd();
        let file = writer::create_file(dir, p.name, e)?;
        let io_err = writer::io_err(p.full);
        if self.pool.parallel() && e.size <= writer::OFFLOAD_MAX {
            let mut content = Vec::with_capacity(e.size as usize);
            self.stream.read(e.offset, e.size, |piece| {
                content.extend_from_slice(piece);
                Ok(())
            })?;
            let job = writer::Job::Write {
                file,
                entry: e,
                content,
            };
            return self.pool.submit(job, &mut self.stats);
        }
        let mut w = content::SparseWriter::new(&file);
        self.stream
            .read(e.offset, e.size, |piece| w.write(piece).map_err(&io_err))?;
        writer::finish_file(&file, w, e, &mut self.stats)
    }

    fn hardlink(
        &mut self,
        dir: BorrowedFd<'_>,
        p: &EntryPath<'_>,
        e: &Entry,
    ) -> Result<(), AssembleError> {
        // The target may be a file a worker is still writing (or linking), and this entry's
        // attributes must land after that file's own.
        self.pool.drain(&mut self.stats)?;
        let missing = || AssembleError::MissingHardlinkTarget {
            path: lossy(p.full),
            target: lossy(&e.link_target),
        };
        let t = split_path(&e.link_target)?.ok_or_else(missing)?;
        let tdir = match fsops::open_dir(self.root, &t.parent.join(&b'/'), self.how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(missing()),
            Err(err) => return Err(escape_or_sys(err, "open link target", &e.link_target)),
        };
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, as tar does.
        match nix::unistd::linkat(
            tdir.as_fd(),
            OsStr::from_bytes(t.name),
            dir,
            OsStr::from_bytes(p.name),
            AtFlags::empty(),
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) => return Err(missing()),
            Err(err) => return Err(sys("link", p.full)(err)),
        }
        // containerd chmods a hardlink only when its target is not a symlink.
        let target_is_symlink = fsops::lstat_at(dir, p.name)
            .map_err(sys("lstat", p.full))?
            .is_some_and(|st| fsops::is_symlink(&st));
        attrs::owner_xattrs_mode(dir, Some(p.name), p.full, e, !target_is_symlink)
    }

    fn whiteout(
        &mut self,
        dir: BorrowedFd<'_>,
        p: &EntryPath<'_>,
        e: &Entry,
    ) -> Result<(), AssembleError> {
        if p.name == WHITEOUT_OPAQUE {
            return match self.mode {
                WhiteoutMode::Overlay => fsops::fsetxattr(dir, "trusted.overlay.opaque", b"y")
                    .map_err(sys("setxattr opaque", p.full)),
                WhiteoutMode::Apply => {
                    let base = p.parent.join(&b'/');
                    self.removed = true;
                    self.remove_lower(dir, &base).map_err(sys("opaque", p.full))
                }
            };
        }
        let target = &p.name[WHITEOUT_PREFIX.len()..];
        if matches!(target, b"" | b"." | b"..") {
            return Err(AssembleError::UnsafePath {
                path: lossy(p.full),
            });
        }
        match self.mode {
            WhiteoutMode::Overlay => {
                nix::sys::stat::mknodat(
                    dir,
                    OsStr::from_bytes(target),
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    0,
                )
                .map_err(sys("mknod whiteout", p.full))?;
                self.unpacked.insert(join(&p.parent, target));
                let uid = u32::try_from(e.uid).map_err(|_| attrs::bad_id(p.full))?;
                let gid = u32::try_from(e.gid).map_err(|_| attrs::bad_id(p.full))?;
                nix::unistd::fchownat(
                    dir,
                    OsStr::from_bytes(target),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(sys("chown whiteout", p.full))
            }
            WhiteoutMode::Apply => {
                self.removed = true;
                fsops::remove_all(dir, target).map_err(sys("remove whiteout target", p.full))
            }
        }
    }

    /// Removes everything below `dir` (at relative path `base`) not created by this layer.
    fn remove_lower(&self, dir: BorrowedFd<'_>, base: &[u8]) -> Result<(), Errno> {
        for name in fsops::list_dir(dir)? {
            let rel = if base.is_empty() {
                name.clone()
            } else {
                [base, b"/", &name].concat()
            };
            if !self.unpacked.contains(&rel) {
                fsops::remove_all(dir, &name)?;
            } else if let Some(st) = fsops::lstat_at(dir, &name)?
                && fsops::is_dir(&st)
            {
                let child = fsops::open_child_dir(dir, &name)?;
                self.remove_lower(child.as_fd(), &rel)?;
            }
        }
        Ok(())
    }
}
