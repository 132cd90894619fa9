//! Reading a layer tar: every entry becomes an index [`Entry`], and the bytes of every regular
//! file are written, in tar order, to the content stream.
//!
//! Paths are normalised to the index form (see `format::index`): no leading `./` or `/`, no empty
//! or `.` components, no trailing `/`; `..` is resolved lexically and clamped at the root, as
//! containerd's applier does (`filepath.Clean` + `fs.RootPath`). Entries naming the root itself
//! (`./`, `/`) are skipped, as containerd ignores them ("resolved to root").
//! A path named twice is resolved as extraction resolves it (containerd's applier, GNU tar): a
//! directory over a directory updates its metadata in place; anything else replaces the earlier
//! entry (and, for a directory, everything beneath it). When a replaced file is the target of a
//! surviving hardlink, that hardlink takes over the file's entry so the link keeps the old inode's
//! content. Whiteouts (`.wh.*`) stay ordinary entries; PAX global headers are ignored; GNU sparse
//! files, multi-volume and other unknown entry types are refused with their path. GNU long
//! names and PAX extended headers, which `tar` reads whole, are bounded ([`MAX_TAR_EXTENSION`]).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{self, Read, Seek, Write};

use chunksnap_format::pb::{Entry, EntryType, Xattr};
use tar::{Archive, EntryType as TarType};

use chunksnap_format::digest::Sha256Writer;

mod limits;
pub use limits::{ExtensionTooLarge, MAX_TAR_EXTENSION};

/// What a tar scan produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TarScan {
    /// Entries in tar order, paths unique.
    pub entries: Vec<Entry>,
    /// Bytes written to the content stream.
    pub content_size: u64,
}

