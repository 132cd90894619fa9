//! Unit tests for `index`: encode/decode and one test per validation rule.

use super::*;
use crate::chunker::ChunkerParams;
use crate::delta::MAX_DELTA_BASE;
use crate::digest::Digest;
use crate::pb::{Chunk, Chunker, Delta, Entry, EntryType, Pack, Source, Xattr};

fn entry(path: &str, kind: EntryType) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        r#type: kind as i32,
        mode: 0o755,
        ..Default::default()
    }
}

fn file(path: &str, offset: u64, size: u64) -> Entry {
    Entry {
        offset,
        size,
        mode: 0o644,
        ..entry(path, EntryType::File)
    }
}

/// A valid index: 3 files over 300 content bytes, 2 chunks in 1 pack.
fn valid() -> LayerIndex {
    let d = |s: &[u8]| Digest::of(s).to_string();
    LayerIndex {
        version: FORMAT_VERSION,
        source: Some(Source {
            digest: d(b"layer"),
            diff_id: d(b"tar"),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            compressed_size: 10,
            uncompressed_size: 2048,
            content_size: 300,
        }),
        chunker: Some(Chunker::from(ChunkerParams::default())),
        entries: vec![
            entry("etc", EntryType::Dir),
            file("etc/a", 0, 100),
            file("etc/b", 100, 0),
            Entry {
                link_target: b"etc/a".to_vec(),
                ..entry("etc/hl", EntryType::Hardlink)
            },
            Entry {
                link_target: b"/nowhere".to_vec(),
                ..entry("etc/sl", EntryType::Symlink)
            },
            Entry {
                xattrs: vec![Xattr {
                    name: "security.capability".into(),
                    value: vec![1, 0, 0, 2],
                }],
                ..file("bin/x", 100, 200)
            },
            Entry {
                dev_major: 1,
                dev_minor: 3,
                ..entry("dev/null", EntryType::Char)
            },
        ],
        chunks: vec![
            Chunk {
                digest: vec![1; 32],
                size: 120,
                pack: 0,
                pack_offset: 0,
                stored_size: 120,
                compression: Compression::None as i32,
                delta: None,
            },
            Chunk {
                digest: vec![2; 32],
                size: 180,
                pack: 0,
                pack_offset: 120,
                stored_size: 50,
                compression: Compression::Zstd as i32,
                delta: None,
            },
        ],
        packs: vec![Pack {
            digest: d(b"pack"),
            size: 170,
        }],
        delta_bases: Vec::new(),
        tar_split: None,
    }
}

fn err(index: &LayerIndex) -> FormatError {
    validate(index).expect_err("index should be rejected")
}

#[test]
fn valid_index_round_trips_deterministically() {
    let index = valid();
    validate(&index).unwrap();
    let blob = encode(&index);
    assert_eq!(blob, encode(&index));
    assert_eq!(decode(&blob).unwrap(), index);
}

#[test]
fn decode_rejects_garbage_and_bombs() {
    assert!(matches!(
        decode(b"not zstd"),
        Err(FormatError::Decompress(_))
    ));
    let bomb = zstd::bulk::compress(&vec![0u8; MAX_INDEX_SIZE + 1], 1).unwrap();
    assert!(matches!(decode(&bomb), Err(FormatError::TooLarge)));
    let junk = zstd::bulk::compress(&[0xff; 16], 1).unwrap();
    assert!(matches!(decode(&junk), Err(FormatError::Decode(_))));
}

#[test]
fn rejects_unknown_version() {
    let mut i = valid();
    i.version = FORMAT_VERSION + 1;
    assert!(matches!(err(&i), FormatError::UnknownVersion(v) if v == FORMAT_VERSION + 1));
    i.version = 0;
    assert!(matches!(err(&i), FormatError::UnknownVersion(0)));
    // Version 1 (no tar-split) still reads: converters use such indexes as delta bases.
    i.version = 1;
    validate(&i).unwrap();
}

