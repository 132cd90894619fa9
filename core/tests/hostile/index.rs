//! Hostile layer indexes: rejected by `validate`/`decode`, and — for callers that skip
//! validation — still never written outside the destination by the assembler.

use std::io::Write;

use chunksnap_core::assemble::{AssembleError, WhiteoutMode, assemble_layer};
use chunksnap_format::FormatError;
use chunksnap_format::index::{FORMAT_VERSION, MAX_INDEX_SIZE, decode, encode, validate};
use chunksnap_format::pb::{EntryType, LayerIndex};
use prost::Message;

use crate::{Layer, MemReader, Sandbox};

const MODES: [WhiteoutMode; 2] = [WhiteoutMode::Overlay, WhiteoutMode::Apply];

/// A small valid layer: a directory and two files.
fn base() -> Layer {
    let mut l = Layer::default();
    l.dir("etc")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .file("bin", &[7u8; 3000]);
    l
}

/// Assembles `index` (unvalidated) in both whiteout modes, each into a fresh sandbox; returns the
/// results. The sandbox's sentinel must be untouched either way.
fn assemble_both(index: &LayerIndex, reader: &MemReader) -> Vec<Result<(), AssembleError>> {
    MODES
        .iter()
        .map(|&mode| {
            let sb = Sandbox::new();
            let r = assemble_layer(index, reader, &sb.dest, mode).map(drop);
            sb.assert_untouched();
            r
        })
        .collect()
}

#[test]
fn unsafe_paths_are_rejected_by_validate_and_the_assembler() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let sb = Sandbox::new();
    let abs = format!("{}/passwd", sb.sentinel_str());
    let cases: Vec<Vec<u8>> = vec![
        b"..".to_vec(),
        b"../x".to_vec(),
        b"etc/../../x".to_vec(),
        b"etc/../..".to_vec(),
        abs.clone().into_bytes(),
        b"/etc/passwd".to_vec(),
        b"a\0b".to_vec(),
        b"etc/\0".to_vec(),
    ];
    for path in cases {
        let built = base().build();
        let mut index = built.index.clone();
        index.entries[1].path = path.clone();
        assert!(
            matches!(
                validate(&index),
                Err(FormatError::UnsafePath { entry: 1, .. })
            ),
            "{path:?}"
        );
        assert!(
            matches!(decode(&encode(&index)), Err(FormatError::UnsafePath { .. })),
            "{path:?}"
        );
        for r in assemble_both(&index, &MemReader::of(&built)) {
            assert!(
                matches!(r, Err(AssembleError::UnsafePath { .. })),
                "{path:?}: {r:?}"
            );
        }
    }
    // Non-canonical but harmless forms are refused by validate (one spelling per path).
    for path in [&b""[..], b".", b"./etc", b"etc/", b"etc//hosts"] {
        let mut index = base().build().index;
        index.entries[1].path = path.to_vec();
        assert!(
            matches!(validate(&index), Err(FormatError::UnsafePath { .. })),
            "{path:?}"
        );
    }
    sb.assert_untouched();
}

#[test]
fn duplicate_paths_are_rejected_and_assemble_safely_unvalidated() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    // validate: the converter resolves duplicates, so an index with one is hostile.
    let mut l = base();
    l.file("etc/hosts", b"second");
    let built = l.build();
    assert!(matches!(
        validate(&built.index),
        Err(FormatError::DuplicatePath { entry: 3, .. })
    ));
    // Unvalidated, the later entry wins as in tar extraction.
    for mode in MODES {
        let sb = Sandbox::new();
        assemble_layer(&built.index, &MemReader::of(&built), &sb.dest, mode).unwrap();
        assert_eq!(std::fs::read(sb.dest.join("etc/hosts")).unwrap(), b"second");
        sb.assert_untouched();
    }

    // A directory replaced by a symlink out of the destination, then written through.
    let sb = Sandbox::new();
    let mut l = Layer::default();
    l.dir("a")
        .file("a/x", b"x")
        .symlink("a", &sb.sentinel_str())
        .file("a/passwd", b"pwned")
        .hardlink("h", "a/passwd");
    let built = l.build();
    assert!(matches!(
        validate(&built.index),
        Err(FormatError::DuplicatePath { .. })
    ));
    let r = assemble_layer(
        &built.index,
        &MemReader::of(&built),
        &sb.dest,
        WhiteoutMode::Overlay,
    );
    assert!(matches!(r, Err(AssembleError::Escape { .. })), "{r:?}");
    sb.assert_untouched();
    // Apply mode resolves the absolute link inside the destination instead.
    let sb2 = Sandbox::new();
    let mut l = Layer::default();
    l.dir("a")
        .symlink("a", &sb2.sentinel_str())
        .file("a/passwd", b"pwned");
    let built = l.build();
    let inside_dir = sb2.dest.join(sb2.sentinel.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside_dir).unwrap();
    assemble_layer(
        &built.index,
        &MemReader::of(&built),
        &sb2.dest,
        WhiteoutMode::Apply,
    )
    .unwrap();
    let inside = inside_dir.join("passwd");
    assert_eq!(std::fs::read(inside).unwrap(), b"pwned");
    sb2.assert_untouched();
}

