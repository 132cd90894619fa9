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
mod progress;
mod recent;
mod seed;
mod walk;
mod writer;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chunksnap_format::pb::LayerIndex;
use nix::errno::Errno;

pub use content::HOLE_BLOCK;
use fsops::sys;
pub use progress::{Available, Progress, Unfinished};
pub use seed::{PlanCancelled, Seed, Seeding};
use walk::{Context, assemble_entries};

use crate::store::{ChunkStore, StoreError};
use chunksnap_format::digest::Digest;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";

type Entry = chunksnap_format::pb::Entry;

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
    /// Told which files are final as they become so (for verification alongside the assembly).
    pub progress: Option<&'a Progress>,
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
        progress: None,
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
        opts.progress,
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