#[test]
fn rejects_tar_split_not_covering_the_content() {
    let mut i = valid();
    i.tar_split = Some(crate::pb::TarSplit {
        raw: vec![0; 1024],
        raw_len: vec![512],
        content_len: vec![299],
    });
    assert!(matches!(err(&i), FormatError::TarSplit(_)));
    i.tar_split.as_mut().unwrap().content_len = vec![300];
    validate(&i).unwrap();
}

#[test]
fn rejects_missing_parts_and_bad_digests() {
    let mut i = valid();
    i.source = None;
    assert!(matches!(err(&i), FormatError::MissingSource));
    let mut i = valid();
    i.chunker = None;
    assert!(matches!(err(&i), FormatError::MissingChunker));
    let mut i = valid();
    i.source.as_mut().unwrap().diff_id = "sha256:abc".into();
    assert!(matches!(
        err(&i),
        FormatError::BadDigest {
            what: "diff_id",
            ..
        }
    ));
    let mut i = valid();
    i.packs[0].digest = "md5:00".into();
    assert!(matches!(
        err(&i),
        FormatError::BadDigest { what: "pack", .. }
    ));
    let mut i = valid();
    i.chunks[1].digest = vec![0; 31];
    assert!(matches!(
        err(&i),
        FormatError::BadDigestLength { chunk: 1, len: 31 }
    ));
}

#[test]
fn rejects_bad_chunker() {
    let mut i = valid();
    i.chunker.as_mut().unwrap().algorithm = "fastcdc-2016".into();
    assert!(matches!(err(&i), FormatError::Chunker(_)));
    let mut i = valid();
    i.chunker.as_mut().unwrap().min_size = 1 << 30;
    assert!(matches!(err(&i), FormatError::Chunker(_)));
}

#[test]
fn rejects_unsafe_paths() {
    for bad in [
        "", "/etc", "./etc", "a/../b", "..", "a//b", "a/", "a/./b", "a\0b",
    ] {
        let mut i = valid();
        i.entries[0].path = bad.as_bytes().to_vec();
        assert!(
            matches!(err(&i), FormatError::UnsafePath { entry: 0, .. }),
            "{bad:?}"
        );
    }
    // There is no entry for the layer root.
    let mut i = valid();
    i.entries[0].path = b".".to_vec();
    assert!(matches!(err(&i), FormatError::UnsafePath { .. }));
    // Non-UTF-8 paths are fine.
    let mut i = valid();
    i.entries[0].path = vec![b'e', 0xff, b't'];
    validate(&i).unwrap();
}

#[test]
fn rejects_duplicate_paths() {
    let mut i = valid();
    i.entries.push(entry("etc", EntryType::Dir));
    assert!(matches!(
        err(&i),
        FormatError::DuplicatePath { entry: 7, .. }
    ));
}

#[test]
fn rejects_entries_beneath_non_directories() {
    let mut i = valid();
    i.entries.push(entry("etc/sl/passwd", EntryType::Dir)); // beneath a symlink
    assert!(matches!(
        err(&i),
        FormatError::ParentNotDirectory { entry: 7, .. }
    ));
    let mut i = valid();
    i.entries.push(entry("etc/a/x", EntryType::Fifo)); // beneath a file
    assert!(matches!(
        err(&i),
        FormatError::ParentNotDirectory { entry: 7, .. }
    ));
}

#[test]
fn rejects_bad_entry_fields() {
    let mut i = valid();
    i.entries[0].r#type = 42;
    assert!(matches!(
        err(&i),
        FormatError::UnknownEntryType { value: 42, .. }
    ));
    let mut i = valid();
    i.entries[0].mode = 0o40755;
    assert!(matches!(err(&i), FormatError::BadMode { .. }));
    let mut i = valid();
    i.entries[0].mtime_nsec = 1_000_000_000;
    assert!(matches!(err(&i), FormatError::BadMtime { .. }));
    let mut i = valid();
    i.entries[5].xattrs[0].name = String::new();
    assert!(matches!(err(&i), FormatError::BadXattr { .. }));
    let mut i = valid();
    i.entries[4].link_target.clear();
    assert!(matches!(err(&i), FormatError::BadSymlink { .. }));
}

