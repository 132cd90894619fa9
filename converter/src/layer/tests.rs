//! Tests for the layer pipeline, on tars built in memory.

use super::*;
use std::io::Write;
use std::sync::Mutex;

use chunksnap_format::index::{decode, encode};
use chunksnap_format::pb::EntryType;
use chunksnap_testkit::noise;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn small_chunks() -> LayerOptions {
    LayerOptions {
        chunker: ChunkerParams {
            min: 1024,
            avg: 4096,
            max: 16384,
            normalization: 1,
        },
        threads: 3,
        ..LayerOptions::default()
    }
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "usr/", &[][..]).unwrap();
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "usr/link", "bin/a").unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn input(blob: &[u8], media_type: &str) -> LayerInput {
    LayerInput {
        digest: Digest::of(blob),
        media_type: media_type.into(),
        size: Some(blob.len() as u64),
    }
}

/// Collects packs in memory.
#[derive(Default)]
struct MemSink(Vec<(Digest, Vec<u8>)>);

impl PackSink for MemSink {
    fn put_pack(&mut self, digest: &Digest, data: Vec<u8>) -> Result<(), SinkError> {
        assert_eq!(Digest::of(&data), *digest);
        self.0.push((*digest, data));
        Ok(())
    }
}

/// A catalog over earlier conversions' indexes.
#[derive(Default)]
struct MapCatalog(HashMap<Digest, ExistingChunk>, Mutex<u64>);

impl MapCatalog {
    fn learn(&mut self, index: &LayerIndex) {
        for c in &index.chunks {
            let p = &index.packs[c.pack as usize];
            self.0
                .entry(Digest::from_slice(&c.digest).unwrap())
                .or_insert(ExistingChunk {
                    pack: Digest::parse(&p.digest).unwrap(),
                    pack_size: p.size,
                    offset: c.pack_offset,
                    stored_size: c.stored_size,
                    compression: Compression::try_from(c.compression).unwrap(),
                });
        }
    }
}

impl ChunkCatalog for MapCatalog {
    fn lookup(&self, digest: &Digest) -> Option<ExistingChunk> {
        *self.1.lock().unwrap() += 1;
        self.0.get(digest).cloned()
    }
}

/// Rebuilds the content stream from the index and pack blobs.
pub(super) fn reassemble(index: &LayerIndex, packs: &HashMap<Digest, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for c in &index.chunks {
        let pack = &packs[&Digest::parse(&index.packs[c.pack as usize].digest).unwrap()];
        let start = c.pack_offset as usize;
        let stored = &pack[start..start + c.stored_size as usize];
        let compression = Compression::try_from(c.compression).unwrap();
        let digest = Digest::from_slice(&c.digest).unwrap();
        out.extend(
            pack::decompress_chunk(stored, compression, u64::from(c.size), &digest).unwrap(),
        );
    }
    out
}

fn convert(
    blob: &[u8],
    media_type: &str,
    opts: &LayerOptions,
    catalog: &dyn ChunkCatalog,
) -> (LayerOutcome, MemSink) {
    let mut sink = MemSink::default();
    let out = convert_layer(blob, &input(blob, media_type), opts, catalog, &mut sink).unwrap();
    assert_tar_rebuilds(&out.index, &sink);
    (out, sink)
}

/// Every layer these tests convert (whose packs are all in `sink`) rebuilds bit for bit from
/// its index and chunks: the rebuilt tar's sha256 is the diffID.
fn assert_tar_rebuilds(index: &LayerIndex, sink: &MemSink) {
    use chunksnap_format::tarsplit::{Sequential, TarStream};
    use std::io::Read;
    let packs: HashMap<Digest, Vec<u8>> = sink.0.iter().cloned().collect();
    if !index
        .packs
        .iter()
        .all(|p| packs.contains_key(&Digest::parse(&p.digest).unwrap()))
    {
        return;
    }
    let content = reassemble(index, &packs);
    let split = index.tar_split.as_ref().expect("tar-split recorded");
    let mut tar = Vec::new();
    TarStream::new(split, Sequential(content.as_slice()))
        .read_to_end(&mut tar)
        .unwrap();
    let source = index.source.as_ref().unwrap();
    assert_eq!(Digest::of(&tar).to_string(), source.diff_id);
    assert_eq!(tar.len() as u64, source.uncompressed_size);
}

