//! Regular files written on worker threads.
//!
//! The assembler walks the index in order on one thread: directories, links, devices and
//! removals must happen in tar order. A regular file's content and attributes, and the check
//! and link of a seeded file, depend on nothing after the file's creation, so they go to a small
//! pool of workers and the walk goes on. The walk waits for the pool to drain before a hardlink
//! (it may name a file still being written, whose attributes it then overrides) and before
//! directory mtimes are set at the end. Files larger than [`OFFLOAD_MAX`] are streamed by the
//! walk itself, so memory stays bounded.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use chunksnap_format::pb::Chunk;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;

use super::content::{SparseWriter, Stream};
use super::fsops::sys;
use super::progress::Progress;
use super::seed::{self, Seeding};
use super::{AssembleError, AssembleStats, ChunkReader, Entry, attrs, lossy, split_path};

/// Largest file whose content is handed to a worker (larger ones are streamed by the walk).
/// Most files of a layer are far smaller; this keeps queued content small.
pub(crate) const OFFLOAD_MAX: u64 = 256 << 10;
/// Jobs handed over at once. One handover wakes a sleeping worker (a futex wake, and on a VM
/// an inter-processor interrupt); one per file made the wake-ups a fifth of a seeded
/// assembly's CPU time, with the walk and the workers waiting on each other in turn.
const BATCH_JOBS: usize = 32;
/// Content bytes that close a batch early, so queued content stays small.
const BATCH_BYTES: usize = 512 << 10;
/// Batches queued at most; with [`BATCH_BYTES`] this bounds the memory held by queued content
/// (one more batch per worker is being run, one more is being filled: 2.5 MiB with 2 workers).
const QUEUE: usize = 2;

/// Work for the pool.
pub(crate) enum Job<'a> {
    /// Write `content` into the freshly created, empty `file`, then set its attributes.
    Write {
        file: File,
        index: usize,
        entry: &'a Entry,
        content: Vec<u8>,
    },
    /// Link entry `index` from its planned seed into `dir`, or else write it from chunks.
    Seed {
        dir: Arc<OwnedFd>,
        index: usize,
        entry: &'a Entry,
    },
}

