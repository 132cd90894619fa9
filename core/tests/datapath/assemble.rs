use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use std::sync::atomic::{AtomicBool, Ordering};

use chunksnap_core::assemble::{
    AssembleError, AssembleOptions, ChunkReader, WhiteoutMode, assemble_layer, assemble_layer_with,
};
use chunksnap_core::store::StoreError;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::EntryType;

use crate::{LayerBuilder, MTIME, MemReader, noise, xattr};

/// A valid VFS_CAP_REVISION_2 blob: effective, permitted = CAP_NET_BIND_SERVICE.
const CAP_NET_BIND: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn assemble(
    b: &LayerBuilder,
    dest: &Path,
    mode: WhiteoutMode,
) -> Result<chunksnap_core::assemble::AssembleStats, AssembleError> {
    let built = b.build(1000, 1 << 20);
    assemble_layer(&built.index, &MemReader(built.chunks), dest, mode)
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "llistxattr {path:?}");
    let mut out = BTreeMap::new();
    for name in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).unwrap();
        let mut val = vec![0u8; 4096];
        // SAFETY: valid C strings and buffer.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        assert!(m >= 0);
        val.truncate(m as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), val);
    }
    out
}

/// Everything we compare between two trees, per relative path.
pub(crate) fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for ent in fs::read_dir(dir).unwrap() {
        let path = ent.unwrap().path();
        let md = fs::symlink_metadata(&path).unwrap();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ft = md.file_type();
        let mut desc = format!(
            "mode={:o} uid={} gid={} mtime={} xattrs={:?}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime(),
            xattrs(&path)
        );
        if ft.is_file() {
            desc += &format!(
                " nlink={} sha={}",
                md.nlink(),
                chunksnap_format::digest::Digest::of(&fs::read(&path).unwrap())
            );
        } else if ft.is_symlink() {
            desc += &format!(" -> {:?}", fs::read_link(&path).unwrap());
        } else if ft.is_char_device() || ft.is_block_device() {
            desc += &format!(" rdev={}", md.rdev());
        }
        out.insert(rel, desc);
        if ft.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// A layer with every entry type, ownership, special modes, xattrs and a sparse file.
fn rich_layer() -> LayerBuilder {
    let mut b = LayerBuilder::default();
    b.dir("etc", 0o755);
    b.file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n");
    b.dir("usr", 0o755).mtime_sec = MTIME - 100;
    b.dir("usr/bin", 0o755);
    let ping = b.file("usr/bin/ping", 0o4755, &noise(9, 3000));
    ping.uid = 0;
    ping.gid = 0;
    ping.xattrs
        .push(xattr("security.capability", &CAP_NET_BIND));
    let owned = b.file("usr/bin/tool", 0o2750, b"#!/bin/sh\necho hi\n");
    owned.uid = 1000;
    owned.gid = 2000;
    owned.xattrs.push(xattr("user.note", b"hello"));
    owned.xattrs.push(xattr("trusted.thing", b"\x00\x01"));
    b.hardlink("usr/bin/tool2", "usr/bin/tool", 0o2750).uid = 1000;
    b.entries.last_mut().unwrap().gid = 2000;
    b.symlink("usr/bin/sh", "busybox").uid = 33;
    b.dir("tmp", 0o1777);
    let mut sparse = vec![0u8; 64 << 10];
    sparse[..100].copy_from_slice(&noise(3, 100));
    sparse.extend_from_slice(&noise(4, 5000));
    sparse.extend(std::iter::repeat_n(0u8, 40 << 10));
    b.file("var/lib/sparse.img", 0o600, &sparse); // parents implied
    b.file("empty", 0o644, b"");
    b.dir("dev", 0o755);
    b.special("dev/null", EntryType::Char, 1, 3).mode = 0o666;
    b.special("dev/sda", EntryType::Block, 8, 0).mode = 0o660;
    b.special("dev/fifo", EntryType::Fifo, 0, 0).mode = 0o600;
    b.dir("opt", 0o700).xattrs.push(xattr("user.dir", b"d"));
    b.file("opt/x", 0o755, b"x");
    b
}

#[test]
fn matches_gnu_tar() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let b = rich_layer();
    let tmp = tempfile::tempdir().unwrap();
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    fs::create_dir_all(&ours).unwrap();
    fs::create_dir_all(&theirs).unwrap();
    let tar_path = tmp.path().join("layer.tar");
    fs::write(&tar_path, b.tar()).unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&theirs)
        .status()
        .unwrap();
    assert!(st.success());
    let stats = assemble(&b, &ours, WhiteoutMode::Overlay).unwrap();
    assert_eq!(
        (stats.files, stats.hardlinks, stats.symlinks, stats.specials),
        (6, 1, 1, 3)
    );
    let (a, t) = (snapshot(&ours), snapshot(&theirs));
    // GNU tar gives implied parents (var, var/lib) its own defaults; containerd uses 0755 root.
    for k in ["var", "var/lib"] {
        assert!(a[k].starts_with("mode=40755 uid=0 gid=0"), "{k}: {}", a[k]);
    }
    let strip = |m: &BTreeMap<String, String>| {
        m.iter()
            .filter(|(k, _)| *k != "var" && *k != "var/lib")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(strip(&a), strip(&t));
    // Spot checks of what the comparison covers.
    assert!(
        a["usr/bin/ping"].starts_with("mode=104755"),
        "{}",
        a["usr/bin/ping"]
    );
    assert!(a["usr/bin/ping"].contains("security.capability"));
    assert!(
        a["usr/bin/tool"].contains("uid=1000 gid=2000") && a["usr/bin/tool"].contains("nlink=2")
    );
    assert!(a["usr"].contains(&format!("mtime={}", MTIME - 100)));
    assert!(a["tmp"].starts_with("mode=41777"));
}