#[test]
fn converts_gzip_layer_and_content_round_trips() {
    let a = noise(1, 100_000);
    let text = b"hello world\n".repeat(5000);
    let tar = tar_of(&[
        ("usr/bin/a", &a),
        ("usr/share/doc", &text),
        ("usr/bin/copy", &a),
        ("empty", b""),
    ]);
    let blob = gzip(&tar);
    let (out, sink) = convert(&blob, GZIP, &small_chunks(), &EmptyCatalog);
    let idx = &out.index;

    let src = idx.source.as_ref().unwrap();
    assert_eq!(src.digest, Digest::of(&blob).to_string());
    assert_eq!(src.diff_id, Digest::of(&tar).to_string());
    assert_eq!(
        (src.compressed_size, src.uncompressed_size),
        (blob.len() as u64, tar.len() as u64)
    );
    let stream = [&a[..], &text[..], &a[..]].concat();
    assert_eq!(src.content_size, stream.len() as u64);
    let names: Vec<&[u8]> = idx.entries.iter().map(|e| e.path.as_slice()).collect();
    assert_eq!(
        names,
        [
            &b"usr"[..],
            b"usr/bin/a",
            b"usr/share/doc",
            b"usr/bin/copy",
            b"empty",
            b"usr/link"
        ]
    );
    assert_eq!(idx.entries[5].r#type, EntryType::Symlink as i32);

    let packs: HashMap<_, _> = sink.0.iter().cloned().collect();
    assert_eq!(reassemble(idx, &packs), stream);
    // The second copy of `a` re-synchronises: its chunks are stored once.
    let s = &out.stats;
    assert!(s.new_chunks < s.chunks, "{s:?}");
    assert_eq!(s.chunks, idx.chunks.len() as u64);
    assert_eq!(
        (s.entries, s.bytes_read, s.uncompressed_bytes),
        (6, blob.len() as u64, tar.len() as u64)
    );
    assert_eq!(s.packs.len(), 1);
    assert_eq!(s.new_chunk_bytes, sink.0[0].1.len() as u64);
    // The text compresses: some chunks are zstd frames.
    assert!(
        idx.chunks
            .iter()
            .any(|c| c.compression == Compression::Zstd as i32)
    );
    assert_eq!(&decode(&encode(idx)).unwrap(), idx);
}

#[test]
fn deterministic_across_runs_and_thread_counts() {
    let tar = tar_of(&[("a", &noise(9, 300_000)), ("b", &b"abc".repeat(40_000))]);
    let blob = gzip(&tar);
    let (one, sink_one) = convert(
        &blob,
        GZIP,
        &LayerOptions {
            threads: 1,
            ..small_chunks()
        },
        &EmptyCatalog,
    );
    let (many, sink_many) = convert(
        &blob,
        GZIP,
        &LayerOptions {
            threads: 4,
            ..small_chunks()
        },
        &EmptyCatalog,
    );
    assert_eq!(encode(&one.index), encode(&many.index));
    assert_eq!(sink_one.0, sink_many.0);
}

#[test]
fn catalog_chunks_are_not_stored_again() {
    let base = noise(5, 400_000);
    let v1 = gzip(&tar_of(&[("lib", &base)]));
    let (first, first_sink) = convert(&v1, GZIP, &small_chunks(), &EmptyCatalog);
    let mut catalog = MapCatalog::default();
    catalog.learn(&first.index);

    // v2: same library with a small insertion in the middle, plus a new file.
    let mut changed = base.clone();
    changed.splice(200_000..200_000, b"PATCHED".iter().copied());
    let extra = noise(77, 50_000);
    let v2_tar = tar_of(&[("lib", &changed), ("extra", &extra)]);
    let v2 = gzip(&v2_tar);
    let (second, second_sink) = convert(&v2, GZIP, &small_chunks(), &catalog);
    let s = &second.stats;
    assert!(s.new_chunks * 4 < s.chunks, "{s:?}");
    assert!(*catalog.1.lock().unwrap() > 0);
    // Both packs are referenced; the old one by digest only.
    assert_eq!(second.index.packs.len(), 2);
    let mut packs: HashMap<_, _> = first_sink.0.into_iter().collect();
    packs.extend(second_sink.0);
    assert_eq!(
        reassemble(&second.index, &packs),
        [&changed[..], &extra[..]].concat()
    );
}

#[test]
fn other_compressions_and_mislabels() {
    let tar = tar_of(&[("f", b"data")]);
    let zst = zstd::bulk::compress(&tar, 3).unwrap();
    for (blob, mt) in [
        (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
        (zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
        (
            gzip(&tar),
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
        (tar.clone(), GZIP), // mislabelled: bytes decide, like containerd
    ] {
        let (out, _) = convert(&blob, mt, &small_chunks(), &EmptyCatalog);
        assert_eq!(
            out.index.source.unwrap().diff_id,
            Digest::of(&tar).to_string()
        );
    }
}

#[test]
fn rejects_wrong_digest_size_and_media_type() {
    let blob = gzip(&tar_of(&[("f", b"data")]));
    let opts = small_chunks();
    let mut sink = MemSink::default();
    let mut bad = input(&blob, GZIP);
    bad.digest = Digest::of(b"something else");
    let r = convert_layer(&blob[..], &bad, &opts, &EmptyCatalog, &mut sink);
    assert!(matches!(r, Err(LayerError::DigestMismatch { .. })), "{r:?}");
    let mut bad = input(&blob, GZIP);
    bad.size = Some(1);
    let r = convert_layer(&blob[..], &bad, &opts, &EmptyCatalog, &mut sink);
    assert!(
        matches!(r, Err(LayerError::SizeMismatch { expected: 1, .. })),
        "{r:?}"
    );
    let bad = input(&blob, "application/vnd.oci.image.config.v1+json");
    let r = convert_layer(&blob[..], &bad, &opts, &EmptyCatalog, &mut sink);
    assert!(
        matches!(r, Err(LayerError::UnsupportedMediaType(_))),
        "{r:?}"
    );
}

#[test]
fn broken_tar_reports_the_tar_error() {
    let tar = tar_of(&[("f", &noise(3, 3_000_000))]);
    let cut = gzip(&tar[..2_000_000]);
    let mut sink = MemSink::default();
    let r = convert_layer(
        &cut[..],
        &input(&cut, GZIP),
        &small_chunks(),
        &EmptyCatalog,
        &mut sink,
    );
    assert!(matches!(r, Err(LayerError::Tar(_))), "{r:?}");
}

#[test]
fn sink_failure_stops_the_conversion() {
    struct Failing;
    impl PackSink for Failing {
        fn put_pack(&mut self, _: &Digest, _: Vec<u8>) -> Result<(), SinkError> {
            Err("registry said no".into())
        }
    }
    // > 8 MiB of incompressible data: the first pack fills up while the tar is still streaming.
    let tar = tar_of(&[("big", &noise(4, 12 << 20))]);
    let r = convert_layer(
        &tar[..],
        &input(&tar, "application/vnd.oci.image.layer.v1.tar"),
        &small_chunks(),
        &EmptyCatalog,
        &mut Failing,
    );
    match r {
        Err(LayerError::Sink { source, .. }) => assert_eq!(source.to_string(), "registry said no"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rolls_over_into_several_packs() {
    let data = noise(8, 20 << 20);
    let tar = tar_of(&[("big", &data)]);
    let (out, sink) = convert(
        &tar,
        "application/vnd.oci.image.layer.v1.tar",
        &LayerOptions {
            pack_size: pack::MIN_PACK_SIZE,
            ..LayerOptions::default()
        },
        &EmptyCatalog,
    );
    assert_eq!(sink.0.len(), 3);
    assert_eq!(out.index.packs.len(), 3);
    assert!(
        sink.0
            .iter()
            .all(|(_, p)| p.len() as u64 <= pack::MIN_PACK_SIZE)
    );
    let packs: HashMap<_, _> = sink.0.into_iter().collect();
    assert_eq!(reassemble(&out.index, &packs), data);
}
