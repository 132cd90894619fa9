//! Golden output: a fixed, generated input must give exactly these cut points, chunk digests,
//! pack, delta frame and index bytes.
//!
//! Registries already hold chunks, packs and indexes this crate wrote, and nodes dedup by chunk
//! digest. If a dependency upgrade (fastcdc, zstd, prost) or a code change moves a constant
//! below, new conversions stop sharing chunks with existing ones (cut points, chunk digests) or
//! stop being byte-identical reruns (pack, delta, index digests). Do not just paste the new
//! value: find out why it moved, and either keep the old output (pin or configure the
//! dependency) or make it a deliberate format change (docs/format.md, a decision entry, and for
//! chunking changes a new `Chunker` algorithm name so old and new chunks are never confused).

use chunksnap_format::chunker::{ChunkerError, ChunkerParams, chunk_stream};
use chunksnap_format::delta::{compress_delta, compress_index_delta, decompress_delta};
use chunksnap_format::digest::Digest;
use chunksnap_format::index::{self, FORMAT_VERSION};
use chunksnap_format::pack::{DEFAULT_CHUNK_LEVEL, DEFAULT_PACK_SIZE, PackBuilder, compress_chunk};
use chunksnap_format::pb::{Chunk, Entry, EntryType, LayerIndex, Pack, Source, Xattr};

/// Length of the generated content stream.
const INPUT_LEN: usize = 384 << 10;

/// Content: words from a small vocabulary picked by splitmix64, so FastCDC finds cut points and
/// zstd finds something to compress (random bytes would be stored raw). No files, no clock.
fn input() -> Vec<u8> {
    const WORDS: [&[u8]; 16] = [
        b"layer ",
        b"chunk ",
        b"index ",
        b"pack\n",
        b"digest ",
        b"zstd ",
        b"delta ",
        b"tar\t",
        b"registry ",
        b"node ",
        b"snapshot ",
        b"overlay\n",
        b"/usr/lib/",
        b"0x7f ",
        b"ELF ",
        b"{}",
    ];
    let mut state: u64 = 0x0123_4567_89ab_cdef;
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = Vec::with_capacity(INPUT_LEN + 16);
    while out.len() < INPUT_LEN {
        let r = next();
        out.extend_from_slice(WORDS[(r & 15) as usize]);
        // Now and then a raw byte, so no two stretches repeat exactly.
        if r >> 60 == 0 {
            out.push((r >> 8) as u8);
        }
    }
    out.truncate(INPUT_LEN);
    out
}

/// The content cut with the default (production) chunker parameters.
fn chunks(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    chunk_stream::<_, ChunkerError, _>(data, &ChunkerParams::default(), |c| {
        out.push(c);
        Ok(())
    })
    .expect("chunking memory cannot fail");
    out
}

