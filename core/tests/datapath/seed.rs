//! Seeding: identical files are hardlinked from an earlier layer directory after a check, and
//! the result is the same tree as writing every file.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use chunksnap_core::assemble::{
    AssembleOptions, AssembleStats, Seed, Seeding, WhiteoutMode, assemble_layer,
    assemble_layer_with,
};
use chunksnap_format::digest::Digest;

use crate::assemble::snapshot;
use crate::{Built, LayerBuilder, MemReader, noise};

fn v1() -> LayerBuilder {
    let mut b = LayerBuilder::default();
    b.dir("etc", 0o755);
    b.file("etc/same", 0o644, &noise(1, 70_000));
    b.file("etc/changed", 0o644, &noise(2, 50_000));
    b.file("etc/chmodded", 0o644, &noise(3, 9_000));
    b.file("etc/empty", 0o644, b"");
    b
}

fn v2() -> LayerBuilder {
    let mut b = LayerBuilder::default();
    b.dir("etc", 0o755);
    b.file("etc/same", 0o644, &noise(1, 70_000));
    b.file("etc/changed", 0o644, &noise(20, 50_000));
    b.file("etc/chmodded", 0o600, &noise(3, 9_000));
    b.file("etc/empty", 0o644, b"");
    // Same content and attributes as etc/same, under another name: linked too.
    b.file("etc/moved", 0o644, &noise(1, 70_000));
    // A hardlink applies its own attributes to its target's inode: etc/same must therefore be
    // written, never linked from the seed (whose inode another snapshot uses).
    let link = b.hardlink("etc/link", "etc/same", 0o4750);
    link.uid = 1000;
    link.mtime_sec += 7;
    link.xattrs = vec![crate::xattr("user.link", b"1")];
    b
}

/// The tree without link counts (a seeded inode also counts the seed's link).
fn tree(root: &Path) -> Vec<(String, String)> {
    snapshot(root)
        .into_iter()
        .map(|(p, d)| {
            let d = d
                .split(' ')
                .filter(|f| !f.starts_with("nlink="))
                .collect::<Vec<_>>()
                .join(" ");
            (p, d)
        })
        .collect()
}

struct Setup {
    seed_dir: tempfile::TempDir,
    seed_index: Arc<chunksnap_format::pb::LayerIndex>,
    v2: Built,
}

fn setup() -> Setup {
    let seed_dir = tempfile::tempdir().unwrap();
    let built = v1().build(4096, 1 << 20);
    assemble_layer(
        &built.index,
        &MemReader(built.chunks),
        seed_dir.path(),
        WhiteoutMode::Overlay,
    )
    .unwrap();
    Setup {
        seed_dir,
        seed_index: Arc::new(built.index),
        v2: v2().build(4096, 1 << 20),
    }
}

fn seeded(s: &Setup, chunks: HashMap<Digest, Vec<u8>>, dest: &Path) -> (Seeding, AssembleStats) {
    let seeding = Seeding::plan(
        &s.v2.index,
        vec![Seed {
            index: s.seed_index.clone(),
            dir: s.seed_dir.path().to_owned(),
        }],
    );
    let opts = overlay_seeded(&seeding);
    let stats = assemble_layer_with(&s.v2.index, &MemReader(chunks), dest, &opts).unwrap();
    (seeding, stats)
}

/// Overlay mode with `seeding` and nothing else.
fn overlay_seeded(seeding: &Seeding) -> AssembleOptions<'_> {
    AssembleOptions {
        mode: WhiteoutMode::Overlay,
        parents: &[],
        seeding: Some(seeding),
        cancel: None,
        progress: None,
    }
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