#[test]
fn sizes_disagreeing_with_the_chunk_table_are_rejected() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let built = base().build();
    let content = built.index.source.as_ref().unwrap().content_size;

    let mut index = built.index.clone();
    index.source.as_mut().unwrap().content_size = content + 1;
    assert!(matches!(
        validate(&index),
        Err(FormatError::ChunkSumMismatch { .. }) | Err(FormatError::BadContentRange { .. })
    ));

    let mut index = built.index.clone();
    index.chunks[0].size += 1;
    assert!(validate(&index).is_err());

    let mut index = built.index.clone();
    index.chunks.pop();
    assert!(matches!(
        validate(&index),
        Err(FormatError::ChunkSumMismatch { .. })
    ));

    let mut index = built.index.clone();
    index.chunks[0].size = 0;
    assert!(matches!(
        validate(&index),
        Err(FormatError::BadChunkSize { .. })
    ));
    let mut index = built.index.clone();
    index.chunks[0].size = 1 << 30;
    assert!(matches!(
        validate(&index),
        Err(FormatError::BadChunkSize { .. })
    ));

    // Unvalidated: the content stream is shorter than the files say.
    let mut index = built.index.clone();
    index.chunks.pop();
    for r in assemble_both(&index, &MemReader::of(&built)) {
        assert!(matches!(r, Err(AssembleError::BadIndex { .. })), "{r:?}");
    }
}

#[test]
fn file_ranges_past_the_content_are_rejected() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let built = base().build();
    let content = built.index.source.as_ref().unwrap().content_size;
    let cases = [
        (0, content + 1),
        (content, 1),
        (u64::MAX, 1),
        (u64::MAX - 1, 10),
        (1, u64::MAX),
    ];
    for (offset, size) in cases {
        let mut index = built.index.clone();
        index.entries[2].offset = offset;
        index.entries[2].size = size;
        assert!(
            matches!(validate(&index), Err(FormatError::BadContentRange { .. })),
            "{offset}+{size}"
        );
        for r in assemble_both(&index, &MemReader::of(&built)) {
            assert!(
                matches!(r, Err(AssembleError::BadIndex { .. })),
                "{offset}+{size}: {r:?}"
            );
        }
    }
    // Files out of stream order (content used twice) are refused too.
    let mut index = built.index.clone();
    index.entries[2].offset = 0;
    index.entries[2].size = 5;
    assert!(matches!(
        validate(&index),
        Err(FormatError::BadContentRange { .. })
    ));
}

#[test]
fn chunk_locations_past_the_pack_are_rejected() {
    let built = base().build();
    let pack_size = built.index.packs[0].size;
    let mut index = built.index.clone();
    index.chunks[0].pack_offset = pack_size;
    assert!(matches!(
        validate(&index),
        Err(FormatError::ChunkOutsidePack { .. })
    ));
    index.chunks[0].pack_offset = u64::MAX;
    assert!(matches!(
        validate(&index),
        Err(FormatError::ChunkOutsidePack { .. })
    ));
    let mut index = built.index.clone();
    index.chunks[0].pack = 99;
    assert!(matches!(
        validate(&index),
        Err(FormatError::BadPackRef { .. })
    ));
    let mut index = built.index.clone();
    index.chunks[0].stored_size = u32::MAX;
    assert!(matches!(
        validate(&index),
        Err(FormatError::BadStoredSize { .. })
    ));
    let mut index = built.index.clone();
    index.chunks[0].digest.pop();
    assert!(matches!(
        validate(&index),
        Err(FormatError::BadDigestLength { .. })
    ));
}