#[test]
fn sparse_files_have_holes_and_right_content() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let b = rich_layer();
    let dest = tempfile::tempdir().unwrap();
    let stats = assemble(&b, dest.path(), WhiteoutMode::Overlay).unwrap();
    let p = dest.path().join("var/lib/sparse.img");
    let md = fs::metadata(&p).unwrap();
    let expected_len = (64 << 10) + 5000 + (40 << 10);
    assert_eq!(md.len(), expected_len);
    assert!(stats.hole_bytes >= (60 << 10) + (36 << 10), "{stats:?}");
    assert!(
        md.blocks() * 512 < expected_len / 2,
        "allocated {} bytes",
        md.blocks() * 512
    );
    let data = fs::read(&p).unwrap();
    assert_eq!(&data[..100], &noise(3, 100)[..]);
    assert!(data[100..64 << 10].iter().all(|&x| x == 0));
    assert_eq!(&data[64 << 10..(64 << 10) + 5000], &noise(4, 5000)[..]);
}

#[test]
fn nanosecond_mtimes_and_symlink_times() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let mut b = LayerBuilder::default();
    b.file("f", 0o644, b"data").mtime_nsec = 123_456_789;
    let l = b.symlink("l", "/nonexistent");
    l.mtime_sec = 1_000;
    l.mtime_nsec = 5;
    let d = b.dir("d", 0o755);
    d.mtime_sec = 2_000;
    d.mtime_nsec = 7;
    b.file("d/child", 0o644, b"c"); // written after d: d's mtime must still be 2000.000000007
    let dest = tempfile::tempdir().unwrap();
    assemble(&b, dest.path(), WhiteoutMode::Overlay).unwrap();
    let f = fs::metadata(dest.path().join("f")).unwrap();
    assert_eq!((f.mtime(), f.mtime_nsec()), (MTIME, 123_456_789));
    let l = fs::symlink_metadata(dest.path().join("l")).unwrap();
    assert_eq!((l.mtime(), l.mtime_nsec()), (1_000, 5));
    let d = fs::metadata(dest.path().join("d")).unwrap();
    assert_eq!((d.mtime(), d.mtime_nsec()), (2_000, 7));
}