#[test]
fn rejects_content_ranges_out_of_order_or_beyond_stream() {
    let mut i = valid();
    i.entries[5].offset = 50; // overlaps etc/a
    assert!(matches!(
        err(&i),
        FormatError::BadContentRange { entry: 5, .. }
    ));
    let mut i = valid();
    i.entries[5].size = 201;
    assert!(matches!(
        err(&i),
        FormatError::BadContentRange { entry: 5, .. }
    ));
    let mut i = valid();
    i.entries[5].offset = u64::MAX;
    assert!(matches!(
        err(&i),
        FormatError::BadContentRange { entry: 5, .. }
    ));
}

#[test]
fn rejects_bad_hardlinks() {
    for target in [&b"etc"[..], b"bin/x", b"etc/hl-missing", b"etc/hl"] {
        let mut i = valid();
        i.entries[3].link_target = target.to_vec();
        assert!(
            matches!(err(&i), FormatError::BadHardlink { entry: 3, .. }),
            "{target:?}"
        );
    }
}

#[test]
fn rejects_bad_chunks() {
    let mut i = valid();
    i.chunks[0].size = 0;
    i.chunks[0].stored_size = 0;
    assert!(matches!(
        err(&i),
        FormatError::BadChunkSize { chunk: 0, .. }
    ));
    let mut i = valid();
    i.chunker.as_mut().unwrap().max_size = 1024;
    i.chunker.as_mut().unwrap().avg_size = 1024;
    i.chunker.as_mut().unwrap().min_size = 1024;
    i.chunks[0].size = 1026;
    assert!(matches!(
        err(&i),
        FormatError::BadChunkSize { chunk: 0, .. }
    ));
    let mut i = valid();
    i.chunks[1].size = 181;
    assert!(matches!(
        err(&i),
        FormatError::ChunkSumMismatch {
            sum: 301,
            content_size: 300
        }
    ));
    let mut i = valid();
    i.chunks[1].pack = 1;
    assert!(matches!(
        err(&i),
        FormatError::BadPackRef {
            chunk: 1,
            pack: 1,
            packs: 1
        }
    ));
    let mut i = valid();
    i.chunks[1].compression = 7;
    assert!(matches!(
        err(&i),
        FormatError::UnknownCompression { chunk: 1, value: 7 }
    ));
    let mut i = valid();
    i.chunks[0].stored_size = 119; // raw chunks are stored as-is
    assert!(matches!(
        err(&i),
        FormatError::BadStoredSize { chunk: 0, .. }
    ));
    let mut i = valid();
    i.chunks[1].stored_size = 10_000; // beyond zstd's worst case for 180 bytes
    i.packs[0].size = 20_000;
    assert!(matches!(
        err(&i),
        FormatError::BadStoredSize { chunk: 1, .. }
    ));
    let mut i = valid();
    i.packs[0].size = 169;
    assert!(matches!(
        err(&i),
        FormatError::ChunkOutsidePack { chunk: 1, .. }
    ));
}

#[test]
fn zstd_bound_covers_real_worst_case() {
    for size in [1usize, 100, 4096, 70_000, 200_000] {
        let data: Vec<u8> = (0..size)
            .map(|i| (i as u32).wrapping_mul(2654435761).rotate_right(13) as u8)
            .collect();
        let frame = zstd::bulk::compress(&data, 19).unwrap();
        assert!(
            frame.len() as u64 <= max_stored_size(size as u32, Compression::Zstd),
            "{size}"
        );
    }
}

/// [`valid`] with a delta on chunk 1 (bases 0..2 of a two-base table) in a second pack.
fn with_delta() -> LayerIndex {
    let mut i = valid();
    i.packs.push(Pack {
        digest: Digest::of(b"deltas").to_string(),
        size: 40,
    });
    i.delta_bases = vec![
        crate::pb::BaseChunk {
            digest: vec![7; 32],
            size: 1000,
        },
        crate::pb::BaseChunk {
            digest: vec![8; 32],
            size: 2000,
        },
    ];
    i.chunks[1].delta = Some(Delta {
        pack: 1,
        pack_offset: 10,
        stored_size: 30,
        base_first: 0,
        base_count: 2,
    });
    i
}

