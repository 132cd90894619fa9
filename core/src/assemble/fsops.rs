//! Filesystem operations confined beneath the destination directory.
//!
//! Every parent directory is opened with `openat2` relative to the root fd, then every change is
//! made with a `*at` syscall relative to that parent fd, so no path is ever resolved from `/`.
//! [`Resolve::Strict`] (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`) refuses any symlink on the way;
//! [`Resolve::InRoot`] (`RESOLVE_IN_ROOT`) follows symlinks but treats `dest` as `/`, so an
//! absolute link like Debian's `bin -> /usr/bin` lands inside `dest`, never outside it.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::AssembleError;

/// How parent paths are resolved beneath the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolve {
    /// No symlinks at all (a fresh layer directory has none of its own in parent position
    /// unless the layer is hostile).
    Strict,
    /// Symlinks are followed, scoped to the root (applying layers into one tree).
    InRoot,
}

impl Resolve {
    fn flags(self) -> ResolveFlag {
        match self {
            Resolve::Strict => {
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
            }
            Resolve::InRoot => ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        }
    }
}

pub(crate) fn sys<'p>(
    op: &'static str,
    path: &'p [u8],
) -> impl FnOnce(Errno) -> AssembleError + 'p {
    move |errno| AssembleError::Sys {
        op,
        path: String::from_utf8_lossy(path).into_owned(),
        errno,
    }
}

/// Opens directory `rel` (a relative path; empty = the root) beneath `root`.
pub(crate) fn open_dir(root: BorrowedFd<'_>, rel: &[u8], how: Resolve) -> Result<OwnedFd, Errno> {
    let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
    let oh = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(how.flags());
    loop {
        match openat2(root, OsStr::from_bytes(rel), oh) {
            // openat2 returns EAGAIN when a concurrent rename could have raced the lookup.
            Err(Errno::EAGAIN) => continue,
            r => return r,
        }
    }
}

/// Opens (creating missing directories 0755 as containerd does) the directory made of
/// `components` beneath `root`; the relative path of each directory it creates goes to
/// `created`.
pub(crate) fn open_or_create_dir(
    root: BorrowedFd<'_>,
    components: &[&[u8]],
    how: Resolve,
    parents: &[OwnedFd],
    created: &mut impl FnMut(Vec<u8>),
) -> Result<OwnedFd, AssembleError> {
    let full = components.join(&b'/');
    match open_dir(root, &full, how) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(escape_or_sys(e, "open parent", &full)),
    }
    // Walk down, creating what is missing; each prefix is resolved from the root again so
    // `InRoot` keeps scoping absolute symlinks to the root.
    let mut cur = open_dir(root, b"", how).map_err(sys("open root", b"."))?;
    for i in 0..components.len() {
        let prefix = components[..=i].join(&b'/');
        match open_dir(root, &prefix, how) {
            Ok(fd) => cur = fd,
            Err(Errno::ENOENT) => {
                let name = OsStr::from_bytes(components[i]);
                match nix::sys::stat::mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    // Explicit mode so the umask cannot change it. Only for a directory we just
                    // created: on EEXIST `name` may be a symlink, which chmod would follow.
                    Ok(()) => {
                        let fd = open_child_dir(cur.as_fd(), components[i])
                            .map_err(sys("open", &prefix))?;
                        nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(0o755))
                            .map_err(sys("chmod", &prefix))?;
                        copy_from_parents(fd.as_fd(), &prefix, parents)
                            .map_err(sys("copy parent dir info", &prefix))?;
                        created(prefix.clone());
                    }
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(sys("mkdir", &prefix)(e)),
                }
                cur =
                    open_dir(root, &prefix, how).map_err(|e| escape_or_sys(e, "open", &prefix))?;
            }
            Err(e) => return Err(escape_or_sys(e, "open parent", &prefix)),
        }
    }
    Ok(cur)
}