#[test]
fn overlay_whiteouts_match_containerd() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let mut b = LayerBuilder::default();
    b.dir("d", 0o755);
    b.file("d/.wh..wh..opq", 0o644, b"");
    b.file("d/kept", 0o644, b"k");
    let wh = b.file(".wh.gone", 0o600, b"");
    wh.uid = 7;
    wh.gid = 8;
    let dest = tempfile::tempdir().unwrap();
    let stats = assemble(&b, dest.path(), WhiteoutMode::Overlay).unwrap();
    assert_eq!(stats.whiteouts, 2);
    let d = dest.path().join("d");
    assert_eq!(
        xattrs(&d).get("trusted.overlay.opaque").map(Vec::as_slice),
        Some(&b"y"[..])
    );
    assert!(!d.join(".wh..wh..opq").exists());
    assert!(d.join("kept").exists());
    let gone = fs::symlink_metadata(dest.path().join("gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!(
        (gone.rdev(), gone.mode() & 0o7777, gone.uid(), gone.gid()),
        (0, 0, 7, 8)
    );
    assert!(fs::symlink_metadata(dest.path().join(".wh.gone")).is_err());
}

#[test]
fn apply_mode_deletes_merges_and_replaces() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let dest = tempfile::tempdir().unwrap();
    let mut lower = LayerBuilder::default();
    lower.dir("d", 0o755);
    lower.file("d/a", 0o644, b"a");
    lower.dir("d/sub", 0o755);
    lower.file("d/sub/b", 0o644, b"b");
    lower.dir("e", 0o755);
    lower.file("e/x", 0o644, b"x");
    lower.file("f", 0o644, b"f");
    lower.dir("usr/bin", 0o755);
    lower.symlink("bin", "usr/bin"); // merged-usr
    lower.dir("keep", 0o755);
    lower.file("keep/me", 0o644, b"me");
    assemble(&lower, dest.path(), WhiteoutMode::Apply).unwrap();

    let mut upper = LayerBuilder::default();
    upper.dir("d", 0o750);
    upper.dir("d/sub", 0o755);
    upper.file("d/.wh..wh..opq", 0o644, b"");
    upper.file("d/sub/new", 0o644, b"new");
    upper.file(".wh.f", 0o644, b"");
    upper.file("e", 0o600, b"now a file");
    upper.file("bin/tool", 0o755, b"tool"); // through the lower layer's symlink
    assemble(&upper, dest.path(), WhiteoutMode::Apply).unwrap();

    let root = dest.path();
    assert!(
        !root.join("d/a").exists(),
        "opaque dir dropped lower content"
    );
    assert!(!root.join("d/sub/b").exists(), "also below kept dirs");
    assert_eq!(fs::read(root.join("d/sub/new")).unwrap(), b"new");
    assert_eq!(fs::metadata(root.join("d")).unwrap().mode() & 0o7777, 0o750);
    assert!(!root.join("f").exists());
    assert!(fs::symlink_metadata(root.join("e")).unwrap().is_file());
    assert_eq!(fs::read(root.join("usr/bin/tool")).unwrap(), b"tool");
    assert!(
        fs::symlink_metadata(root.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(root.join("keep/me")).unwrap(), b"me");
    assert!(fs::symlink_metadata(root.join(".wh.f")).is_err());
}

