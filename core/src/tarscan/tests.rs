//! Tests for `tarscan`: tars built in memory with `tar::Builder`.

use super::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use tar::{Builder, Header};

fn header(kind: TarType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_700_000_000);
    h
}

fn add(b: &mut Builder<Vec<u8>>, kind: TarType, path: &str, data: &[u8]) {
    let mut h = header(kind, data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn add_link(b: &mut Builder<Vec<u8>>, kind: TarType, path: &str, target: &str) {
    let mut h = header(kind, 0);
    b.append_link(&mut h, path, target).unwrap();
}

fn scan(tar: &[u8]) -> (TarScan, Vec<u8>) {
    let mut content = Vec::new();
    let s = scan_tar(tar, &mut content).unwrap();
    (s, content)
}

fn paths(s: &TarScan) -> Vec<String> {
    s.entries.iter().map(|e| show(&e.path)).collect()
}

#[test]
fn every_entry_type_and_content_stream() {
    let mut b = Builder::new(Vec::new());
    add(&mut b, TarType::Directory, "./", b"");
    add(&mut b, TarType::Directory, "./etc/", b"");
    add(
        &mut b,
        TarType::Regular,
        "./etc/hosts",
        b"127.0.0.1 localhost\n",
    );
    add(&mut b, TarType::Continuous, "etc/contig", b"xyz");
    add_link(&mut b, TarType::Symlink, "etc/sl", "../usr/lib");
    add_link(&mut b, TarType::Link, "etc/hl", "./etc/hosts");
    let mut h = header(TarType::Char, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", &[][..]).unwrap();
    let mut h = header(TarType::Block, 0);
    h.set_device_major(8).unwrap();
    h.set_device_minor(1).unwrap();
    b.append_data(&mut h, "dev/sda1", &[][..]).unwrap();
    add(&mut b, TarType::Fifo, "run/fifo", b"");
    add(&mut b, TarType::Regular, "etc/.wh.old", b"");
    add(&mut b, TarType::Regular, "etc/.wh..wh..opq", b"");
    let tar = b.into_inner().unwrap();

    let (s, content) = scan(&tar);
    assert_eq!(
        paths(&s),
        [
            "etc",
            "etc/hosts",
            "etc/contig",
            "etc/sl",
            "etc/hl",
            "dev/null",
            "dev/sda1",
            "run/fifo",
            "etc/.wh.old",
            "etc/.wh..wh..opq"
        ]
    );
    assert_eq!(content, b"127.0.0.1 localhost\nxyz");
    assert_eq!(s.content_size, content.len() as u64);
    let e = &s.entries;
    assert_eq!(e[0].r#type, EntryType::Dir as i32);
    assert_eq!(
        (e[1].r#type, e[1].offset, e[1].size),
        (EntryType::File as i32, 0, 20)
    );
    assert_eq!((e[2].offset, e[2].size), (20, 3));
    assert_eq!(
        (e[1].uid, e[1].gid, e[1].mode, e[1].mtime_sec),
        (1000, 1001, 0o644, 1_700_000_000)
    );
    assert_eq!(
        (e[3].r#type, e[3].link_target.as_slice()),
        (EntryType::Symlink as i32, &b"../usr/lib"[..])
    );
    assert_eq!(
        (e[4].r#type, e[4].link_target.as_slice()),
        (EntryType::Hardlink as i32, &b"etc/hosts"[..])
    );
    assert_eq!(
        (e[5].r#type, e[5].dev_major, e[5].dev_minor),
        (EntryType::Char as i32, 1, 3)
    );
    assert_eq!(
        (e[6].r#type, e[6].dev_major, e[6].dev_minor),
        (EntryType::Block as i32, 8, 1)
    );
    assert_eq!(e[7].r#type, EntryType::Fifo as i32);
    assert_eq!(e[8].r#type, EntryType::File as i32);
}

#[test]
fn pax_xattrs_mtime_ids_and_names() {
    let mut b = Builder::new(Vec::new());
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    b.append_pax_extensions([
        ("SCHILY.xattr.security.capability", cap),
        ("SCHILY.xattr.user.note", &b"hi\0there"[..]),
        ("mtime", &b"1700000000.123456789123"[..]),
        ("uid", &b"3000000000"[..]),
        ("gid", &b"4000000000"[..]),
        ("uname", &b"nobody-long-name"[..]),
    ])
    .unwrap();
    add(&mut b, TarType::Regular, "bin/ping", b"ELF");
    b.append_pax_extensions([("mtime", &b"-1.5"[..])]).unwrap();
    add(&mut b, TarType::Directory, "old", b"");
    let tar = b.into_inner().unwrap();

    let (s, _) = scan(&tar);
    let e = &s.entries[0];
    assert_eq!(e.xattrs.len(), 2);
    assert_eq!(
        (e.xattrs[0].name.as_str(), e.xattrs[0].value.as_slice()),
        ("security.capability", cap)
    );
    assert_eq!(e.xattrs[1].value, b"hi\0there");
    assert_eq!((e.mtime_sec, e.mtime_nsec), (1_700_000_000, 123_456_789));
    assert_eq!((e.uid, e.gid), (3_000_000_000, 4_000_000_000));
    assert_eq!(e.uname, "nobody-long-name");
    assert_eq!(
        (s.entries[1].mtime_sec, s.entries[1].mtime_nsec),
        (-2, 500_000_000)
    );
}

#[test]
fn long_and_non_utf8_names() {
    let long = format!("{}/file", "d".repeat(150));
    let long_target = format!("{}/target", "t".repeat(150));
    let mut b = Builder::new(Vec::new());
    add(&mut b, TarType::Regular, &long, b"x");
    add_link(&mut b, TarType::Symlink, "link", &long_target);
    let mut h = header(TarType::Regular, 1);
    h.set_path(OsStr::from_bytes(b"caf\xe9")).unwrap();
    h.set_cksum();
    b.append(&h, &b"y"[..]).unwrap();
    let tar = b.into_inner().unwrap();

    let (s, content) = scan(&tar);
    assert_eq!(s.entries[0].path, long.as_bytes());
    assert_eq!(s.entries[1].link_target, long_target.as_bytes());
    assert_eq!(s.entries[2].path, b"caf\xe9");
    assert_eq!(content, b"xy");
}

#[test]
fn normalizes_paths() {
    assert_eq!(normalize_path(b"./a//b/./c/").unwrap(), b"a/b/c");
    assert_eq!(normalize_path(b"/etc").unwrap(), b"etc");
    assert_eq!(normalize_path(b"./").unwrap(), b"");
    assert_eq!(normalize_path(b"").unwrap(), b"");
    // Like Go's filepath.Clean joined beneath the root: `..` never climbs out.
    assert_eq!(normalize_path(b"a/../../b").unwrap(), b"b");
    assert_eq!(normalize_path(b"../../etc/passwd").unwrap(), b"etc/passwd");
    assert!(normalize_path(b"a\0b").is_none());
}

#[test]
fn dotdot_stays_beneath_root_and_unsupported_types_fail() {
    let mut h = header(TarType::Regular, 1);
    // `set_path` refuses "..", so write the raw name field like a hostile tar would: it stays
    // beneath the root, as with containerd.
    h.as_old_mut().name[..8].copy_from_slice(b"../evil\0");
    h.set_cksum();
    let mut b = Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    add(&mut b, TarType::Directory, "./", b""); // the root itself: skipped
    let (s, _) = scan(&b.into_inner().unwrap());
    assert_eq!(paths(&s), ["evil"]);

    let mut b = Builder::new(Vec::new());
    b.append_pax_extensions([
        ("GNU.sparse.major", &b"1"[..]),
        ("GNU.sparse.minor", &b"0"[..]),
    ])
    .unwrap();
    add(
        &mut b,
        TarType::Regular,
        "GNUSparseFile.0/disk.img",
        b"map+data",
    );
    let r = scan_tar(b.into_inner().unwrap().as_slice(), &mut Vec::new());
    assert!(matches!(r, Err(TarError::Unsupported { .. })), "{r:?}");

    // A GNU sparse file (old GNU format): the tar crate parses it; we refuse it by name.
    let mut h = header(TarType::GNUSparse, 0);
    h.as_gnu_mut().unwrap().set_real_size(0);
    h.set_path("sparse.img").unwrap();
    h.set_cksum();
    let mut b = Builder::new(Vec::new());
    b.append(&h, &[][..]).unwrap();
    match scan_tar(b.into_inner().unwrap().as_slice(), &mut Vec::new()) {
        Err(TarError::Unsupported { path, .. }) => assert_eq!(path, "sparse.img"),
        other => panic!("{other:?}"),
    }

    for kind in [TarType::new(b'V'), TarType::new(b'M')] {
        let mut b = Builder::new(Vec::new());
        add(&mut b, kind, "weird", b"");
        let r = scan_tar(b.into_inner().unwrap().as_slice(), &mut Vec::new());
        match r {
            Err(TarError::Unsupported { path, .. }) => assert_eq!(path, "weird"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn truncated_tar_is_an_error() {
    let mut b = Builder::new(Vec::new());
    add(&mut b, TarType::Regular, "f", &[7u8; 5000]);
    let tar = b.into_inner().unwrap();
    assert!(scan_tar(&tar[..2048], &mut Vec::new()).is_err());
}

#[test]
fn global_pax_header_is_ignored() {
    let mut h = header(TarType::XGlobalHeader, 0);
    let rec = b"22 comment=git-sha-1x\n";
    h.set_size(rec.len() as u64);
    h.set_path("pax_global_header").unwrap();
    h.set_cksum();
    let mut b = Builder::new(Vec::new());
    b.append(&h, &rec[..]).unwrap();
    add(&mut b, TarType::Regular, "a", b"1");
    let (s, _) = scan(&b.into_inner().unwrap());
    assert_eq!(paths(&s), ["a"]);
}

#[test]
fn later_entries_win_like_extraction() {
    let mut b = Builder::new(Vec::new());
    add(&mut b, TarType::Directory, "d", b"");
    add(&mut b, TarType::Regular, "d/x", b"old-x");
    add(&mut b, TarType::Regular, "f", b"old-f");
    add_link(&mut b, TarType::Link, "g", "f");
    add_link(&mut b, TarType::Link, "h", "f");
    let mut h = header(TarType::Directory, 0);
    h.set_mode(0o700);
    b.append_data(&mut h, "d", &[][..]).unwrap(); // dir over dir: metadata update in place
    add(&mut b, TarType::Regular, "f", b"new-f"); // replaces f; g inherits the old inode
    add(&mut b, TarType::Regular, "e", b"");
    add(&mut b, TarType::Directory, "e", b""); // dir replaces file
    add(&mut b, TarType::Regular, "d2/y", b"y");
    add_link(&mut b, TarType::Symlink, "d2", "d"); // symlink replaces (implicit) path
    let (s, content) = scan(&b.into_inner().unwrap());
    // The symlink replaced the directory d2 that extraction created for d2/y, and d2/y with it.
    assert_eq!(paths(&s), ["d", "d/x", "g", "h", "f", "e", "d2"]);
    assert_eq!(content, b"old-xold-fnew-fy");
    let e = &s.entries;
    assert_eq!(e[0].mode, 0o700);
    assert_eq!(
        (e[2].r#type, e[2].offset, e[2].size),
        (EntryType::File as i32, 5, 5)
    );
    assert_eq!(
        (e[3].r#type, e[3].link_target.as_slice()),
        (EntryType::Hardlink as i32, &b"g"[..])
    );
    assert_eq!((e[4].offset, e[4].size), (10, 5));
    assert_eq!(e[5].r#type, EntryType::Dir as i32);

    // A file over a directory removes the directory's subtree.
    let mut b = Builder::new(Vec::new());
    add(&mut b, TarType::Directory, "d", b"");
    add(&mut b, TarType::Regular, "d/x", b"x");
    add(&mut b, TarType::Regular, "dx", b"");
    add(&mut b, TarType::Regular, "d", b"now a file");
    let (s, _) = scan(&b.into_inner().unwrap());
    assert_eq!(paths(&s), ["dx", "d"]);
}

#[test]
fn scanned_entries_pass_index_validation() {
    use chunksnap_format::chunker::ChunkerParams;
    use chunksnap_format::pb::{LayerIndex, Source};
    let mut b = Builder::new(Vec::new());
    add(&mut b, TarType::Directory, "./", b"");
    add(&mut b, TarType::Regular, "a", b"");
    add_link(&mut b, TarType::Link, "b", "a");
    add(&mut b, TarType::Regular, "a", b"");
    let (s, _) = scan(&b.into_inner().unwrap());
    let d = chunksnap_format::digest::Digest::of(b"").to_string();
    let index = LayerIndex {
        version: chunksnap_format::index::FORMAT_VERSION,
        source: Some(Source {
            digest: d.clone(),
            diff_id: d,
            content_size: s.content_size,
            ..Default::default()
        }),
        chunker: Some(ChunkerParams::default().into()),
        entries: s.entries,
        ..Default::default()
    };
    chunksnap_format::index::validate(&index).unwrap();
}