/// Errors scanning a tar.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("reading tar: {0}")]
    Read(#[source] io::Error),
    #[error("writing the content stream: {0}")]
    Write(#[source] io::Error),
    #[error("{path:?}: unsupported tar entry type {kind}")]
    Unsupported { path: String, kind: String },
    #[error("{path:?}: unsafe path")]
    UnsafePath { path: String },
    #[error("{path:?}: bad {field}: {reason}")]
    BadField {
        path: String,
        field: &'static str,
        reason: String,
    },
    #[error(transparent)]
    ExtensionTooLarge(#[from] ExtensionTooLarge),
    #[error("{path:?}: file is {expected} bytes but the tar held {actual}")]
    ShortFile {
        path: String,
        expected: u64,
        actual: u64,
    },
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Normalises a tar path to the index form: empty for the root itself, `None` if it contains
/// NUL.
pub fn normalize_path(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.contains(&0) {
        return None;
    }
    let mut comps: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    Some(comps.join(&b'/'))
}

/// Field name marking a PAX sparse file in `header_fields` errors.
const SPARSE: &str = "sparse";

/// Reads `reader` as a tar, writing regular file contents to `content`.
pub fn scan_tar(reader: impl Read, content: &mut impl Write) -> Result<TarScan, TarError> {
    scan_tar_with(reader, content, &mut |_, _| {})
}

/// [`scan_tar`], calling `on_content(position, size)` just before each regular file's content
/// is read (`position`: where it starts in the tar stream), for [`split`].
pub fn scan_tar_with(
    reader: impl Read,
    content: &mut impl Write,
    on_content: &mut dyn FnMut(u64, u64),
) -> Result<TarScan, TarError> {
    let mut archive = Archive::new(limits::Limited::new(reader));
    let entries = archive.entries().map_err(read_error)?;
    scan_entries(entries, Some(content), on_content)
}

/// [`scan_tar_with`] reading headers only: file content is seeked over, never read, and entries
/// have no content digest.
pub fn scan_tar_headers_with(
    reader: impl Read + Seek,
    on_content: &mut dyn FnMut(u64, u64),
) -> Result<TarScan, TarError> {
    let mut archive = Archive::new(limits::Limited::new(reader));
    let entries = archive.entries_with_seek().map_err(read_error)?;
    scan_entries(entries, None::<&mut io::Sink>, on_content)
}

/// The entries of a tar; with `content`, file contents are copied there and hashed.
fn scan_entries<R: Read>(
    entries: tar::Entries<'_, R>,
    mut content: Option<&mut impl Write>,
    on_content: &mut dyn FnMut(u64, u64),
) -> Result<TarScan, TarError> {
    let mut list = EntryList::default();
    let mut offset = 0u64;
    for item in entries {
        let mut te = item.map_err(read_error)?;
        let raw_path = te.path_bytes().into_owned();
        let path_str = || show(&raw_path);
        let kind = match te.header().entry_type() {
            TarType::XGlobalHeader => continue,
            TarType::Regular | TarType::Continuous if raw_path.ends_with(b"/") => EntryType::Dir,
            TarType::Regular | TarType::Continuous => EntryType::File,
            TarType::Directory => EntryType::Dir,
            TarType::Symlink => EntryType::Symlink,
            TarType::Link => EntryType::Hardlink,
            TarType::Char => EntryType::Char,
            TarType::Block => EntryType::Block,
            TarType::Fifo => EntryType::Fifo,
            other => {
                return Err(TarError::Unsupported {
                    path: path_str(),
                    kind: format!("{other:?} ({:?})", other.as_byte() as char),
                });
            }
        };
        let path =
            normalize_path(&raw_path).ok_or_else(|| TarError::UnsafePath { path: path_str() })?;
        if path.is_empty() {
            continue;
        }
        let mut e = header_fields(&mut te, kind).map_err(|(field, reason)| match field {
            SPARSE => TarError::Unsupported {
                path: path_str(),
                kind: reason,
            },
            _ => TarError::BadField {
                path: path_str(),
                field,
                reason,
            },
        })?;
        e.path = path;
        match kind {
            EntryType::File => {
                let size = te.size();
                on_content(te.raw_file_position(), size);
                e.size = size;
                e.offset = offset;
                offset += size;
                // Headers only: the tar reader seeks over the content to the next header.
                let Some(content) = content.as_deref_mut() else {
                    list.add(e);
                    continue;
                };
                let mut hashed = Sha256Writer::new(content);
                let copied = io::copy(&mut te, &mut hashed).map_err(|err| {
                    if limits::extension_error(&err).is_some() {
                        read_error(err)
                    } else if err.kind() == io::ErrorKind::UnexpectedEof {
                        TarError::Read(err)
                    } else {
                        TarError::Write(err)
                    }
                })?;
                if copied != size {
                    return Err(TarError::ShortFile {
                        path: path_str(),
                        expected: size,
                        actual: copied,
                    });
                }
                e.content_digest = hashed.finish().1.as_bytes().to_vec();
            }
            EntryType::Symlink | EntryType::Hardlink => {
                let target = te
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                e.link_target = if kind == EntryType::Hardlink {
                    match normalize_path(&target) {
                        Some(t) if !t.is_empty() => t,
                        _ => {
                            return Err(TarError::UnsafePath {
                                path: show(&target),
                            });
                        }
                    }
                } else {
                    target
                };
            }
            _ => {}
        }
        list.add(e);
    }
    Ok(TarScan {
        entries: list.into_entries(),
        content_size: offset,
    })
}

/// A read error, or the extension record [`limits::Limited`] refused.
fn read_error(err: io::Error) -> TarError {
    match limits::extension_error(&err) {
        Some(e) => TarError::ExtensionTooLarge(ExtensionTooLarge {
            offset: e.offset,
            kind: e.kind,
            size: e.size,
        }),
        None => TarError::Read(err),
    }
}

/// Metadata common to all entry types, with PAX overrides (mtime with ns, uname/gname, xattrs).
fn header_fields<R: Read>(
    te: &mut tar::Entry<'_, R>,
    kind: EntryType,
) -> Result<Entry, (&'static str, String)> {
    let h = te.header();
    let err = |field: &'static str| move |e: io::Error| (field, e.to_string());
    // An all-blank numeric field means 0 (Go's archive/tar and GNU tar read it so; some
    // writers leave fields they do not use empty).
    let num = |field: &'static str, raw: &[u8], v: io::Result<u64>| match v {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        v => v.map_err(err(field)),
    };
    let old = h.as_old();
    let mode = num("mode", &old.mode, h.mode().map(u64::from))?;
    let mtime = num("mtime", &old.mtime, h.mtime())?;
    let mut e = Entry {
        r#type: kind as i32,
        mode: (mode & 0o7777) as u32,
        uid: num("uid", &old.uid, h.uid())?,
        gid: num("gid", &old.gid, h.gid())?,
        mtime_sec: i64::try_from(mtime).map_err(|e| ("mtime", e.to_string()))?,
        uname: h.username_bytes().map(show).unwrap_or_default(),
        gname: h.groupname_bytes().map(show).unwrap_or_default(),
        ..Entry::default()
    };
    if matches!(kind, EntryType::Char | EntryType::Block) {
        e.dev_major = h.device_major().map_err(err("device major"))?.unwrap_or(0);
        e.dev_minor = h.device_minor().map_err(err("device minor"))?.unwrap_or(0);
    }
    if let Some(exts) = te.pax_extensions().map_err(err("pax header"))? {
        for ext in exts {
            let ext = ext.map_err(err("pax header"))?;
            let (key, value) = (ext.key_bytes(), ext.value_bytes());
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                let name = std::str::from_utf8(name)
                    .map_err(|_| ("xattr", format!("non-UTF-8 name {:?}", show(name))))?;
                e.xattrs.retain(|x| x.name != name);
                e.xattrs.push(Xattr {
                    name: name.to_owned(),
                    value: value.to_vec(),
                });
            } else {
                match key {
                    b"mtime" => {
                        (e.mtime_sec, e.mtime_nsec) =
                            parse_pax_time(value).ok_or(("mtime", show(value)))?
                    }
                    b"uname" => e.uname = show(value),
                    b"gname" => e.gname = show(value),
                    // PAX-format sparse files carry a sparse map inside their data; copying that
                    // as content would be silently wrong.
                    k if k.starts_with(b"GNU.sparse.") => {
                        return Err((SPARSE, "PAX GNU sparse file".into()));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(e)
}

/// Parses a PAX time (`[-]sec[.frac]`) into seconds and nanoseconds (truncating past 9 digits,
/// normalised so nanoseconds are never negative, e.g. `-1.5` → (-2, 500000000)).
pub fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(value).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(match (neg, nsec) {
        (false, _) => (sec, nsec),
        (true, 0) => (-sec, 0),
        (true, n) => (-sec - 1, 1_000_000_000 - n),
    })
}

/// Entries with extraction's "later wins" rule applied as they arrive.
#[derive(Default)]
struct EntryList {
    slots: Vec<Option<Entry>>,
    by_path: HashMap<Vec<u8>, usize>,
    /// Hashes of every ancestor of every path added: the directories extraction creates
    /// implicitly. Hashes built in one pass per path keep this linear in the path length (a set
    /// of prefixes costs O(depth²) per path: a hostile 10,000-level path would take gigabytes);
    /// a collision would only make `add` look for a subtree that is not there.
    parents: HashSet<u64>,
    hasher: RandomState,
}

impl EntryList {
    /// Hashes of `path`'s ancestors (each prefix before a `/`) and of `path` itself, in one pass.
    /// Every path is fed to the hasher in the same pieces (split before each `/`), so a prefix
    /// of one path hashes like the same path on its own.
    fn prefix_hashes(&self, path: &[u8]) -> (Vec<u64>, u64) {
        let mut h = self.hasher.build_hasher();
        let mut ancestors = Vec::new();
        let mut from = 0;
        for (k, b) in path.iter().enumerate() {
            if *b == b'/' {
                h.write(&path[from..k]);
                from = k;
                ancestors.push(h.clone().finish());
            }
        }
        h.write(&path[from..]);
        (ancestors, h.finish())
    }

    fn add(&mut self, e: Entry) {
        let is_dir = |x: &Entry| x.r#type == EntryType::Dir as i32;
        let existing = self.by_path.get(&e.path).copied();
        let old_is_dir = existing
            .and_then(|j| self.slots[j].as_ref())
            .is_some_and(is_dir);
        if let Some(j) = existing.filter(|_| old_is_dir && is_dir(&e)) {
            self.slots[j] = Some(e);
            return;
        }
        // A non-directory also replaces a directory that only existed implicitly.
        let (ancestors, own) = self.prefix_hashes(&e.path);
        let subtree = old_is_dir || (!is_dir(&e) && self.parents.contains(&own));
        if existing.is_some() || subtree {
            self.remove(existing, &e.path, subtree);
        }
        self.parents.extend(ancestors);
        self.by_path.insert(e.path.clone(), self.slots.len());
        self.slots.push(Some(e));
    }

    /// Removes the entry at slot `existing` and, with `subtree`, every entry beneath `path`,
    /// rescuing hardlinked files.
    fn remove(&mut self, existing: Option<usize>, path: &[u8], subtree: bool) {
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        let mut gone: Vec<usize> = existing.into_iter().collect();
        if subtree {
            gone.extend(
                self.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.as_ref().is_some_and(|e| e.path.starts_with(&prefix)))
                    .map(|(i, _)| i),
            );
        }
        let gone_set: HashSet<usize> = gone.iter().copied().collect();
        for &i in &gone {
            let Some(old) = self.slots[i].take() else {
                continue;
            };
            self.by_path.remove(&old.path);
            if old.r#type != EntryType::Dir as i32 {
                self.rescue_links(i, old, &gone_set);
            }
        }
    }

    /// `old` (removed from slot `i`) may be the target of live hardlinks: the first becomes the
    /// entry itself, at `old`'s position (keeping content in stream order); the rest point to it.
    fn rescue_links(&mut self, i: usize, mut old: Entry, gone: &HashSet<usize>) {
        let is_link_to =
            |e: &Entry, p: &[u8]| e.r#type == EntryType::Hardlink as i32 && e.link_target == p;
        let links: Vec<usize> = (0..self.slots.len())
            .filter(|k| {
                !gone.contains(k)
                    && self.slots[*k]
                        .as_ref()
                        .is_some_and(|e| is_link_to(e, &old.path))
            })
            .collect();
        let Some((&first, rest)) = links.split_first() else {
            return;
        };
        let Some(heir) = self.slots[first].take() else {
            return;
        };
        let old_path = std::mem::replace(&mut old.path, heir.path.clone());
        for &k in rest {
            if let Some(link) = self.slots[k].as_mut() {
                link.link_target = heir.path.clone();
            }
        }
        // Hardlinks to the old path that came before the heir cannot exist: links name earlier
        // entries, and the heir is the earliest link.
        debug_assert!(
            !self
                .slots
                .iter()
                .flatten()
                .any(|e| is_link_to(e, &old_path))
        );
        self.by_path.insert(heir.path, i);
        self.slots[i] = Some(old);
    }

    fn into_entries(self) -> Vec<Entry> {
        self.slots.into_iter().flatten().collect()
    }
}

pub mod split;

#[cfg(test)]
mod tests;
