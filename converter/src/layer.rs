//! The per-layer conversion pipeline: a layer blob in, a layer index and new packs out.
//!
//! ```text
//! blob ─sha256─▶ decompress ─sha256─▶ tarscan ──content pipe──▶ FastCDC ─▶ batches ─▶ hash +
//!   (scanner thread: digest, diff_id, entries)   (bounded)      (caller's thread)   sketch +
//!                                                                                   compress
//!                                                                (worker threads) ─▶ packs (in order)
//! ```
//! Memory is bounded whatever the layer size: the pipe holds a few MiB, the chunker one maximum
//! chunk, a batch a few MiB, the pack builder one pack; only the index itself (entries + chunk
//! list) grows with the layer. Results are appended in stream order, so the same blob and catalog
//! always give byte-identical packs and index.

mod stream;

use std::collections::HashMap;
use std::io::{self, Read};

use chunksnap_core::tarscan::split::scan_tar_split;
use chunksnap_core::tarscan::{TarError, TarScan};
use chunksnap_format::chunker::{ChunkerError, ChunkerParams, chunk_stream};
use chunksnap_format::digest::{Digest, Sha256Reader};
use chunksnap_format::index::{self, FORMAT_VERSION, FormatError};
use chunksnap_format::pack::{self, PackBuilder, PackError, StoredChunk};
use chunksnap_format::pb::{Chunk, Compression, LayerIndex, Pack, Source, TarSplit};

use crate::sketch::{Sketch, sketch};

pub use stream::is_layer_media_type;

/// The layer to convert, as the image manifest describes it.
#[derive(Debug, Clone)]
pub struct LayerInput {
    /// Digest of the compressed blob; the bytes read must match it.
    pub digest: Digest,
    pub media_type: String,
    /// Size from the manifest descriptor, checked when given.
    pub size: Option<u64>,
}

/// Tuning of the conversion.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    pub chunker: ChunkerParams,
    /// Target pack size, 8–32 MiB.
    pub pack_size: u64,
    /// zstd level for chunks.
    pub zstd_level: i32,
    /// Compression threads (0: one per CPU).
    pub threads: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            chunker: ChunkerParams::default(),
            pack_size: pack::DEFAULT_PACK_SIZE,
            zstd_level: pack::DEFAULT_CHUNK_LEVEL,
            threads: 0,
        }
    }
}

/// A chunk that the repository already stores in some pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingChunk {
    pub pack: Digest,
    pub pack_size: u64,
    pub offset: u64,
    pub stored_size: u32,
    pub compression: Compression,
}

/// Chunks already stored in the repository (earlier layers, a base image, other tags).
pub trait ChunkCatalog: Sync {
    fn lookup(&self, digest: &Digest) -> Option<ExistingChunk>;
}

/// A catalog that knows no chunks.
pub struct EmptyCatalog;

impl ChunkCatalog for EmptyCatalog {
    fn lookup(&self, _: &Digest) -> Option<ExistingChunk> {
        None
    }
}

/// Error type a [`PackSink`] may return.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Receives each finished pack (the caller uploads it) before the index referencing it exists.
pub trait PackSink {
    fn put_pack(&mut self, digest: &Digest, data: Vec<u8>) -> Result<(), SinkError>;
}

/// What converting a layer produced.
#[derive(Debug, Clone)]
pub struct LayerOutcome {
    pub index: LayerIndex,
    pub stats: LayerStats,
    /// The sketch of every chunk of `index`, in order (for later layers' deltas).
    pub sketches: Vec<Sketch>,
}

/// Counters for progress output and `--json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub chunks: u64,
    /// Chunks stored in this layer's new packs.
    pub new_chunks: u64,
    /// Stored (compressed) bytes of the new chunks.
    pub new_chunk_bytes: u64,
    /// Compressed layer bytes read.
    pub bytes_read: u64,
    /// Uncompressed tar bytes.
    pub uncompressed_bytes: u64,
    /// New packs handed to the sink, in order, with their sizes.
    pub packs: Vec<(Digest, u64)>,
}