/// What every worker (and the walk, when it runs a job itself) shares.
pub(crate) struct Shared<'a> {
    /// The seeding plan and each seed's directory (`None`: could not be opened).
    pub(crate) seeding: Option<(&'a Seeding, Vec<Option<OwnedFd>>)>,
    /// Seed inodes linked so far: each at most once, or identical files would become
    /// hardlinks of each other (different seeds can share an inode).
    seeded: Mutex<HashSet<(u64, u64)>>,
    chunks: &'a [Chunk],
    reader: &'a dyn ChunkReader,
    inflight: Mutex<usize>,
    drained: Condvar,
    failed: Mutex<Option<AssembleError>>,
    cancel: Option<&'a AtomicBool>,
    progress: Option<&'a Progress>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<'a> Shared<'a> {
    pub(crate) fn new(
        seeding: Option<(&'a Seeding, Vec<Option<OwnedFd>>)>,
        chunks: &'a [Chunk],
        reader: &'a dyn ChunkReader,
        cancel: Option<&'a AtomicBool>,
        progress: Option<&'a Progress>,
    ) -> Self {
        Self {
            seeding,
            seeded: Mutex::new(HashSet::new()),
            chunks,
            reader,
            inflight: Mutex::new(0),
            drained: Condvar::new(),
            failed: Mutex::new(None),
            cancel,
            progress,
        }
    }

    /// Whether [`super::AssembleOptions::cancel`] was set (the walk asks through the pool).
    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn fail(&self, e: AssembleError) {
        lock(&self.failed).get_or_insert(e);
    }

    fn take_failure(&self) -> Result<(), AssembleError> {
        match lock(&self.failed).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The sending side of the pool, owned by the walk. Without workers, jobs run inline.
pub(crate) struct Pool<'s, 'a> {
    tx: Option<SyncSender<Vec<Job<'a>>>>,
    shared: &'s Shared<'a>,
    /// Jobs not handed over yet (counted in `inflight` already).
    batch: Vec<Job<'a>>,
    batch_bytes: usize,
}

/// Creates the job queue: the pool for the walk, the receiver for the workers.
pub(crate) fn queue<'s, 'a>(
    shared: &'s Shared<'a>,
    workers: usize,
) -> (Pool<'s, 'a>, Mutex<Receiver<Vec<Job<'a>>>>) {
    let (tx, rx) = sync_channel(QUEUE);
    let tx = (workers > 0).then_some(tx);
    let pool = Pool {
        tx,
        shared,
        batch: Vec::with_capacity(BATCH_JOBS),
        batch_bytes: 0,
    };
    (pool, Mutex::new(rx))
}

impl<'a> Pool<'_, 'a> {
    /// Whether the assembly was cancelled (checked by the walk before each entry).
    pub(crate) fn cancelled(&self) -> bool {
        self.shared.cancelled()
    }

    /// Where the walk reports the files it finishes itself.
    pub(crate) fn progress(&self) -> Option<&'a Progress> {
        self.shared.progress
    }

    /// Whether jobs go to workers (else the caller may as well stream big files itself).
    pub(crate) fn parallel(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `job`, or runs it now when there are no workers. Reports a worker's failure.
    pub(crate) fn submit(
        &mut self,
        job: Job<'a>,
        stats: &mut AssembleStats,
    ) -> Result<(), AssembleError> {
        self.shared.take_failure()?;
        if self.tx.is_none() {
            return run(self.shared, job, stats);
        }
        if let Job::Write { content, .. } = &job {
            self.batch_bytes += content.len();
        }
        *lock(&self.shared.inflight) += 1;
        self.batch.push(job);
        if self.batch.len() >= BATCH_JOBS || self.batch_bytes >= BATCH_BYTES {
            self.flush(stats)?;
        }
        Ok(())
    }

    /// Hands the jobs batched so far to the workers.
    fn flush(&mut self, stats: &mut AssembleStats) -> Result<(), AssembleError> {
        self.batch_bytes = 0;
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_JOBS));
        if let Err(returned) = tx.send(batch) {
            // Every worker is gone (they only stop when the queue closes): run them here.
            self.tx = None;
            let jobs = returned.0;
            for _ in &jobs {
                done(self.shared);
            }
            for job in jobs {
                run(self.shared, job, stats)?;
            }
        }
        Ok(())
    }

    /// Waits until every queued job has finished; reports the first failure.
    pub(crate) fn drain(&mut self, stats: &mut AssembleStats) -> Result<(), AssembleError> {
        self.flush(stats)?;
        let mut n = lock(&self.shared.inflight);
        while *n > 0 {
            n = self
                .shared
                .drained
                .wait(n)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(n);
        self.shared.take_failure()
    }
}

fn done(shared: &Shared<'_>) {
    let mut n = lock(&shared.inflight);
    *n = n.saturating_sub(1);
    if *n == 0 {
        shared.drained.notify_all();
    }
}

/// A worker: runs batches of jobs until the queue closes; returns what it wrote.
pub(crate) fn worker(rx: &Mutex<Receiver<Vec<Job<'_>>>>, shared: &Shared<'_>) -> AssembleStats {
    let mut stats = AssembleStats::default();
    loop {
        let batch = lock(rx).recv();
        let Ok(batch) = batch else {
            return stats;
        };
        for job in batch {
            // After a failure the rest is only drained: the assembly is failing anyway. A
            // cancellation fails it, so a job skipped here can never go unnoticed.
            if lock(&shared.failed).is_none() {
                let ran = if shared.cancelled() {
                    Err(AssembleError::Cancelled)
                } else {
                    run(shared, job, &mut stats)
                };
                if let Err(e) = ran {
                    shared.fail(e);
                }
            }
            done(shared);
        }
    }
}

fn run(shared: &Shared<'_>, job: Job<'_>, stats: &mut AssembleStats) -> Result<(), AssembleError> {
    let index = match &job {
        Job::Write { index, .. } | Job::Seed { index, .. } => *index,
    };
    run_job(shared, job, stats)?;
    if let Some(p) = shared.progress {
        p.done(index);
    }
    Ok(())
}

fn run_job(
    shared: &Shared<'_>,
    job: Job<'_>,
    stats: &mut AssembleStats,
) -> Result<(), AssembleError> {
    match job {
        Job::Write {
            file,
            entry,
            content,
            ..
        } => {
            let mut w = SparseWriter::new(&file);
            let io = io_err(&entry.path);
            w.write(&content).map_err(io)?;
            finish_file(&file, w, entry, stats)
        }
        Job::Seed { dir, index, entry } => {
            let name = split_path(&entry.path)?
                .map(|p| p.name.to_vec())
                .unwrap_or_default();
            if link_seed(shared, dir.as_fd(), &name, index, stats)? {
                return Ok(());
            }
            // Not linkable after all: the chunks it needs are read (or fetched) directly.
            let file = create_file(dir.as_fd(), &name, entry)?;
            let mut w = SparseWriter::new(&file);
            let io = io_err(&entry.path);
            Stream::new(shared.chunks, shared.reader).read(entry.offset, entry.size, |piece| {
                w.write(piece).map(|_| ()).map_err(&io)
            })?;
            finish_file(&file, w, entry, stats)
        }
    }
}

pub(crate) fn io_err(path: &[u8]) -> impl Fn(std::io::Error) -> AssembleError + '_ {
    move |source| AssembleError::Io {
        path: PathBuf::from(OsStr::from_bytes(path)),
        source,
    }
}