#[test]
fn hostile_paths_are_rejected() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let outside_s = outside.path().to_str().unwrap().to_owned();
    // (name, layer, whether Apply mode must fail too: there, symlinks resolve inside dest).
    let cases: Vec<(&str, LayerBuilder, bool)> = vec![
        (
            "dotdot",
            {
                let mut b = LayerBuilder::default();
                b.file("a/../../evil", 0o644, b"x");
                b
            },
            true,
        ),
        (
            "absolute",
            {
                let mut b = LayerBuilder::default();
                b.file(&format!("{outside_s}/evil"), 0o644, b"x");
                b
            },
            true,
        ),
        (
            "symlink parent",
            {
                let mut b = LayerBuilder::default();
                b.symlink("a", &outside_s);
                b.file("a/evil", 0o644, b"x");
                b
            },
            false,
        ),
        (
            "relative symlink parent",
            {
                let mut b = LayerBuilder::default();
                b.symlink("a", "../../../../../../../../..");
                b.file(&format!("a{outside_s}/evil"), 0o644, b"x");
                b
            },
            false,
        ),
        (
            "hardlink escape",
            {
                let mut b = LayerBuilder::default();
                b.hardlink("h", "../../../../../../etc/passwd", 0o644);
                b
            },
            true,
        ),
        (
            "hardlink through symlink",
            {
                let mut b = LayerBuilder::default();
                b.symlink("a", "/etc");
                b.hardlink("h", "a/passwd", 0o644);
                b
            },
            true,
        ),
        (
            "hardlink missing",
            {
                let mut b = LayerBuilder::default();
                b.hardlink("h", "nope", 0o644);
                b
            },
            true,
        ),
        (
            "whiteout of ..",
            {
                let mut b = LayerBuilder::default();
                b.dir("d", 0o755);
                b.file("d/.wh...", 0o644, b"");
                b
            },
            true,
        ),
    ];
    for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
        for (name, b, apply_fails) in &cases {
            let dest = tempfile::tempdir().unwrap();
            let r = assemble(b, dest.path(), mode);
            if mode == WhiteoutMode::Overlay || *apply_fails {
                assert!(r.is_err(), "{name} ({mode:?}) must fail");
            }
            assert!(
                !outside.path().join("evil").exists(),
                "{name} wrote outside"
            );
        }
    }
    // Apply mode scopes absolute symlinks to the destination instead of failing.
    let dest = tempfile::tempdir().unwrap();
    fs::create_dir(dest.path().join("etc")).unwrap();
    let mut b = LayerBuilder::default();
    b.symlink("a", "/etc");
    b.file("a/passwd", 0o644, b"inside");
    assemble(&b, dest.path(), WhiteoutMode::Apply).unwrap();
    assert_eq!(fs::read(dest.path().join("etc/passwd")).unwrap(), b"inside");
    let r = assemble(
        &b,
        tempfile::tempdir().unwrap().path(),
        WhiteoutMode::Overlay,
    );
    assert!(matches!(r, Err(AssembleError::Escape { .. })), "{r:?}");
}

#[test]
fn missing_chunk_is_an_error() {
    let mut b = LayerBuilder::default();
    b.file("f", 0o644, b"data");
    let built = b.build(1000, 1 << 20);
    let dest = tempfile::tempdir().unwrap();
    let r = assemble_layer(
        &built.index,
        &MemReader(Default::default()),
        dest.path(),
        WhiteoutMode::Overlay,
    );
    assert!(
        matches!(r, Err(AssembleError::Chunk { index: 0, .. })),
        "{r:?}"
    );
}

/// Sets `cancel` once `after` chunks have been read, like a prepare abandoned mid-layer.
struct CancellingReader<'a> {
    inner: MemReader,
    reads: std::sync::atomic::AtomicUsize,
    after: usize,
    cancel: &'a AtomicBool,
}

impl ChunkReader for CancellingReader<'_> {
    fn read_chunk(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        if self.reads.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            self.cancel.store(true, Ordering::SeqCst);
        }
        self.inner.read_chunk(digest, size)
    }
}

fn entries_below(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            1 + if e.file_type().unwrap().is_dir() {
                entries_below(&e.path())
            } else {
                0
            }
        })
        .sum()
}