fn sha(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

const INPUT_DIGEST: &str =
    "sha256:041dc7c0c1f663d3a76ead9d463f4c9d3eace77b5c8ad67c74963a1b38b7c4e4";

/// End offsets of the chunks in the content stream.
const CUT_POINTS: &[usize] = &[
    34783, 70432, 119415, 167257, 186150, 203973, 246129, 260527, 346220, 380736, 393216,
];

const CHUNK_DIGESTS: &[&str] = &[
    "sha256:6b4b1c9fb1b2b02fac9a26d4ef1adce378f7580b4ca7365ec72f175f0fea076e",
    "sha256:fa9df7439569d50837f6f71a7811bf47defc25543220aef7a2455f764f0fbc3f",
    "sha256:2db4afa8da5fdf6c0cbcfc04f86d8510ccb6e4d677a968c5a703487c88ec730c",
    "sha256:35dd58abb9703fd182c2764f567d8928cb7a6b4c007c9295b262912b30cbc6c3",
    "sha256:22070fce0a31e15c6f712d7e93eb0afbe34663703c39c53c4c567dc88c1a71a5",
    "sha256:adbaacfe7ea46ce1f0a87c06074eb33774e8c6f8a73c3825174e4615c48f6fa6",
    "sha256:a111cb1ff1f53cfcd40d391c0bbcd25fc36446d2b31044c1023da5e58d95c5da",
    "sha256:95da65aba0e37f3c789208df2053cb9f579e451633576d1a38d197b6857679dd",
    "sha256:07f9f1959305e383ff73f96ab801be22b65501a60eb11fd0d1b5ee330426d796",
    "sha256:220d850c5e9f933cbdd8e11b9dd4d41e3494e250e057523c79682555ceba8012",
    "sha256:0518b3248bd504d2befce8713ea80327912ca262ae0f0cb75489e7b763f4ebd5",
];

#[test]
fn input_is_fixed() {
    // Guards the generator itself: every other constant depends on it.
    assert_eq!(sha(&input()), INPUT_DIGEST);
}

#[test]
fn fastcdc_cut_points_and_chunk_digests() {
    let chunks = chunks(&input());
    let mut end = 0;
    let cuts: Vec<usize> = chunks
        .iter()
        .map(|c| {
            end += c.len();
            end
        })
        .collect();
    assert_eq!(cuts, CUT_POINTS);
    let digests: Vec<String> = chunks.iter().map(|c| sha(c)).collect();
    assert_eq!(digests, CHUNK_DIGESTS);
}

/// The layer as the converter writes it: chunks compressed at the default level into one pack,
/// and an index over three entries.
fn layer(data: &[u8]) -> (Vec<u8>, LayerIndex) {
    let mut packs = PackBuilder::new(DEFAULT_PACK_SIZE).expect("default pack size is valid");
    let mut index_chunks = Vec::new();
    for c in chunks(data) {
        let stored = compress_chunk(&c, DEFAULT_CHUNK_LEVEL).expect("compress");
        let (loc, done) = packs.push(&stored.data);
        assert!(done.is_none(), "the input fits one pack");
        index_chunks.push(Chunk {
            digest: Digest::of(&c).as_bytes().to_vec(),
            size: c.len() as u32,
            pack: loc.pack,
            pack_offset: loc.offset,
            stored_size: loc.stored_size,
            compression: stored.compression as i32,
            delta: None,
        });
    }
    let pack = packs.finish().expect("one pack");
    let file = |path: &str, offset: u64, size: u64| Entry {
        path: path.into(),
        r#type: EntryType::File as i32,
        mode: 0o644,
        mtime_sec: 1_700_000_000,
        size,
        offset,
        uname: "root".into(),
        gname: "root".into(),
        content_digest: Digest::of(&data[offset as usize..(offset + size) as usize])
            .as_bytes()
            .to_vec(),
        ..Default::default()
    };
    let half = data.len() as u64 / 2;
    let entries = vec![
        Entry {
            path: "usr".into(),
            r#type: EntryType::Dir as i32,
            mode: 0o755,
            mtime_sec: 1_700_000_000,
            xattrs: vec![Xattr {
                name: "user.golden".into(),
                value: b"1".to_vec(),
            }],
            ..Default::default()
        },
        file("usr/a", 0, half),
        file("usr/b", half, data.len() as u64 - half),
        Entry {
            path: "usr/c".into(),
            r#type: EntryType::Symlink as i32,
            mode: 0o777,
            link_target: "a".into(),
            ..Default::default()
        },
    ];
    let index = LayerIndex {
        version: FORMAT_VERSION,
        source: Some(Source {
            digest: sha(b"golden layer blob"),
            diff_id: sha(b"golden layer tar"),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            compressed_size: 1234,
            uncompressed_size: 5678,
            content_size: data.len() as u64,
        }),
        chunker: Some(ChunkerParams::default().into()),
        entries,
        chunks: index_chunks,
        packs: vec![Pack {
            digest: pack.digest.to_string(),
            size: pack.data.len() as u64,
        }],
        delta_bases: Vec::new(),
        tar_split: None,
    };
    (pack.data, index)
}

const PACK_LEN: usize = 81299;
const PACK_DIGEST: &str = "sha256:975fa9d20353b70210b9fc08518ffcc7fde63d140688eef9706e7baf83aef4b5";
// Format version 3 (file offsets stored as gaps; this hand-built index carries no tar-split).
const INDEX_RAW_DIGEST: &str =
    "sha256:94f8a101d0ae4f84a0b59ae8108148f67bbcfd05652326eec08f8e925ab85f2b";
// The same index as format 2 (absolute offsets), as earlier converters wrote it.
const INDEX_V2_RAW_DIGEST: &str =
    "sha256:22a5fbb3d7d75619c83ffda757227b500c502508966987198a05e87ef0ef9b3c";
const INDEX_BLOB_DIGEST: &str =
    "sha256:91e8f174d39f68089c1c6a507e799ae9013154ce50f4dc0d8e840ee603442b5d";

#[test]
fn pack_and_index_bytes() {
    let data = input();
    let (pack, index) = layer(&data);
    assert_eq!(pack.len(), PACK_LEN);
    assert_eq!(sha(&pack), PACK_DIGEST);
    index::validate(&index).expect("the golden index is valid");
    // Raw protobuf (prost) and the zstd blob (zstd) are pinned separately, so a failure says
    // which dependency moved.
    assert_eq!(sha(&index::encode_raw(&index)), INDEX_RAW_DIGEST);
    let mut v2 = index.clone();
    v2.version = 2;
    assert_eq!(sha(&index::encode_raw(&v2)), INDEX_V2_RAW_DIGEST);
    assert_eq!(index::decode(&index::encode(&v2)).expect("decodes"), v2);
    let blob = index::encode(&index);
    assert_eq!(sha(&blob), INDEX_BLOB_DIGEST);
    assert_eq!(index::decode(&blob).expect("decodes"), index);
}

const DELTA_FRAME_LEN: usize = 91;
const DELTA_FRAME_DIGEST: &str =
    "sha256:6f719a18aef63d1df3e810b628e561997ffe2e6cc618de49a7e7bc0d93a59c4e";
const INDEX_DELTA_DIGEST: &str =
    "sha256:019befe7d302e7390d8752c448d75b8f8ede224ea5e4106afa8965279bbecf03";

#[test]
fn delta_frames() {
    let data = input();
    let chunks = chunks(&data);
    // A new version of chunk 1: an edit in the middle, compressed against the old chunk.
    let base = &chunks[1];
    let mut edited = base.clone();
    let mid = edited.len() / 2;
    edited[mid..mid + 16].copy_from_slice(b"edited in place!");
    let frame = compress_delta(base, &edited, DEFAULT_CHUNK_LEVEL).expect("compress");
    assert_eq!(frame.len(), DELTA_FRAME_LEN);
    assert_eq!(sha(&frame), DELTA_FRAME_DIGEST);
    let back = decompress_delta(&frame, base, edited.len() as u64, &Digest::of(&edited))
        .expect("the delta decodes against its base");
    assert_eq!(back, edited);

    // An index delta between two versions of the layer's index.
    let (_, old) = layer(&data);
    let (_, mut new) = layer(&data);
    new.entries[1].mtime_sec += 1;
    let raw_old = index::encode_raw(&old);
    let raw_new = index::encode_raw(&new);
    let delta = compress_index_delta(&raw_old, &raw_new)
        .expect("small enough for an index delta")
        .expect("compress");
    assert_eq!(sha(&delta), INDEX_DELTA_DIGEST);
}
