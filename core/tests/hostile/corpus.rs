//! The fuzz corpora as regression tests: every file under `fuzz/corpus/<target>/` goes through
//! the same check the fuzz target runs (see `harness.rs`), on stable, in `cargo test`.
//!
//! The `seed-*` files are generated here. After changing a seed, regenerate them with
//! `CHUNKSNAP_BLESS_CORPUS=1 cargo test -p chunksnap-core --test hostile corpus`;
//! `seed_corpora_are_current` fails while they are stale.

use std::fs;
use std::path::PathBuf;

use chunksnap_format::artifact::{self, Descriptor, LayerEntry, OCI_MANIFEST_MEDIA_TYPE};
use chunksnap_format::delta::{compress_index_delta, decompress_index_delta};
use chunksnap_format::digest::Digest;
use chunksnap_format::index::encode;
use chunksnap_format::pb::{EntryType, Xattr};

use crate::harness::{check_artifact, check_index, check_index_delta, check_tar, delta_input};
use crate::{Layer, entry};

/// A fuzz target's check.
type Check = fn(&[u8]);

/// (fuzz target, check) pairs; the target name is the corpus directory.
const TARGETS: [(&str, Check); 4] = [
    ("index", check_index),
    ("index_delta", check_index_delta),
    ("tarscan", check_tar),
    ("artifact", check_artifact),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every seed: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, layer) in layers() {
        let index = layer.build().index;
        out.push(("index", format!("seed-{name}.zst"), encode(&index)));
        out.push((
            "index",
            format!("seed-{name}.pb"),
            chunksnap_format::index::encode_raw(&index),
        ));
    }
    for (name, base, raw) in index_deltas() {
        out.push((
            "index_delta",
            format!("seed-{name}.bin"),
            delta_seed(&base, &raw),
        ));
    }
    for (name, tar) in tars() {
        out.push(("tarscan", format!("seed-{name}.tar"), tar));
    }
    for (name, json) in artifacts() {
        out.push(("artifact", format!("seed-{name}.json"), json));
    }
    out
}

fn layers() -> Vec<(&'static str, Layer)> {
    let mut all = Layer::default();
    all.dir("etc")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .file("bin/big", &crate::scale::noise(1, 3000))
        .symlink("bin/sh", "big")
        .hardlink("bin/sh2", "bin/big")
        .file("etc/.wh.old", b"")
        .file("etc/.wh..wh..opq", b"");
    let mut dev = entry(b"dev/null", EntryType::Char);
    (dev.dev_major, dev.dev_minor) = (1, 3);
    all.entries.push(dev);
    all.entries.push(entry(b"run/fifo", EntryType::Fifo));
    all.entries[1].xattrs.push(Xattr {
        name: "user.note".into(),
        value: b"v".to_vec(),
    });
    let empty = Layer::default();
    let mut zeros = Layer::default();
    zeros.file("sparse", &[0u8; 9000]);
    vec![("all-types", all), ("empty", empty), ("zeros", zeros)]
}

/// Index deltas between the seed layers' raw indexes, as nodes receive them: (name, base raw
/// index, raw index).
fn index_deltas() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let raw = |name: &str| {
        let (_, layer) = layers().into_iter().find(|(n, _)| *n == name).unwrap();
        chunksnap_format::index::encode_raw(&layer.build().index)
    };
    let (all, zeros, empty) = (raw("all-types"), raw("zeros"), raw("empty"));
    vec![
        ("zeros-to-all-types", zeros.clone(), all),
        ("empty-to-zeros", empty, zeros),
    ]
}

fn delta_seed(base: &[u8], raw: &[u8]) -> Vec<u8> {
    delta_input(base, &compress_index_delta(base, raw).unwrap().unwrap())
}