#[test]
fn cancelled_assembly_stops_and_says_so() {
    let mut b = LayerBuilder::default();
    for i in 0..400 {
        b.file(&format!("d{}/f{i}", i % 7), 0o644, &noise(i, 3000));
    }
    // Small chunks: many reads, so the cancel lands mid-layer.
    let built = b.build(2048, 8192);
    for after in [0, 1, 40] {
        let cancel = AtomicBool::new(after == 0);
        let reader = CancellingReader {
            inner: MemReader(built.chunks.clone()),
            reads: Default::default(),
            after: after.max(1),
            cancel: &cancel,
        };
        let dest = tempfile::tempdir().unwrap();
        let opts = AssembleOptions {
            mode: WhiteoutMode::Overlay,
            parents: &[],
            seeding: None,
            cancel: Some(&cancel),
            progress: None,
        };
        let r = assemble_layer_with(&built.index, &reader, dest.path(), &opts);
        assert!(matches!(r, Err(AssembleError::Cancelled)), "{after}: {r:?}");
        // Once the call returned, nothing writes into the directory any more.
        let count = || entries_below(dest.path());
        let settled = count();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(count(), settled, "{after}: writes went on after the return");
        if after == 0 {
            assert_eq!(
                settled, 0,
                "nothing is written when cancelled before the start"
            );
        }
    }
}

#[test]
fn implied_parents_copy_lower_layer_dirs() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let lower = tempfile::tempdir().unwrap();
    let mut l = LayerBuilder::default();
    let usr = l.dir("usr", 0o750);
    usr.uid = 5;
    usr.gid = 6;
    usr.xattrs.push(xattr("user.x", b"1"));
    usr.xattrs.push(xattr("trusted.y", b"2"));
    assemble(&l, lower.path(), WhiteoutMode::Overlay).unwrap();

    let mut u = LayerBuilder::default();
    u.file("usr/new", 0o644, b"n");
    u.file("other/new", 0o644, b"n");
    let built = u.build(1000, 1 << 20);
    let dest = tempfile::tempdir().unwrap();
    let parents = [lower.path().to_owned()];
    let opts = AssembleOptions {
        mode: WhiteoutMode::Overlay,
        parents: &parents,
        seeding: None,
        cancel: None,
        progress: None,
    };
    assemble_layer_with(&built.index, &MemReader(built.chunks), dest.path(), &opts).unwrap();
    let md = fs::metadata(dest.path().join("usr")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o750, 5, 6));
    let x = xattrs(&dest.path().join("usr"));
    assert_eq!(x.get("user.x").map(Vec::as_slice), Some(&b"1"[..]));
    assert!(!x.contains_key("trusted.y"), "trusted.* is not copied up");
    let md = fs::metadata(dest.path().join("other")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o755, 0, 0));
}

/// A real tree (`/etc` + zoneinfo: symlinks, hardlinks, odd modes), tarred by GNU tar, scanned by
/// `tarscan`, assembled from chunks: identical to GNU tar's own extraction.
#[test]
fn real_tree_through_tarscan_matches_gnu_tar() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tar_path = tmp.path().join("real.tar");
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf"])
        .arg(&tar_path)
        .args(["-C", "/", "etc", "usr/share/zoneinfo"])
        .status()
        .unwrap();
    assert!(st.success());
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    fs::create_dir_all(&ours).unwrap();
    fs::create_dir_all(&theirs).unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&theirs)
        .status()
        .unwrap();
    assert!(st.success());

    let mut content = Vec::new();
    let scan = chunksnap_core::tarscan::scan_tar(fs::File::open(&tar_path).unwrap(), &mut content)
        .unwrap();
    let b = LayerBuilder {
        entries: scan.entries,
        content,
    };
    let built = b.build(64 << 10, 16 << 20);
    let stats = assemble_layer(
        &built.index,
        &MemReader(built.chunks),
        &ours,
        WhiteoutMode::Overlay,
    )
    .unwrap();
    assert!(stats.files > 100 && stats.symlinks > 10, "{stats:?}");
    let implied = ["usr", "usr/share"];
    let strip = |m: BTreeMap<String, String>| {
        m.into_iter()
            .filter(|(k, _)| !implied.contains(&k.as_str()))
            .collect::<BTreeMap<_, _>>()
    };
    let (a, t) = (strip(snapshot(&ours)), strip(snapshot(&theirs)));
    assert_eq!(a.len(), t.len());
    for (k, v) in &t {
        assert_eq!(a.get(k), Some(v), "{k}");
    }
}