#[test]
fn identical_files_are_linked_without_reading_their_chunks() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let s = setup();
    let plan = Seeding::plan(
        &s.v2.index,
        vec![Seed {
            index: s.seed_index.clone(),
            dir: s.seed_dir.path().to_owned(),
        }],
    );
    assert_eq!(plan.files(), 1, "etc/moved (etc/same is a hardlink target)");
    assert_eq!(plan.bytes(), 70_000);
    // Only the chunks of unseeded files are given to the assembler: a seeded file's chunk
    // being read would fail the assembly.
    let needed = plan.needed_chunks(&s.v2.index);
    assert!(needed.iter().any(|n| !n), "some chunks are not needed");
    let chunks: HashMap<Digest, Vec<u8>> =
        s.v2.index
            .chunks
            .iter()
            .zip(&needed)
            .filter(|(_, n)| **n)
            .map(|(c, _)| {
                let d = Digest::from_slice(&c.digest).unwrap();
                (d, s.v2.chunks[&d].clone())
            })
            .collect();
    let dest = tempfile::tempdir().unwrap();
    let (_, stats) = seeded(&s, chunks, dest.path());
    assert_eq!((stats.seeded_files, stats.seeds_rejected), (1, 0));
    assert_eq!(stats.seeded_bytes, 70_000);
    assert_ne!(
        ino(&dest.path().join("etc/moved")),
        ino(&dest.path().join("etc/same"))
    );

    let seed_same = ino(&s.seed_dir.path().join("etc/same"));
    assert_eq!(ino(&dest.path().join("etc/moved")), seed_same);
    assert_eq!(
        ino(&dest.path().join("etc/link")),
        ino(&dest.path().join("etc/same"))
    );
    assert_ne!(ino(&dest.path().join("etc/same")), seed_same);
    for p in ["etc/changed", "etc/chmodded", "etc/empty"] {
        assert_ne!(
            ino(&dest.path().join(p)),
            ino(&s.seed_dir.path().join(p)),
            "{p} is written, not linked"
        );
    }
    // The same tree as writing everything.
    let plain = tempfile::tempdir().unwrap();
    assemble_layer(
        &s.v2.index,
        &MemReader(s.v2.chunks.clone()),
        plain.path(),
        WhiteoutMode::Overlay,
    )
    .unwrap();
    assert_eq!(tree(dest.path()), tree(plain.path()));
    // The seed itself is untouched.
    let again = tempfile::tempdir().unwrap();
    let b1 = v1().build(4096, 1 << 20);
    assemble_layer(
        &b1.index,
        &MemReader(b1.chunks),
        again.path(),
        WhiteoutMode::Overlay,
    )
    .unwrap();
    assert_eq!(tree(s.seed_dir.path()), tree(again.path()));
}

#[test]
fn a_tampered_seed_is_not_linked() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let s = setup();
    // Same size, mode and mtime, different bytes: only the content check catches it.
    let same = s.seed_dir.path().join("etc/same");
    let md = fs::metadata(&same).unwrap();
    let mut bytes = fs::read(&same).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&same, &bytes).unwrap();
    let mtime = filetime(md.mtime(), md.mtime_nsec());
    set_mtime(&same, mtime);

    let dest = tempfile::tempdir().unwrap();
    let (_, stats) = seeded(&s, s.v2.chunks.clone(), dest.path());
    assert_eq!((stats.seeded_files, stats.seeds_rejected), (0, 1));
    assert_ne!(ino(&dest.path().join("etc/same")), ino(&same));
    assert_eq!(
        fs::read(dest.path().join("etc/same")).unwrap(),
        noise(1, 70_000)
    );
}

#[test]
fn a_symlinked_or_missing_seed_is_not_followed() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let s = setup();
    let same = s.seed_dir.path().join("etc/same");
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("same");
    fs::rename(&same, &target).unwrap();
    std::os::unix::fs::symlink(&target, &same).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let (_, stats) = seeded(&s, s.v2.chunks.clone(), dest.path());
    assert_eq!((stats.seeded_files, stats.seeds_rejected), (0, 1));
    assert_ne!(ino(&dest.path().join("etc/same")), ino(&target));

    fs::remove_file(&same).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let (_, stats) = seeded(&s, s.v2.chunks.clone(), dest.path());
    assert_eq!((stats.seeded_files, stats.seeds_rejected), (0, 1));
    assert_eq!(
        fs::read(dest.path().join("etc/moved")).unwrap(),
        noise(1, 70_000)
    );
}

