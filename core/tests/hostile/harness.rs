//! The checks the fuzz targets run, shared with `cargo test` so the seed corpora under
//! `fuzz/corpus/` are regression tests on stable too. The fuzz crate includes this file with
//! `#[path]`; it depends only on chunksnap-core, chunksnap-format, prost and tempfile.
//!
//! Every function takes arbitrary bytes and panics only when an invariant is broken (a panic is
//! what the fuzzer reports); rejecting the input with an error is always fine.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use chunksnap_core::assemble::{ChunkReader, WhiteoutMode, assemble_layer};
use chunksnap_core::store::StoreError;
use chunksnap_core::tarscan::scan_tar;
use chunksnap_format::FormatError;
use chunksnap_format::PackError;
use chunksnap_format::artifact::{self, ArtifactError, LayerEntry};
use chunksnap_format::chunker::{ChunkerError, ChunkerParams, chunk_stream};
use chunksnap_format::delta::decompress_index_delta;
use chunksnap_format::digest::Digest;
use chunksnap_format::index::{FORMAT_VERSION, decode, decode_raw, is_safe_path, validate};
use chunksnap_format::pack::{PackBuilder, compress_chunk};
use chunksnap_format::pb::{Chunk, EntryType, LayerIndex, Pack, Source};
use prost::Message;

/// Small chunker parameters so that tiny inputs still make several chunks.
pub const SMALL: ChunkerParams = ChunkerParams {
    min: 64,
    avg: 256,
    max: 1024,
    normalization: 1,
};

/// Indexes larger than this are not assembled by [`check_index`] (keeps executions fast).
const ASSEMBLE_MAX_CONTENT: u64 = 16 << 20;
const ASSEMBLE_MAX_ENTRIES: usize = 2_000;

/// Target `index`: `data` as an index blob (zstd + protobuf) and as a raw protobuf message.
/// Whatever validates must survive an encode/decode round trip unchanged, and must assemble
/// (or fail with an error) without writing outside the destination.
pub fn check_index(data: &[u8]) {
    if let Ok(index) = decode(data) {
        round_trip(&index);
    }
    if let Ok(index) = LayerIndex::decode(data)
        && validate(&index).is_ok()
    {
        round_trip(&index);
        assemble_contained(&index);
    }
}

/// Largest raw index [`check_index_delta`] lets a frame declare (nodes allow `MAX_INDEX_SIZE`;
/// smaller keeps executions fast, and the bound is the same code).
const DELTA_MAX: u64 = 16 << 20;

/// Target `index_delta`: `data` as an index delta input, `[base length: u32 LE][base][frame]`
/// (see [`delta_input`]). The frame must never inflate past the bound, must be refused under a
/// digest it does not match, and must decode again under the digest it does; what it decodes
/// to goes through `decode_raw` as a node's would.
pub fn check_index_delta(data: &[u8]) {
    let Some((base, frame)) = split_delta_input(data) else {
        return;
    };
    // A fuzzer cannot forge a sha256: ask under a wrong one, and learn the real one from the
    // refusal.
    let wrong = Digest::of(b"not the index");
    let actual = match decompress_index_delta(frame, base, DELTA_MAX, &wrong) {
        Ok(raw) => panic!("{} bytes accepted under a wrong digest", raw.len()),
        Err(PackError::DigestMismatch { actual, .. }) => actual,
        Err(_) => return,
    };
    let raw = decompress_index_delta(frame, base, DELTA_MAX, &actual)
        .expect("a frame decodes again under its own digest");
    assert!(raw.len() as u64 <= DELTA_MAX, "inflated past the bound");
    assert_eq!(Digest::of(&raw), actual);
    if let Ok(index) = decode_raw(&raw) {
        round_trip(&index);
    }
}

/// `[base length: u32 LE][base][frame]`, the input form of [`check_index_delta`].
pub fn delta_input(base: &[u8], frame: &[u8]) -> Vec<u8> {
    let len = u32::try_from(base.len()).expect("base under 4 GiB");
    [&len.to_le_bytes()[..], base, frame].concat()
}