#[test]
fn bad_links_are_rejected() {
    let cases: Vec<(&str, Layer)> = vec![
        ("missing target", {
            let mut l = base();
            l.hardlink("h", "nope");
            l
        }),
        ("later target", {
            let mut l = base();
            l.hardlink("h", "late").file("late", b"x");
            l
        }),
        ("directory target", {
            let mut l = base();
            l.hardlink("h", "etc");
            l
        }),
        ("outside target", {
            let mut l = base();
            l.hardlink("h", "../etc/hosts");
            l
        }),
    ];
    for (name, l) in cases {
        let built = l.build();
        assert!(
            matches!(validate(&built.index), Err(FormatError::BadHardlink { .. })),
            "{name}"
        );
        for r in assemble_both(&built.index, &MemReader::of(&built)) {
            assert!(r.is_err(), "{name}: {r:?}");
        }
    }
    let mut l = base();
    l.symlink("s", "");
    assert!(matches!(
        validate(&l.build().index),
        Err(FormatError::BadSymlink { .. })
    ));
    let mut l = base();
    l.entries[0].r#type = 42;
    assert!(matches!(
        validate(&l.build().index),
        Err(FormatError::UnknownEntryType { .. })
    ));
    let mut l = base();
    l.entries[0].mode = 0o170_755;
    assert!(matches!(
        validate(&l.build().index),
        Err(FormatError::BadMode { .. })
    ));
    let mut l = base();
    l.entries[0].uid = u64::MAX;
    let built = l.build();
    validate(&built.index).unwrap();
    for r in assemble_both(&built.index, &MemReader::of(&built)) {
        assert!(matches!(r, Err(AssembleError::BadIndex { .. })), "{r:?}");
    }
}

#[test]
fn index_blob_decompression_is_capped() {
    // A zstd bomb: a few KiB that inflate past the cap. Streamed, so the test itself stays small.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(MAX_INDEX_SIZE >> 20) + 8 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "bomb is {} bytes", bomb.len());
    let started = std::time::Instant::now();
    assert!(matches!(decode(&bomb), Err(FormatError::TooLarge)));
    assert!(started.elapsed().as_secs() < 30);

    // Garbage, truncated and non-protobuf blobs are typed errors.
    assert!(matches!(
        decode(b"not zstd"),
        Err(FormatError::Decompress(_))
    ));
    let good = encode(&base().build().index);
    assert!(matches!(
        decode(&good[..good.len() / 2]),
        Err(FormatError::Decompress(_))
    ));
    let junk = zstd::bulk::compress(&[0xff; 64], 3).unwrap();
    assert!(matches!(decode(&junk), Err(FormatError::Decode(_))));
    // A protobuf that claims a huge length-delimited field.
    let mut raw = base().build().index.encode_to_vec();
    raw.extend_from_slice(&[0x22, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let blob = zstd::bulk::compress(&raw, 3).unwrap();
    assert!(matches!(decode(&blob), Err(FormatError::Decode(_))));
    // Unknown versions and missing parts.
    let mut index = base().build().index;
    index.version = FORMAT_VERSION + 1;
    assert!(matches!(
        decode(&encode(&index)),
        Err(FormatError::UnknownVersion(v)) if v == FORMAT_VERSION + 1
    ));
    index.version = 1;
    index.chunker = None;
    assert!(matches!(validate(&index), Err(FormatError::MissingChunker)));
    let mut index = base().build().index;
    index.packs[0].digest = "sha256:nothex".into();
    assert!(matches!(
        validate(&index),
        Err(FormatError::BadDigest { what: "pack", .. })
    ));
}

#[test]
fn whiteout_names_cannot_escape() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    for name in [".wh..", ".wh...", ".wh."] {
        let mut l = Layer::default();
        l.dir("d").file(&format!("d/{name}"), b"");
        let built = l.build();
        for r in assemble_both(&built.index, &MemReader::of(&built)) {
            assert!(r.is_err(), "{name}: {r:?}");
        }
    }
    // A whiteout hidden behind a symlink parent.
    let sb = Sandbox::new();
    let mut l = Layer::default();
    l.symlink("a", &sb.sentinel_str()).file("a/.wh.passwd", b"");
    let built = l.build();
    for mode in MODES {
        let _ = assemble_layer(&built.index, &MemReader::of(&built), &sb.dest, mode);
        sb.assert_untouched();
        std::fs::remove_dir_all(&sb.dest).unwrap();
        std::fs::create_dir(&sb.dest).unwrap();
    }
    // Assembled, every entry type lands inside dest.
    let mut l = base();
    l.entries.push(crate::entry(b"dev/null", EntryType::Char));
    let built = l.build();
    for r in assemble_both(&built.index, &MemReader::of(&built)) {
        r.unwrap();
    }
}