/// Errors converting a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("reading the layer blob: {0}")]
    Read(#[source] io::Error),
    #[error("layer blob digest is {actual}, expected {expected} (registry served the wrong bytes)")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("layer blob is {actual} bytes, the manifest says {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("chunking: {0}")]
    Chunker(#[from] ChunkerError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("storing pack {digest}: {source}")]
    Sink { digest: Digest, source: SinkError },
    #[error("the layer cannot be represented in the index: {0}")]
    Format(#[from] FormatError),
    #[error("the tar scanner thread panicked")]
    ScannerPanicked,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// What the scanner thread learns about the blob.
struct Scanned {
    scan: TarScan,
    /// `None` when the layer could not be recorded (nodes then cannot verify it).
    tar_split: Option<TarSplit>,
    digest: Digest,
    compressed: u64,
    diff_id: Digest,
    uncompressed: u64,
}

/// Converts one layer. See the module docs for the pipeline.
pub fn convert_layer(
    blob: impl Read + Send,
    input: &LayerInput,
    opts: &LayerOptions,
    catalog: &dyn ChunkCatalog,
    sink: &mut dyn PackSink,
) -> Result<LayerOutcome, LayerError> {
    if !is_layer_media_type(&input.media_type) {
        return Err(LayerError::UnsupportedMediaType(input.media_type.clone()));
    }
    opts.chunker.validate()?;
    let packer = PackBuilder::new(opts.pack_size)?;
    let (writer, reader) = stream::pipe();
    let (scanned, chunked) = std::thread::scope(|s| {
        let scanner = s.spawn(move || scan_blob(blob, writer));
        let mut chunks = Chunks::new(opts, catalog, sink, packer);
        let mut reader = reader;
        let chunked = chunk_stream(&mut reader, &opts.chunker, |data| chunks.push(data))
            .and_then(|()| chunks.flush_batch())
            .and_then(|()| chunks.finish());
        let writer_failed = reader.writer_failed();
        drop(reader); // unblocks the scanner if we stopped early
        let scanned = scanner
            .join()
            .map_err(|_| LayerError::ScannerPanicked)
            .and_then(|r| r);
        match (scanned, chunked) {
            // The scanner's error is the cause when it broke the pipe.
            (Err(e), _) if writer_failed => Err(e),
            (_, Err(e)) => Err(e),
            (scanned, Ok(c)) => Ok((scanned, c)),
        }
    })?;
    let scanned = scanned?;
    if scanned.digest != input.digest {
        return Err(LayerError::DigestMismatch {
            expected: input.digest,
            actual: scanned.digest,
        });
    }
    if let Some(expected) = input.size.filter(|s| *s != scanned.compressed) {
        return Err(LayerError::SizeMismatch {
            expected,
            actual: scanned.compressed,
        });
    }
    let (chunks, packs, mut stats, sketches) = chunked;
    stats.entries = scanned.scan.entries.len() as u64;
    stats.bytes_read = scanned.compressed;
    stats.uncompressed_bytes = scanned.uncompressed;
    let index = LayerIndex {
        version: FORMAT_VERSION,
        source: Some(Source {
            digest: scanned.digest.to_string(),
            diff_id: scanned.diff_id.to_string(),
            media_type: input.media_type.clone(),
            compressed_size: scanned.compressed,
            uncompressed_size: scanned.uncompressed,
            content_size: scanned.scan.content_size,
        }),
        chunker: Some(opts.chunker.into()),
        entries: scanned.scan.entries,
        chunks,
        packs,
        delta_bases: Vec::new(),
        tar_split: scanned.tar_split,
    };
    index::validate(&index)?;
    Ok(LayerOutcome {
        index,
        stats,
        sketches,
    })
}

/// Runs on the scanner thread: hashes and decompresses the blob, scans the tar into the pipe.
fn scan_blob(blob: impl Read, mut writer: stream::PipeWriter) -> Result<Scanned, LayerError> {
    let mut compressed = Sha256Reader::new(blob);
    let result = (|| {
        let mut tar =
            Sha256Reader::new(stream::decompress(&mut compressed).map_err(LayerError::Read)?);
        // Reads to EOF: the digests cover the whole blob, past the end-of-archive blocks.
        let (scan, split) = scan_tar_split(&mut tar, &mut writer)?;
        let (_, diff_id, uncompressed) = tar.finish();
        // Every byte is either raw or content; anything else means the split is unusable.
        let split = split.filter(|s| s.raw.len() as u64 + scan.content_size == uncompressed);
        Ok((scan, split, diff_id, uncompressed))
    })();
    let (scan, tar_split, diff_id, uncompressed) = match result {
        Ok(v) => v,
        Err(e) => {
            writer.fail();
            return Err(e);
        }
    };
    writer
        .finish()
        .map_err(|e| LayerError::Tar(TarError::Write(e)))?;
    io::copy(&mut compressed, &mut io::sink()).map_err(LayerError::Read)?;
    let (_, digest, compressed) = compressed.finish();
    Ok(Scanned {
        scan,
        tar_split,
        digest,
        compressed,
        diff_id,
        uncompressed,
    })
}

/// Chunks per compression batch, and the batch's byte budget.
const BATCH_CHUNKS: usize = 64;
const BATCH_BYTES: usize = 8 << 20;

/// A chunk after the parallel stage.
struct Prepared {
    digest: Digest,
    size: u32,
    sketch: Sketch,
    /// `None` when the catalog already has the chunk.
    stored: Option<StoredChunk>,
    existing: Option<ExistingChunk>,
}

/// Where a chunk lives, before pack numbers in the index are assigned.
#[derive(Clone)]
enum Place {
    Existing(ExistingChunk),
    New {
        pack: u32,
        offset: u64,
        stored_size: u32,
        compression: Compression,
    },
}

/// The index's chunk and pack lists, the stats, and every chunk's sketch.
type Laid = (Vec<Chunk>, Vec<Pack>, LayerStats, Vec<Sketch>);

/// The ordered stage: batches chunks, processes them in parallel, appends in stream order.
struct Chunks<'a> {
    opts: &'a LayerOptions,
    threads: usize,
    catalog: &'a dyn ChunkCatalog,
    sink: &'a mut dyn PackSink,
    packer: Option<PackBuilder>,
    batch: Vec<Vec<u8>>,
    batch_bytes: usize,
    /// Chunks stored by this layer so far (a repeat is stored once).
    seen: HashMap<Digest, Place>,
    placed: Vec<(Digest, u32, Place)>,
    sketches: Vec<Sketch>,
    new_packs: Vec<(Digest, u64)>,
    stats: LayerStats,
}

impl<'a> Chunks<'a> {
    fn new(
        opts: &'a LayerOptions,
        catalog: &'a dyn ChunkCatalog,
        sink: &'a mut dyn PackSink,
        packer: PackBuilder,
    ) -> Self {
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Self {
            opts,
            threads,
            catalog,
            sink,
            packer: Some(packer),
            batch: Vec::new(),
            batch_bytes: 0,
            seen: HashMap::new(),
            placed: Vec::new(),
            sketches: Vec::new(),
            new_packs: Vec::new(),
            stats: LayerStats::default(),
        }
    }

    fn push(&mut self, data: Vec<u8>) -> Result<(), LayerError> {
        self.batch_bytes += data.len();
        self.batch.push(data);
        if self.batch.len() >= BATCH_CHUNKS || self.batch_bytes >= BATCH_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), LayerError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        for p in prepare(&batch, self.threads, self.opts.zstd_level, self.catalog)? {
            self.place(p)?;
        }
        Ok(())
    }

    fn place(&mut self, p: Prepared) -> Result<(), LayerError> {
        self.stats.chunks += 1;
        let place = if let Some(place) = self.seen.get(&p.digest) {
            place.clone()
        } else if let Some(existing) = p.existing {
            Place::Existing(existing)
        } else {
            let stored = p
                .stored
                .ok_or(LayerError::Internal("new chunk was not compressed"))?;
            let packer = self
                .packer
                .as_mut()
                .ok_or(LayerError::Internal("pack builder already finished"))?;
            let (loc, finished) = packer.push(&stored.data);
            if let Some(f) = finished {
                self.emit(f)?;
            }
            self.stats.new_chunks += 1;
            self.stats.new_chunk_bytes += u64::from(loc.stored_size);
            Place::New {
                pack: loc.pack,
                offset: loc.offset,
                stored_size: loc.stored_size,
                compression: stored.compression,
            }
        };
        self.seen.entry(p.digest).or_insert_with(|| place.clone());
        self.placed.push((p.digest, p.size, place));
        self.sketches.push(p.sketch);
        Ok(())
    }

    fn emit(&mut self, f: pack::FinishedPack) -> Result<(), LayerError> {
        let size = f.data.len() as u64;
        self.sink
            .put_pack(&f.digest, f.data)
            .map_err(|source| LayerError::Sink {
                digest: f.digest,
                source,
            })?;
        self.new_packs.push((f.digest, size));
        Ok(())
    }

    /// Flushes the last pack and lays out the index's chunk and pack lists (packs in order of
    /// first use), with each chunk's sketch.
    fn finish(&mut self) -> Result<Laid, LayerError> {
        if let Some(last) = self.packer.take().and_then(PackBuilder::finish) {
            self.emit(last)?;
        }
        let mut packs: Vec<Pack> = Vec::new();
        let mut pack_no: HashMap<Digest, u32> = HashMap::new();
        let mut number = |digest: Digest, size: u64| {
            *pack_no.entry(digest).or_insert_with(|| {
                packs.push(Pack {
                    digest: digest.to_string(),
                    size,
                });
                (packs.len() - 1) as u32
            })
        };
        let mut chunks = Vec::with_capacity(self.placed.len());
        for (digest, size, place) in std::mem::take(&mut self.placed) {
            let (pack, pack_offset, stored_size, compression) = match place {
                Place::Existing(e) => (
                    number(e.pack, e.pack_size),
                    e.offset,
                    e.stored_size,
                    e.compression,
                ),
                Place::New {
                    pack,
                    offset,
                    stored_size,
                    compression,
                } => {
                    let (d, s) = self.new_packs[pack as usize];
                    (number(d, s), offset, stored_size, compression)
                }
            };
            chunks.push(Chunk {
                digest: digest.0.to_vec(),
                size,
                pack,
                pack_offset,
                stored_size,
                compression: compression as i32,
                delta: None,
            });
        }
        let mut stats = std::mem::take(&mut self.stats);
        stats.packs = self.new_packs.clone();
        Ok((chunks, packs, stats, std::mem::take(&mut self.sketches)))
    }
}

/// Hashes, sketches, looks up and compresses a batch on up to `threads` threads; results in
/// batch order.
fn prepare(
    batch: &[Vec<u8>],
    threads: usize,
    level: i32,
    catalog: &dyn ChunkCatalog,
) -> Result<Vec<Prepared>, LayerError> {
    let one = |data: &Vec<u8>| -> Result<Prepared, LayerError> {
        let digest = Digest::of(data);
        // Chunks are at most 16 MiB (chunker maximum), so the size fits in u32.
        let size =
            u32::try_from(data.len()).map_err(|_| LayerError::Internal("chunk above 4 GiB"))?;
        let existing = catalog.lookup(&digest);
        let stored = match existing {
            Some(_) => None,
            None => Some(pack::compress_chunk(data, level)?),
        };
        Ok(Prepared {
            digest,
            size,
            sketch: sketch(data),
            stored,
            existing,
        })
    };
    crate::parallel::map(batch, threads, &one, || {
        LayerError::Internal("a compression worker panicked")
    })
}

#[cfg(test)]
mod tests;