#[test]
fn indexes_without_content_digests_never_seed() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let mut s = setup();
    for e in &mut s.v2.index.entries {
        e.content_digest.clear();
    }
    let plan = Seeding::plan(
        &s.v2.index,
        vec![Seed {
            index: s.seed_index.clone(),
            dir: s.seed_dir.path().to_owned(),
        }],
    );
    assert_eq!(plan.files(), 0);
    assert!(plan.needed_chunks(&s.v2.index).iter().all(|n| *n));
}

fn filetime(sec: i64, nsec: i64) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(sec, nsec)
}

fn set_mtime(p: &Path, ts: nix::sys::time::TimeSpec) {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

#[test]
fn a_seed_inode_is_linked_once_even_from_two_seeds() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let s = setup();
    // A second seed directory whose file is the same inode as the first seed's (as when v2 was
    // itself seeded from v1), under another name that the new layer also has.
    let seed2 = tempfile::tempdir().unwrap();
    fs::create_dir(seed2.path().join("etc")).unwrap();
    fs::hard_link(
        s.seed_dir.path().join("etc/same"),
        seed2.path().join("etc/moved"),
    )
    .unwrap();
    let mut b = LayerBuilder::default();
    b.dir("etc", 0o755);
    b.file("etc/moved", 0o644, &noise(1, 70_000));
    let seed2_index = Arc::new(b.build(4096, 1 << 20).index);
    // Without v2's hardlink to etc/same (a hardlink target is never seeded).
    let mut v2 = v2();
    v2.entries.retain(|e| e.path != b"etc/link");
    let v2 = v2.build(4096, 1 << 20);
    let seeding = Seeding::plan(
        &v2.index,
        vec![
            Seed {
                index: s.seed_index.clone(),
                dir: s.seed_dir.path().to_owned(),
            },
            Seed {
                index: seed2_index,
                dir: seed2.path().to_owned(),
            },
        ],
    );
    assert_eq!(seeding.files(), 2, "planned from two seed entries");
    let opts = overlay_seeded(&seeding);
    let dest = tempfile::tempdir().unwrap();
    let stats =
        assemble_layer_with(&v2.index, &MemReader(v2.chunks.clone()), dest.path(), &opts).unwrap();
    assert_eq!((stats.seeded_files, stats.seeds_rejected), (1, 1));
    assert_ne!(
        ino(&dest.path().join("etc/same")),
        ino(&dest.path().join("etc/moved")),
        "identical files must not become hardlinks of each other"
    );
}

/// A seeded file whose path the layer names again later (a tar append) ends as the later
/// entry, even though its link was still queued for a worker when the walk got there.
#[test]
fn a_seeded_path_named_again_ends_as_the_later_entry() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let s = setup();
    let mut b = v2();
    b.file("etc/same", 0o600, b"appended later");
    let v2 = b.build(4096, 1 << 20);
    let seeding = Seeding::plan(
        &v2.index,
        vec![Seed {
            index: s.seed_index.clone(),
            dir: s.seed_dir.path().to_owned(),
        }],
    );
    assert_eq!(
        seeding.files(),
        1,
        "the first etc/same is planned from the seed"
    );
    let opts = overlay_seeded(&seeding);
    let dest = tempfile::tempdir().unwrap();
    assemble_layer_with(&v2.index, &MemReader(v2.chunks.clone()), dest.path(), &opts).unwrap();
    let same = dest.path().join("etc/same");
    assert_eq!(fs::read(&same).unwrap(), b"appended later");
    assert_eq!(fs::metadata(&same).unwrap().mode() & 0o7777, 0o600);
    // The seed itself is untouched.
    assert_eq!(
        fs::read(s.seed_dir.path().join("etc/same")).unwrap(),
        noise(1, 70_000)
    );
}