#[test]
fn accepts_deltas_and_rejects_bad_ones() {
    let i = with_delta();
    validate(&i).unwrap();
    assert_eq!(decode(&encode(&i)).unwrap(), i);

    let bad_delta = |f: fn(&mut Delta)| {
        let mut i = with_delta();
        f(i.chunks[1].delta.as_mut().unwrap());
        err(&i)
    };
    for f in [
        (|d: &mut Delta| d.pack = 2) as fn(&mut Delta),
        |d| d.pack_offset = 11,
        |d| d.stored_size = 0,
        |d| d.stored_size = 100_000,
        |d| d.base_count = 0,
        |d| d.base_count = 3,
        |d| d.base_first = u32::MAX,
        |d| d.pack_offset = u64::MAX,
    ] {
        assert!(matches!(
            bad_delta(f),
            FormatError::BadDelta { chunk: 1, .. }
        ));
    }
    let mut i = with_delta();
    i.delta_bases[1].digest = vec![8; 31];
    assert!(matches!(err(&i), FormatError::BadDeltaBase { base: 1, .. }));
    let mut i = with_delta();
    i.delta_bases[0].size = 0;
    assert!(matches!(err(&i), FormatError::BadDeltaBase { base: 0, .. }));
    // Bases may each be within bounds and still total more than a node will hold.
    let mut i = with_delta();
    i.delta_bases[0].size = MAX_DELTA_BASE as u32;
    assert!(matches!(err(&i), FormatError::BadDelta { chunk: 1, .. }));
}

#[test]
fn format_3_stores_offsets_as_gaps_and_reads_them_back_absolute() {
    let mut ix = valid();
    // Content no entry holds (a replaced file's) before bin/x: a gap of 50 bytes.
    let x = ix.entries.iter_mut().find(|e| e.path == b"bin/x").unwrap();
    x.offset = 150;
    x.size = 150;
    ix.tar_split = Some(crate::pb::TarSplit {
        raw: vec![7; 2000],
        raw_len: vec![512, 512, 512],
        content_len: vec![100, 50, 150],
    });
    validate(&ix).unwrap();
    let raw = encode_raw(&ix);
    let stored = LayerIndex::decode(raw.as_slice()).unwrap();
    let gaps: Vec<u64> = stored
        .entries
        .iter()
        .filter(|e| e.r#type == EntryType::File as i32)
        .map(|e| e.offset)
        .collect();
    assert_eq!(gaps, vec![0, 0, 50]);
    // Written field by field, it is exactly prost's own encoding of the stored form.
    let mut with_gaps = ix.clone();
    let mut end = 0;
    for e in with_gaps
        .entries
        .iter_mut()
        .filter(|e| e.r#type == EntryType::File as i32)
    {
        (e.offset, end) = (e.offset - end, e.offset + e.size);
    }
    assert_eq!(raw, with_gaps.encode_to_vec());
    assert_eq!(decode_raw(&raw).unwrap(), ix);
    // Format 2 keeps absolute offsets, and reads back the same.
    ix.version = 2;
    let raw = encode_raw(&ix);
    assert_eq!(LayerIndex::decode(raw.as_slice()).unwrap(), ix);
    assert_eq!(decode_raw(&raw).unwrap(), ix);
}

#[test]
fn files_out_of_stream_order_are_written_as_format_2_and_refused() {
    let mut ix = valid();
    let x = ix.entries.iter_mut().find(|e| e.path == b"etc/a").unwrap();
    x.offset = 250;
    x.size = 10;
    let raw = encode_raw(&ix);
    assert_eq!(LayerIndex::decode(raw.as_slice()).unwrap().version, 2);
    assert!(decode_raw(&raw).is_err());
}

#[test]
fn gaps_that_overflow_are_refused() {
    let mut ix = valid();
    ix.entries.iter_mut().for_each(|e| e.offset = 0);
    let last = ix
        .entries
        .iter_mut()
        .rfind(|e| e.r#type == EntryType::File as i32)
        .unwrap();
    last.offset = u64::MAX;
    let raw = ix.encode_to_vec();
    assert!(matches!(decode_raw(&raw), Err(FormatError::OffsetOverflow)));
}
