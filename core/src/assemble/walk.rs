//! The walk of a layer's entries in index order: each entry applied to `dest` (directories,
//! files handed to the content stream or the writer pool, links, whiteouts), then directory
//! mtimes.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use chunksnap_format::pb::{EntryType, LayerIndex};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::fsops::{Resolve, escape_or_sys, sys};
use super::{
    AssembleError, AssembleStats, ChunkReader, Entry, EntryPath, Seeding, WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX, WhiteoutMode, attrs, content, fsops, join, lossy, split_path, writer,
};

/// What the walk works with besides the index and chunks.
pub(super) struct Context<'s, 'a> {
    pub(super) root: BorrowedFd<'a>,
    pub(super) parents: Vec<OwnedFd>,
    pub(super) mode: WhiteoutMode,
    pub(super) seeding: Option<&'a Seeding>,
    pub(super) pool: writer::Pool<'s, 'a>,
    pub(super) fresh: bool,
}

/// The walk of [`assemble_layer_with`]: every entry in order, then directory mtimes.
pub(super) fn assemble_entries<'s, 'a>(
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
                index: i,
                entry: e,
                content,
            };
            return self.pool.submit(job, &mut self.stats);
        }
        let mut w = content::SparseWriter::new(&file);
        let progress = self.pool.progress();
        self.stream.read(e.offset, e.size, |piece| {
            let flushed = w.write(piece).map_err(&io_err)?;
            if let (Some(p), true) = (progress, flushed) {
                p.streamed(i, w.final_bytes());
            }
            Ok(())
        })?;
        writer::finish_file(&file, w, e, &mut self.stats)?;
        if let Some(p) = progress {
            p.done(i);
        }
        Ok(())
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
