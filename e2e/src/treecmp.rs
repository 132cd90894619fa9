//! The oracle: compares two directory trees (e.g. a chunksnap layer dir against containerd's
//! overlayfs layer dir for the same layer) entry by entry: type, content (sha256), permission
//! bits incl. setuid/setgid/sticky, uid/gid, mtime to the nanosecond, all xattrs (incl.
//! `trusted.overlay.*` and `security.capability`), symlink targets, device numbers (a whiteout
//! is a char device 0/0), and hardlink identity (which paths share an inode).
//!
//! Exceptions are explicit in [`CompareOptions`]; by default nothing is ignored. The tree roots
//! themselves are compared too (path `""`), except their mtime when `ignore_root_mtime` is set
//! (a layer tar without a `./` entry leaves it to the applier). Blocking: call from
//! `spawn_blocking` in async code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// What to leave out of the comparison.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Skip directory mtimes (they change whenever an entry is added or removed inside).
    pub ignore_dir_mtime: bool,
    /// Skip the mtime of the tree roots.
    pub ignore_root_mtime: bool,
    /// Skip the mtime of overlay whiteouts (0/0 char devices): containerd's applier makes
    /// them with mknod and never sets their times, so theirs is the moment of unpacking.
    pub ignore_whiteout_mtime: bool,
}

/// File type as the oracle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

/// Everything compared about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    /// sha256 of the content, for regular files.
    pub sha256: Option<String>,
    pub link_target: Option<PathBuf>,
    /// (major, minor) for char and block devices.
    pub rdev: Option<(u64, u64)>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// (st_dev, st_ino), for hardlink grouping only; never compared directly.
    pub inode: (u64, u64),
}

impl Node {
    /// overlayfs whiteout: char device 0/0.
    pub fn is_whiteout(&self) -> bool {
        self.kind == Kind::Char && self.rdev == Some((0, 0))
    }
}

/// One difference between the trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Path relative to the roots (`""` for the roots).
    pub path: PathBuf,
    /// What differs, e.g. `"mode: 0o644 != 0o600"`.
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}: {}", self.path.display(), self.what)
    }
}

/// Reads every entry under `root` (not following symlinks), keyed by relative path.
pub fn scan_tree(root: &Path) -> Result<BTreeMap<PathBuf, Node>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.with_context(|| format!("walk {}", root.display()))?;
        let rel = entry.path().strip_prefix(root)?.to_owned();
        out.insert(rel, read_node(entry.path())?);
    }
    Ok(out)
}

fn read_node(path: &Path) -> Result<Node> {
    let md = std::fs::symlink_metadata(path).with_context(|| format!("lstat {path:?}"))?;
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let mut xattrs = BTreeMap::new();
    for name in xattr::list(path).with_context(|| format!("listxattr {path:?}"))? {
        let value = xattr::get(path, &name)
            .with_context(|| format!("getxattr {path:?}"))?
            .unwrap_or_default();
        xattrs.insert(name.as_bytes().to_vec(), value);
    }
    Ok(Node {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        size: md.len(),
        sha256: if kind == Kind::File {
            Some(sha256_file(path)?)
        } else {
            None
        },
        link_target: if kind == Kind::Symlink {
            Some(std::fs::read_link(path)?)
        } else {
            None
        },
        rdev: matches!(kind, Kind::Char | Kind::Block).then(|| {
            let rdev = md.rdev();
            (libc::major(rdev) as u64, libc::minor(rdev) as u64)
        }),
        xattrs,
        inode: (md.dev(), md.ino()),
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("open {path:?}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Compares the trees under `a` and `b`; an empty result means they are identical.
pub fn compare_trees(a: &Path, b: &Path, opts: &CompareOptions) -> Result<Vec<Difference>> {
    let ta = scan_tree(a)?;
    let tb = scan_tree(b)?;
    Ok(compare_scans(&ta, &tb, opts))
}

/// Like [`compare_trees`] on already scanned trees.
pub fn compare_scans(
    ta: &BTreeMap<PathBuf, Node>,
    tb: &BTreeMap<PathBuf, Node>,
    opts: &CompareOptions,
) -> Vec<Difference> {
    let mut diffs = Vec::new();
    let mut diff = |path: &Path, what: String| {
        diffs.push(Difference {
            path: path.to_owned(),
            what,
        })
    };
    let links_a = link_groups(ta);
    let links_b = link_groups(tb);
    let paths: BTreeSet<&PathBuf> = ta.keys().chain(tb.keys()).collect();
    for path in paths {
        let (na, nb) = match (ta.get(path), tb.get(path)) {
            (Some(na), Some(nb)) => (na, nb),
            (Some(n), None) => {
                diff(path, format!("only in first ({:?})", n.kind));
                continue;
            }
            (None, Some(n)) => {
                diff(path, format!("only in second ({:?})", n.kind));
                continue;
            }
            (None, None) => continue,
        };
        if na.kind != nb.kind {
            diff(path, format!("type: {:?} != {:?}", na.kind, nb.kind));
            continue;
        }
        if na.mode != nb.mode {
            diff(path, format!("mode: {:#o} != {:#o}", na.mode, nb.mode));
        }
        if (na.uid, na.gid) != (nb.uid, nb.gid) {
            diff(
                path,
                format!("owner: {}:{} != {}:{}", na.uid, na.gid, nb.uid, nb.gid),
            );
        }
        let skip_mtime = (na.kind == Kind::Dir && opts.ignore_dir_mtime)
            || (path.as_os_str().is_empty() && opts.ignore_root_mtime)
            || (na.is_whiteout() && nb.is_whiteout() && opts.ignore_whiteout_mtime);
        if !skip_mtime && na.mtime != nb.mtime {
            diff(
                path,
                format!(
                    "mtime: {}.{:09} != {}.{:09}",
                    na.mtime.0, na.mtime.1, nb.mtime.0, nb.mtime.1
                ),
            );
        }
        if na.kind == Kind::File && (na.size, &na.sha256) != (nb.size, &nb.sha256) {
            diff(
                path,
                format!(
                    "content: {} bytes sha256 {} != {} bytes sha256 {}",
                    na.size,
                    na.sha256.as_deref().unwrap_or("-"),
                    nb.size,
                    nb.sha256.as_deref().unwrap_or("-")
                ),
            );
        }
        if na.link_target != nb.link_target {
            diff(
                path,
                format!("symlink: {:?} != {:?}", na.link_target, nb.link_target),
            );
        }
        if na.rdev != nb.rdev {
            diff(path, format!("device: {:?} != {:?}", na.rdev, nb.rdev));
        }
        if na.xattrs != nb.xattrs {
            diff(
                path,
                format!(
                    "xattrs: {} != {}",
                    show_xattrs(&na.xattrs),
                    show_xattrs(&nb.xattrs)
                ),
            );
        }
        let (ga, gb) = (links_a.get(path), links_b.get(path));
        if ga != gb {
            diff(path, format!("hardlinks: {ga:?} != {gb:?}"));
        }
    }
    diffs
}

/// For each non-directory path that shares its inode with others in the tree: the sorted list of
/// all paths of that inode.
fn link_groups(tree: &BTreeMap<PathBuf, Node>) -> HashMap<PathBuf, Vec<PathBuf>> {
    let mut by_inode: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    for (path, node) in tree {
        if node.kind != Kind::Dir {
            by_inode.entry(node.inode).or_default().push(path.clone());
        }
    }
    let mut out = HashMap::new();
    for group in by_inode.into_values().filter(|g| g.len() > 1) {
        for p in &group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

fn show_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let items: Vec<String> = x
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={:?}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            )
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}