/// Zero runs of every alignment, across chunk boundaries of many sizes: contents always exact.
#[test]
fn holes_never_change_contents() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let mut seed = 1u64;
    for chunk_size in [1usize, 7, 100, 4095, 4096, 4097, 10_000, 65_536] {
        let mut b = LayerBuilder::default();
        let mut files = Vec::new();
        for f in 0..4 {
            let mut data = Vec::new();
            for _ in 0..6 {
                seed += 1;
                let r = noise(seed, 8);
                let len = (u16::from_le_bytes([r[0], r[1]]) as usize % 12_000) + 1;
                if r[2] & 1 == 0 {
                    data.extend(std::iter::repeat_n(0u8, len));
                } else {
                    data.extend(noise(seed, len));
                }
            }
            let path = format!("f{f}");
            b.file(&path, 0o644, &data);
            files.push((path, data));
        }
        let dest = tempfile::tempdir().unwrap();
        let built = b.build(chunk_size, 1 << 20);
        assemble_layer(
            &built.index,
            &MemReader(built.chunks),
            dest.path(),
            WhiteoutMode::Overlay,
        )
        .unwrap();
        for (path, data) in files {
            assert_eq!(
                fs::read(dest.path().join(&path)).unwrap(),
                data,
                "{path} chunk {chunk_size}"
            );
        }
    }
}

/// A layer may name a path more than once (tar appends); the last entry wins, as containerd's
/// applier has it, also while earlier files are still being written by the worker pool and
/// whatever mode the umask would give a new file.
#[test]
fn a_path_named_twice_is_replaced_in_overlay_mode() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let mut b = LayerBuilder::default();
    b.file("a", 0o666, b"one");
    // Enough other files that the pool still holds the first `a` when the second comes.
    for i in 0..200 {
        b.file(&format!("many/{i}"), 0o644, &noise(i, 300));
    }
    b.file("a", 0o640, b"two");
    b.file("d/x", 0o644, b"x"); // implies d
    b.dir("d", 0o700);
    b.file("f", 0o644, b"f");
    b.dir("f", 0o750);
    b.file("f/y", 0o644, b"y");
    b.dir("g", 0o755).mtime_sec = MTIME - 7;
    b.file("g/z", 0o644, b"z");
    b.file("g", 0o600, b"now a file");
    b.file("wide", 0o666, b"w");
    b.file("special", 0o4711, b"s");
    let dest = tempfile::tempdir().unwrap();
    assemble(&b, dest.path(), WhiteoutMode::Overlay).unwrap();
    let root = dest.path();
    let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mode();
    assert_eq!(fs::read(root.join("a")).unwrap(), b"two");
    assert_eq!(mode("a"), 0o100640);
    assert_eq!(mode("d"), 0o40700);
    assert_eq!(fs::read(root.join("d/x")).unwrap(), b"x");
    assert_eq!(mode("f"), 0o40750);
    assert_eq!(fs::read(root.join("f/y")).unwrap(), b"y");
    assert_eq!(fs::read(root.join("g")).unwrap(), b"now a file");
    assert_eq!(mode("g"), 0o100600);
    // containerd sets a directory entry's times at the end on whatever holds its path then.
    let g = fs::symlink_metadata(root.join("g")).unwrap();
    assert_eq!(g.mtime(), MTIME - 7);
    assert_eq!(mode("wide"), 0o100666, "not narrowed by the umask");
    assert_eq!(mode("special"), 0o104711);
    assert_eq!(fs::read_dir(root.join("many")).unwrap().count(), 200);
}