fn split_delta_input(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// Target `tarscan`: `data` as a layer tar. A scan that succeeds must give safe, unique paths
/// and a consistent content stream; the index built from it must validate, except for the
/// link/xattr checks that only `validate` makes (then conversion fails with that error).
pub fn check_tar(data: &[u8]) {
    let mut content = Vec::new();
    let Ok(scan) = scan_tar(data, &mut content) else {
        return;
    };
    assert_eq!(scan.content_size, content.len() as u64, "content size");
    let mut seen = HashSet::new();
    let mut next = 0u64;
    for e in &scan.entries {
        assert!(is_safe_path(&e.path), "unsafe path {:?}", e.path);
        assert!(seen.insert(e.path.clone()), "duplicate path {:?}", e.path);
        if e.r#type == EntryType::File as i32 {
            assert!(e.offset >= next, "file content out of order");
            next = e.offset + e.size;
        }
    }
    assert!(next <= scan.content_size, "file content past the stream");
    let index = build_index(&scan.entries, &content);
    match validate(&index) {
        Ok(()) => round_trip(&index),
        Err(
            FormatError::BadHardlink { .. }
            | FormatError::ParentNotDirectory { .. }
            | FormatError::BadSymlink { .. }
            | FormatError::BadXattr { .. },
        ) => {}
        Err(e) => panic!("tarscan output fails validation: {e}"),
    }
}

/// Target `artifact`: `data` as an artifact manifest. One that parses must parse again with its
/// own subject, be refused for any other subject, and rebuild to the same layers and packs.
pub fn check_artifact(data: &[u8]) {
    let Ok(a) = artifact::parse(data, None) else {
        return;
    };
    let subject = a
        .subject
        .sha256()
        .expect("parse checked the subject digest");
    let again = artifact::parse(data, Some(&subject)).expect("own subject must match");
    assert_eq!(again, a);
    let other = Digest::of(subject.as_bytes());
    assert!(matches!(
        artifact::parse(data, Some(&other)),
        Err(ArtifactError::SubjectMismatch { .. })
    ));
    if a.indexes.is_empty() {
        return;
    }
    let packs: Vec<(Digest, u64)> = a.packs.iter().map(|(d, s)| (*d, *s)).collect();
    let layers: Vec<LayerEntry> = a
        .indexes
        .iter()
        .enumerate()
        .map(|(i, (layer, desc))| LayerEntry {
            layer_digest: *layer,
            index_digest: desc.sha256().expect("parse checked index digests"),
            index_size: desc.size,
            index_inline: None,
            packs: if i == 0 { packs.clone() } else { Vec::new() },
            index_delta: None,
            sketch: None,
        })
        .collect();
    let built = artifact::build(&a.subject, &layers).expect("a parsed artifact rebuilds");
    let back = artifact::parse(&built.bytes, Some(&subject)).expect("a built artifact parses");
    assert_eq!(back.packs, a.packs);
    let digests = |x: &artifact::Artifact| -> BTreeSet<(Digest, String, u64)> {
        x.indexes
            .iter()
            .map(|(l, d)| (*l, d.digest.clone(), d.size))
            .collect()
    };
    assert_eq!(digests(&back), digests(&a));
}

/// `decode(encode(index))` must give `index` back. Under AddressSanitizer (`cargo fuzz` sets
/// `cfg(fuzzing)`), zstd 1.5.7's optimal parser, which `encode`'s level uses, reports a
/// stack-use-after-scope inside the C library, so fuzz builds check the protobuf layer only.
#[allow(unexpected_cfgs)]
fn round_trip(index: &LayerIndex) {
    #[cfg(not(fuzzing))]
    let back = decode(&chunksnap_format::index::encode(index))
        .expect("a valid index decodes after encoding");
    #[cfg(fuzzing)]
    let back = {
        chunksnap_format::index::decode_raw(&chunksnap_format::index::encode_raw(index))
            .expect("a valid index is valid after a round trip")
    };
    assert_eq!(&back, index, "encode/decode round trip");
}

