//! The two layer tars of the `features` test image: every tar feature a layer can carry
//! (files of all types, modes with special bits, odd owners, xattrs, PAX long names and ns
//! mtimes, non-UTF-8 names) and, in the second layer, whiteouts and an opaque directory.
//! Written by hand (PAX records, raw header bytes) so nothing is normalised on the way.

use std::io::Write;

use anyhow::Result;
use chunksnap_testkit::noise;
use tar::{Builder, EntryType, Header};

/// Base mtime of every entry (2023-11-14T22:13:20Z).
const T0: u64 = 1_700_000_000;

/// One tar entry to write.
struct Spec<'a> {
    path: &'a [u8],
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime_ns: u32,
    data: &'a [u8],
    link: &'a [u8],
    dev: (u32, u32),
    xattrs: Vec<(&'a str, Vec<u8>)>,
}

impl<'a> Spec<'a> {
    fn new(path: &'a [u8], kind: EntryType, mode: u32) -> Self {
        Self {
            path,
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            data: b"",
            link: b"",
            dev: (0, 0),
            xattrs: Vec::new(),
        }
    }
    fn file(path: &'a [u8], mode: u32, data: &'a [u8]) -> Self {
        Self {
            data,
            ..Self::new(path, EntryType::Regular, mode)
        }
    }
    fn dir(path: &'a [u8], mode: u32) -> Self {
        Self::new(path, EntryType::Directory, mode)
    }
    fn link(path: &'a [u8], kind: EntryType, target: &'a [u8]) -> Self {
        Self {
            link: target,
            ..Self::new(path, kind, 0o777)
        }
    }
}

const USTAR_ID_MAX: u64 = 0o7777777;

fn put<W: Write>(b: &mut Builder<W>, s: &Spec<'_>) -> Result<()> {
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if s.path.len() > 100 {
        pax.push(("path".into(), s.path.to_vec()));
    }
    if s.link.len() > 100 {
        pax.push(("linkpath".into(), s.link.to_vec()));
    }
    if s.uid > USTAR_ID_MAX {
        pax.push(("uid".into(), s.uid.to_string().into_bytes()));
    }
    if s.gid > USTAR_ID_MAX {
        pax.push(("gid".into(), s.gid.to_string().into_bytes()));
    }
    if s.mtime_ns != 0 {
        pax.push((
            "mtime".into(),
            format!("{T0}.{:09}", s.mtime_ns).into_bytes(),
        ));
    }
    for (k, v) in &s.xattrs {
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let mut h = Header::new_ustar();
    {
        let old = h.as_old_mut();
        let n = s.path.len().min(100);
        old.name[..n].copy_from_slice(&s.path[..n]);
        let n = s.link.len().min(100);
        old.linkname[..n].copy_from_slice(&s.link[..n]);
    }
    h.set_entry_type(s.kind);
    h.set_mode(s.mode);
    h.set_uid(s.uid.min(USTAR_ID_MAX));
    h.set_gid(s.gid.min(USTAR_ID_MAX));
    h.set_mtime(T0);
    h.set_size(s.data.len() as u64);
    if matches!(s.kind, EntryType::Char | EntryType::Block) {
        h.set_device_major(s.dev.0)?;
        h.set_device_minor(s.dev.1)?;
    }
    h.set_cksum();
    b.append(&h, s.data)?;
    Ok(())
}

/// An 8 MiB file that is mostly zeros with two noisy MiB-sized islands (holes when assembled).
fn sparse_ish(seed: u64) -> Vec<u8> {
    let mib = 1 << 20;
    let mut v = vec![0u8; 8 * mib];
    v[..mib].copy_from_slice(&noise(seed, mib));
    v[6 * mib..7 * mib].copy_from_slice(&noise(seed + 1, mib));
    v
}

/// `security.capability` v2 granting CAP_NET_BIND_SERVICE (effective + permitted).
fn file_capability() -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted, high word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, high word
    v
}

/// Path of the long-name file (> 100 bytes, each component < 255).
pub fn long_path() -> Vec<u8> {
    let mut p = b"long/".to_vec();
    p.extend(std::iter::repeat_n(b'd', 120));
    p.push(b'/');
    p.extend(std::iter::repeat_n(b'f', 130));
    p.extend_from_slice(b".txt");
    p
}