/// Creates regular file `name` in `dir` for entry `e`; it must not exist. Created with the
/// entry's permission bits (as the umask leaves them), so that usually no chmod is needed.
pub(crate) fn create_file(
    dir: BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
) -> Result<File, AssembleError> {
    let fd = nix::fcntl::openat(
        dir,
        OsStr::from_bytes(name),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(e.mode & 0o777),
    )
    .map_err(sys("create", &e.path))?;
    Ok(File::from(fd))
}

/// Flushes the content, then owner, xattrs, mode and mtime.
pub(crate) fn finish_file(
    file: &File,
    w: SparseWriter<'_>,
    e: &Entry,
    stats: &mut AssembleStats,
) -> Result<(), AssembleError> {
    let holes = w.finish().map_err(io_err(&e.path))?;
    stats.hole_bytes += holes;
    stats.bytes_written += e.size - holes;
    attrs::owner_xattrs_mode(file.as_fd(), None, &e.path, e, true)?;
    let mtime = TimeSpec::new(e.mtime_sec, i64::from(e.mtime_nsec));
    nix::sys::stat::futimens(file.as_fd(), &mtime, &mtime).map_err(sys("utimens", &e.path))?;
    stats.files += 1;
    Ok(())
}

/// Links entry `i` as `name` in `dir` from its planned seed file, if that passes the checks.
fn link_seed(
    shared: &Shared<'_>,
    dir: BorrowedFd<'_>,
    name: &[u8],
    i: usize,
    stats: &mut AssembleStats,
) -> Result<bool, AssembleError> {
    let Some((seeding, roots)) = &shared.seeding else {
        return Ok(false);
    };
    let Some((s, want)) = seeding.source(i) else {
        return Ok(false);
    };
    let Some(Some(root)) = roots.get(s) else {
        stats.seeds_rejected += 1;
        return Ok(false);
    };
    let (fd, inode) = match seed::open_checked(root.as_fd(), &want.path, want) {
        Ok(checked) => checked,
        Err(why) => {
            tracing::warn!(seed = %lossy(&want.path), %why, "seed file not used");
            stats.seeds_rejected += 1;
            return Ok(false);
        }
    };
    if !lock(&shared.seeded).insert(inode) {
        stats.seeds_rejected += 1;
        return Ok(false);
    }
    match nix::unistd::linkat(
        fd.as_fd(),
        "",
        dir,
        OsStr::from_bytes(name),
        AtFlags::AT_EMPTY_PATH,
    ) {
        Ok(()) => {
            stats.seeded_files += 1;
            stats.seeded_bytes += want.size;
            Ok(true)
        }
        // Too many links, a seed removed meanwhile, no CAP_DAC_READ_SEARCH: write it.
        Err(err) => {
            tracing::debug!(seed = %lossy(&want.path), %err, "seed link failed");
            stats.seeds_rejected += 1;
            Ok(false)
        }
    }
}