/// Gives every chunk as zeros of its size: the assembler trusts its reader, so this exercises
/// it on any valid index without needing the real content.
struct Zeros;

impl ChunkReader for Zeros {
    fn read_chunk(&self, _digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        Ok(vec![0; size as usize])
    }
}

/// Assembles a valid index into a fresh directory next to a sentinel; the sentinel must stay
/// untouched whether assembly succeeds or fails.
fn assemble_contained(index: &LayerIndex) {
    let content = index.source.as_ref().map_or(0, |s| s.content_size);
    if content > ASSEMBLE_MAX_CONTENT || index.entries.len() > ASSEMBLE_MAX_ENTRIES {
        return;
    }
    let Ok(root) = tempfile::tempdir() else {
        return;
    };
    let dest = root.path().join("dest");
    let sentinel = root.path().join("sentinel");
    if std::fs::create_dir(&dest).is_err() || std::fs::create_dir(&sentinel).is_err() {
        return;
    }
    for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
        let _ = assemble_layer(index, &Zeros, &dest, mode);
        assert_only(root.path(), &["dest", "sentinel"]);
        assert_only(&sentinel, &[]);
    }
}

/// Asserts `dir` holds exactly `names`.
pub fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    assert_eq!(found, names, "{} was written to", dir.display());
}

/// Builds a valid index for `entries` and their content stream the way the converter does
/// (FastCDC with [`SMALL`] parameters, zstd frames, small packs). Returns only the index; see
/// [`build_layer`] for the packs and chunks too.
pub fn build_index(entries: &[chunksnap_format::pb::Entry], content: &[u8]) -> LayerIndex {
    build_layer(entries, content).index
}

/// An index with its packs (digest string → bytes) and chunks (digest → uncompressed bytes).
pub struct BuiltLayer {
    pub index: LayerIndex,
    pub packs: Vec<(String, Vec<u8>)>,
    pub chunks: Vec<(Digest, Vec<u8>)>,
}

/// See [`build_index`].
pub fn build_layer(entries: &[chunksnap_format::pb::Entry], content: &[u8]) -> BuiltLayer {
    let mut builder = PackBuilder::with_target_unchecked(4096);
    let mut finished = Vec::new();
    let mut chunks = Vec::new();
    let mut data = Vec::new();
    chunk_stream::<_, ChunkerError, _>(content, &SMALL, |c| {
        let stored = compress_chunk(&c, 3).expect("compress");
        let (loc, done) = builder.push(&stored.data);
        finished.extend(done);
        let digest = Digest::of(&c);
        chunks.push(Chunk {
            digest: digest.as_bytes().to_vec(),
            size: c.len() as u32,
            pack: loc.pack,
            pack_offset: loc.offset,
            stored_size: loc.stored_size,
            compression: stored.compression as i32,
            delta: None,
        });
        data.push((digest, c));
        Ok(())
    })
    .expect("chunking memory cannot fail");
    finished.extend(builder.finish());
    let packs: Vec<(String, Vec<u8>)> = finished
        .into_iter()
        .map(|p| (p.digest.to_string(), p.data))
        .collect();
    let index = LayerIndex {
        version: FORMAT_VERSION,
        source: Some(Source {
            digest: Digest::of(b"layer").to_string(),
            diff_id: Digest::of(content).to_string(),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            compressed_size: 0,
            uncompressed_size: 0,
            content_size: content.len() as u64,
        }),
        chunker: Some(SMALL.into()),
        entries: entries.to_vec(),
        chunks,
        packs: packs
            .iter()
            .map(|(d, p)| Pack {
                digest: d.clone(),
                size: p.len() as u64,
            })
            .collect(),
        delta_bases: Vec::new(),
        tar_split: None,
    };
    BuiltLayer {
        index,
        packs,
        chunks: data,
    }
}