fn tars() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let header = |kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h
    };
    // Every supported entry type.
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut header(tar::EntryType::Directory, 0), "d/", &[][..])
        .unwrap();
    b.append_data(
        &mut header(tar::EntryType::Regular, 5),
        "d/f",
        &b"hello"[..],
    )
    .unwrap();
    b.append_link(&mut header(tar::EntryType::Symlink, 0), "d/s", "f")
        .unwrap();
    b.append_link(&mut header(tar::EntryType::Link, 0), "d/h", "d/f")
        .unwrap();
    b.append_data(&mut header(tar::EntryType::Fifo, 0), "p", &[][..])
        .unwrap();
    let mut c = header(tar::EntryType::Char, 0);
    c.set_device_major(1).unwrap();
    c.set_device_minor(3).unwrap();
    b.append_data(&mut c, "null", &[][..]).unwrap();
    b.append_data(
        &mut header(tar::EntryType::Regular, 0),
        "d/.wh.gone",
        &[][..],
    )
    .unwrap();
    out.push(("all-types", b.into_inner().unwrap()));
    // PAX: xattrs, nanosecond mtime, a long name; then the same path again (later wins).
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.a", &b"1"[..]),
        ("mtime", b"1600000000.123456789"),
    ])
    .unwrap();
    let long = format!("{}/file", "long".repeat(40));
    b.append_data(&mut header(tar::EntryType::Regular, 3), &long, &b"abc"[..])
        .unwrap();
    b.append_data(&mut header(tar::EntryType::Regular, 2), &long, &b"xy"[..])
        .unwrap();
    out.push(("pax-long-dup", b.into_inner().unwrap()));
    // A directory replaced by a file, with content on both sides.
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut header(tar::EntryType::Directory, 0), "a/", &[][..])
        .unwrap();
    b.append_data(&mut header(tar::EntryType::Regular, 1), "a/x", &b"1"[..])
        .unwrap();
    b.append_data(&mut header(tar::EntryType::Regular, 1), "a", &b"2"[..])
        .unwrap();
    out.push(("dir-replaced", b.into_inner().unwrap()));
    out
}

fn artifacts() -> Vec<(&'static str, Vec<u8>)> {
    let d = |n: u8| Digest::of(&[n]);
    let subject = Descriptor::new(OCI_MANIFEST_MEDIA_TYPE, &d(100), 1234);
    let layers = [
        LayerEntry {
            layer_digest: d(1),
            index_digest: d(11),
            index_size: 10,
            index_inline: None,
            packs: vec![(d(30), 300), (d(20), 200)],
            index_delta: None,
            sketch: None,
        },
        LayerEntry {
            layer_digest: d(2),
            index_digest: d(12),
            index_size: 12,
            index_inline: None,
            packs: vec![(d(20), 200)],
            index_delta: None,
            sketch: None,
        },
    ];
    let two = artifact::build(&subject, &layers).unwrap().bytes;
    let none = artifact::build(&subject, &[]).unwrap().bytes;
    vec![("two-layers", two), ("no-layers", none)]
}

#[test]
fn seed_corpora_are_current() {
    let bless = std::env::var_os("CHUNKSNAP_BLESS_CORPUS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus_dir(target).join(&name);
        if bless {
            fs::create_dir_all(corpus_dir(target)).unwrap();
            fs::write(&path, &bytes).unwrap();
        }
        let on_disk = fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with CHUNKSNAP_BLESS_CORPUS=1)",
                path.display()
            )
        });
        assert!(
            on_disk == bytes,
            "{} is stale (run with CHUNKSNAP_BLESS_CORPUS=1)",
            path.display()
        );
    }
}

#[test]
fn every_corpus_file_passes_its_fuzz_check() {
    for (target, check) in TARGETS {
        let dir = corpus_dir(target);
        let mut n = 0;
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.unwrap().path();
            let data = fs::read(&path).unwrap();
            // A panic names the file, which is what a fuzz crash reproduction needs.
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{} fails its check", path.display());
            n += 1;
        }
        assert!(n > 0, "{} is empty", dir.display());
    }
}

#[test]
fn seeds_exercise_the_interesting_paths() {
    // The seeds are only useful if they get past the first checks.
    for (name, layer) in layers() {
        let index = layer.build().index;
        chunksnap_format::index::validate(&index).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, base, raw) in index_deltas() {
        // Past the digest check and into `decode_raw`: the output validates.
        let frame = compress_index_delta(&base, &raw).unwrap().unwrap();
        let out = decompress_index_delta(&frame, &base, 1 << 20, &Digest::of(&raw))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        chunksnap_format::index::decode_raw(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, tar) in tars() {
        let mut content = Vec::new();
        chunksnap_core::tarscan::scan_tar(tar.as_slice(), &mut content)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, json) in artifacts() {
        artifact::parse(&json, None).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