/// Layer 1 of `features`.
pub fn layer1() -> Result<Vec<u8>> {
    let mut b = Builder::new(Vec::new());
    let hello = b"hello, chunksnap\n";
    let text = "the quick brown fox jumps over the lazy dog\n".repeat(2000);
    let big = sparse_ish(7);
    let long = long_path();
    let mut long_dir = long.clone();
    long_dir.truncate(b"long/".len() + 120 + 1);
    let long_link_target = long.clone();

    let specs = vec![
        Spec::dir(b"dir/", 0o755),
        Spec::file(b"dir/a.txt", 0o644, b"a\n"),
        Spec::dir(b"dir/sub/", 0o750),
        Spec::file(b"dir/sub/b.txt", 0o600, b"b\n"),
        Spec::file(b"empty", 0o644, b""),
        Spec::file(b"hello.txt", 0o644, hello),
        Spec::file(b"text.txt", 0o644, text.as_bytes()),
        Spec::file(b"big.bin", 0o644, &big),
        Spec::link(b"link-to-hello", EntryType::Symlink, b"hello.txt"),
        Spec::link(b"abs-link", EntryType::Symlink, b"/etc/passwd"),
        Spec::link(b"dangling", EntryType::Symlink, b"does/not/exist"),
        Spec::link(b"hard-hello", EntryType::Link, b"hello.txt"),
        Spec::link(b"dir/hard-text", EntryType::Link, b"text.txt"),
        Spec::dir(b"dev/", 0o755),
        Spec {
            dev: (1, 3),
            ..Spec::new(b"dev/null-like", EntryType::Char, 0o666)
        },
        Spec {
            dev: (7, 0),
            ..Spec::new(b"dev/loop-like", EntryType::Block, 0o660)
        },
        Spec::new(b"fifo", EntryType::Fifo, 0o644),
        Spec::file(b"setuid", 0o4755, b"#!/bin/sh\n"),
        Spec::file(b"setgid", 0o2755, b"#!/bin/sh\n"),
        Spec::dir(b"sticky/", 0o1777),
        Spec {
            uid: 1234,
            gid: 5678,
            ..Spec::file(b"owned", 0o640, b"owned\n")
        },
        Spec {
            uid: 3_000_000_000,
            gid: 65534,
            ..Spec::file(b"owned-large-uid", 0o644, b"large\n")
        },
        Spec {
            xattrs: vec![
                ("user.foo", b"bar".to_vec()),
                ("user.empty", Vec::new()),
                ("user.binary", vec![0, 1, 2, 255]),
            ],
            ..Spec::file(b"xattrs", 0o644, b"x\n")
        },
        Spec {
            xattrs: vec![("security.capability", file_capability())],
            ..Spec::file(b"cap-bin", 0o755, b"\x7fELF-not-really\n")
        },
        Spec {
            xattrs: vec![("user.dir", b"1".to_vec())],
            ..Spec::dir(b"xattr-dir/", 0o755)
        },
        Spec::dir(b"long/", 0o755),
        Spec::dir(&long_dir, 0o755),
        Spec::file(&long, 0o644, b"long name\n"),
        Spec::link(b"long-link", EntryType::Symlink, &long_link_target),
        Spec::file(b"non-utf8-\xff\xfe.txt", 0o644, b"bytes\n"),
        Spec::file("ünïcødé.txt".as_bytes(), 0o644, b"utf8\n"),
        Spec {
            mtime_ns: 123_456_789,
            ..Spec::file(b"mtime-ns", 0o644, b"ns\n")
        },
    ];
    for s in &specs {
        put(&mut b, s)?;
    }
    Ok(b.into_inner()?)
}

/// Layer 2 of `features`: whiteouts, an opaque dir, and changed content.
pub fn layer2() -> Result<Vec<u8>> {
    let mut b = Builder::new(Vec::new());
    let mut big = sparse_ish(7);
    big[100_000..100_100].fill(0xab);
    let specs = vec![
        Spec::file(b".wh.hello.txt", 0o644, b""),
        Spec::dir(b"dir/", 0o755),
        Spec::file(b"dir/.wh..wh..opq", 0o644, b""),
        Spec::file(b"dir/new.txt", 0o644, b"new\n"),
        Spec::file(b"big.bin", 0o644, &big),
        Spec::dir(b"dev/", 0o755),
        Spec::file(b"dev/.wh.loop-like", 0o644, b""),
        Spec::file(b"added.txt", 0o644, b"added in layer 2\n"),
    ];
    for s in &specs {
        put(&mut b, s)?;
    }
    Ok(b.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_reads_back_with_pax() -> Result<()> {
        let data = layer1()?;
        let mut ar = tar::Archive::new(data.as_slice());
        let mut seen = Vec::new();
        for e in ar.entries()? {
            let mut e = e?;
            let path = e.path_bytes().into_owned();
            if path == long_path() {
                assert_eq!(e.header().entry_type(), EntryType::Regular);
            }
            if path == b"owned-large-uid" {
                let pax = e.pax_extensions()?.expect("pax");
                let uid = pax
                    .filter_map(Result::ok)
                    .find(|x| x.key() == Ok("uid"))
                    .expect("uid record");
                assert_eq!(uid.value_bytes(), b"3000000000");
            }
            seen.push(path);
        }
        assert!(seen.contains(&long_path()));
        assert!(seen.iter().any(|p| p == b"non-utf8-\xff\xfe.txt"));
        Ok(())
    }
}
