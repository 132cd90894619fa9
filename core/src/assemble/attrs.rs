//! Ownership, xattrs, mode and mtime of one written entry, in containerd's order.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::fsops::{self, sys};
use super::{AssembleError, Entry, lossy};

/// chown, then xattrs, then chmod (containerd's order: chown clears setuid/setgid, and
/// `security.capability` must be set after it). With `name`, acts on `name` in `fd` without
/// following it; without, on `fd` itself, and then skips a chown or chmod that would change
/// nothing (each is a journaled inode update; most files are created with their owner and
/// mode already right). The end state is the same: a skipped chown cleared nothing.
pub(crate) fn owner_xattrs_mode(
    fd: BorrowedFd<'_>,
    name: Option<&[u8]>,
    path: &[u8],
    e: &Entry,
    chmod: bool,
) -> Result<(), AssembleError> {
    let uid = u32::try_from(e.uid).map_err(|_| bad_id(path))?;
    let gid = u32::try_from(e.gid).map_err(|_| bad_id(path))?;
    let owner = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let now = match name {
        Some(_) => None,
        None => Some(nix::sys::stat::fstat(fd).map_err(sys("stat", path))?),
    };
    let owner_ok = now.is_some_and(|st| st.st_uid == uid && st.st_gid == gid);
    let mode_ok = owner_ok && now.is_some_and(|st| st.st_mode & 0o7777 == e.mode & 0o7777);
    match name {
        _ if owner_ok => Ok(()),
        Some(n) => nix::unistd::fchownat(
            fd,
            OsStr::from_bytes(n),
            owner.0,
            owner.1,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ),
        None => nix::unistd::fchown(fd, owner.0, owner.1),
    }
    .map_err(sys("chown", path))?;
    for x in &e.xattrs {
        let r = match name {
            Some(n) => fsops::lsetxattr_at(fd, n, &x.name, &x.value),
            None => fsops::fsetxattr(fd, &x.name, &x.value),
        };
        match r {
            Ok(()) => {}
            // containerd warns and goes on when the filesystem lacks xattr support.
            Err(Errno::ENOTSUP) => {
                tracing::warn!(path = %lossy(path), xattr = %x.name, "xattr not supported, ignored");
            }
            Err(err) => return Err(sys("setxattr", path)(err)),
        }
    }
    if chmod && !mode_ok {
        let mode = Mode::from_bits_truncate(e.mode & 0o7777);
        match name {
            Some(n) => nix::sys::stat::fchmodat(
                fd,
                OsStr::from_bytes(n),
                mode,
                FchmodatFlags::FollowSymlink, // `n` was just created and is not a symlink
            ),
            None => nix::sys::stat::fchmod(fd, mode),
        }
        .map_err(sys("chmod", path))?;
    }
    Ok(())
}

/// Sets the mtime (and atime) of `name` in `dir` without following it.
pub(crate) fn set_mtime_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    ts: TimeSpec,
) -> Result<(), AssembleError> {
    nix::sys::stat::utimensat(
        dir,
        OsStr::from_bytes(name),
        &ts,
        &ts,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(sys("utimens", path))
}

pub(crate) fn bad_id(path: &[u8]) -> AssembleError {
    AssembleError::BadIndex {
        reason: format!("{}: uid/gid out of range", lossy(path)),
    }
}