/// Maps resolution failures that mean "this path leaves the root or crosses a symlink".
pub(crate) fn escape_or_sys(e: Errno, op: &'static str, path: &[u8]) -> AssembleError {
    match e {
        Errno::EXDEV | Errno::ELOOP => AssembleError::Escape {
            path: String::from_utf8_lossy(path).into_owned(),
        },
        e => sys(op, path)(e),
    }
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<FileStat>, Errno> {
    match fstatat(
        dir,
        OsStr::from_bytes(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

pub(crate) fn is_symlink(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
}

/// Opens child directory `name` of `dir` without following a symlink.
pub(crate) fn open_child_dir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        OsStr::from_bytes(name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Names in directory `dir` (without `.` and `..`).
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    // Reading through the fd's /proc magic link lists exactly the directory we hold open.
    let proc_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let rd = fs::read_dir(proc_path).map_err(io_errno)?;
    let mut names = Vec::new();
    for ent in rd {
        names.push(ent.map_err(io_errno)?.file_name().as_bytes().to_vec());
    }
    Ok(names)
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Removes `name` in `dir` and, for a directory, everything beneath it (no symlink followed).
/// A missing `name` is not an error.
///
/// Depth-first without recursion or a descriptor per level (a hostile layer's deep tree would
/// exhaust the stack or the fd limit): each level keeps only the names of the subdirectories
/// still to remove, and going back up reopens `..` of the directory just emptied (it was
/// reached through real directories, never a symlink).
pub(crate) fn remove_all(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if !is_dir(&st) {
        return unlink_file(dir, name);
    }
    let mut cur = open_child_dir(dir, name)?;
    let mut stack = vec![(name.to_vec(), remove_files(cur.as_fd())?)];
    while let Some((done, pending)) = stack.last_mut() {
        if let Some(sub) = pending.pop() {
            let child = open_child_dir(cur.as_fd(), &sub)?;
            let subs = remove_files(child.as_fd())?;
            stack.push((sub, subs));
            cur = child;
            continue;
        }
        let done = std::mem::take(done);
        stack.pop();
        if stack.is_empty() {
            break;
        }
        let parent = openat(
            cur.as_fd(),
            "..",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        unlinkat(
            parent.as_fd(),
            OsStr::from_bytes(&done),
            UnlinkatFlags::RemoveDir,
        )?;
        cur = parent;
    }
    unlinkat(dir, OsStr::from_bytes(name), UnlinkatFlags::RemoveDir)
}

/// Unlinks every non-directory in `dir`; returns the names of its subdirectories.
fn remove_files(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let mut subdirs = Vec::new();
    for n in list_dir(dir)? {
        match lstat_at(dir, &n)? {
            Some(st) if is_dir(&st) => subdirs.push(n),
            Some(_) => unlink_file(dir, &n)?,
            None => {}
        }
    }
    Ok(subdirs)
}

fn unlink_file(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    match unlinkat(dir, OsStr::from_bytes(name), UnlinkatFlags::NoRemoveDir) {
        Err(Errno::ENOENT) => Ok(()),
        r => r,
    }
}

/// `lsetxattr` on `name` in `dir` (works for symlinks and devices, which cannot be opened for
/// `fsetxattr`). `name` empty = `dir` itself.
pub(crate) fn lsetxattr_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &str,
    value: &[u8],
) -> Result<(), Errno> {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name);
    }
    let path = CString::new(p).map_err(|_| Errno::EINVAL)?;
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both strings are NUL-terminated and `value` is a valid buffer of its length.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// `fsetxattr` on an open file or directory.
pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, key: &str, value: &[u8]) -> Result<(), Errno> {
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `key` is NUL-terminated and `value` is a valid buffer of its length.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// Gives a directory created implicitly the owner, mode, times and non-`trusted.*` xattrs of the
/// same directory in the nearest lower layer that has it, as containerd's `mkparent` does with
/// `WithParents` (otherwise an implied `0755 root` upper dir would shadow the lower one's
/// metadata in the overlay). A lower layer where the path is not a directory stops the search.
fn copy_from_parents(new: BorrowedFd<'_>, rel: &[u8], parents: &[OwnedFd]) -> Result<(), Errno> {
    for p in parents {
        let lower = match open_dir(p.as_fd(), rel, Resolve::InRoot) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(e),
        };
        let st = nix::sys::stat::fstat(lower.as_fd())?;
        nix::unistd::fchown(
            new,
            Some(nix::unistd::Uid::from_raw(st.st_uid)),
            Some(nix::unistd::Gid::from_raw(st.st_gid)),
        )?;
        nix::sys::stat::fchmod(new, Mode::from_bits_truncate(st.st_mode & 0o7777))?;
        let atime = nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec);
        let mtime = nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
        nix::sys::stat::futimens(new, &atime, &mtime)?;
        for (key, value) in list_xattrs(lower.as_fd())? {
            if key.starts_with(b"trusted.") {
                continue;
            }
            let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
            // SAFETY: `key` is NUL-terminated and `value` is a valid buffer of its length.
            let rc = unsafe {
                libc::fsetxattr(
                    new.as_raw_fd(),
                    key.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    libc::XATTR_CREATE,
                )
            };
            match Errno::result(rc) {
                Ok(_) | Err(Errno::ENOTSUP | Errno::ENODATA | Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    Ok(())
}

/// An xattr: (name, value).
type XattrPair = (Vec<u8>, Vec<u8>);

/// All xattrs of an open file.
pub(crate) fn list_xattrs(fd: BorrowedFd<'_>) -> Result<Vec<XattrPair>, Errno> {
    let raw = fd.as_raw_fd();
    // SAFETY: a null buffer of size 0 asks for the needed size.
    let n = unsafe { libc::flistxattr(raw, std::ptr::null_mut(), 0) };
    let n = match Errno::result(n) {
        Ok(n) => n as usize,
        Err(Errno::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = vec![0u8; n];
    // SAFETY: `names` is a valid buffer of its length.
    let n = Errno::result(unsafe { libc::flistxattr(raw, names.as_mut_ptr().cast(), n) })?;
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
        // SAFETY: a null buffer of size 0 asks for the needed size.
        let len = unsafe { libc::fgetxattr(raw, cname.as_ptr(), std::ptr::null_mut(), 0) };
        let len = match Errno::result(len) {
            Ok(l) => l as usize,
            Err(Errno::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        let mut value = vec![0u8; len];
        // SAFETY: `value` is a valid buffer of `len` bytes.
        let got = unsafe { libc::fgetxattr(raw, cname.as_ptr(), value.as_mut_ptr().cast(), len) };
        let got = Errno::result(got)?;
        value.truncate(got as usize);
        out.push((name.to_vec(), value));
    }
    Ok(out)
}
