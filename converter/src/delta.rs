//! Delta frames for a converted layer's new chunks, against its closest earlier layer.
//!
//! After a layer is converted, its new chunks (those the repository did not store yet) are
//! compressed once more, each against chunks of the reference layer ([`plan`]): those around
//! the same spot of the stream (the previous version's bytes there) or, for content that moved,
//! the most similar chunk and its neighbours ([`crate::sketch`]). A node that holds those base chunks fetches
//! the delta instead of the chunk; on a rollout that is usually a few percent of the bytes (a
//! `.pyc` rebuilt with a different reference count, a binary whose code moved). The full chunks
//! stay in the packs for every other node. Delta frames go into packs of their own, so a cold
//! node's coalesced reads never cross them.
//!
//! ```text
//! catalog ─▶ reference layer ─▶ plan (anchors,  ─▶ read new + base chunks ─▶ compress against
//!   (most shared chunks)         sketches; pure)   (Range reads, verified)    bases (parallel)
//!                                                                ─▶ delta packs ─▶ index
//! ```
//! Deterministic: the same layer, catalog and options give the same frames and packs.

pub mod files;
pub mod hints;
mod plan;
mod resemble;

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use chunksnap_core::assemble::ChunkReader;
use chunksnap_core::fetch::{FetchOptions, Inflight, fetch_needed};
use chunksnap_core::registry::{Reference as RegRef, RegistryClient, RepoRangeSource};
use chunksnap_core::store::{ChunkStore, StoreError};
use chunksnap_format::delta::{compress_delta, compress_index_delta};
use chunksnap_format::digest::Digest;
use chunksnap_format::pack::{PackBuilder, PackError};
use chunksnap_format::pb::{BaseChunk, Delta, LayerIndex, Pack};
use serde::Serialize;

pub use plan::{PlanOptions, Try, plan};
pub use resemble::Sketches;

use crate::catalog::{Catalog, CatalogError, load_index_raw};
use crate::sketch;

/// Tuning of the delta pass.
#[derive(Debug, Clone)]
pub struct DeltaOptions {
    /// Compute deltas at all (`chunkconv convert --no-deltas` turns them off).
    pub enabled: bool,
    pub plan: PlanOptions,
    /// zstd level at which each delta's bases are compared.
    pub level: i32,
    /// zstd level the chosen delta is compressed again at, when higher than `level` (0: not
    /// again). Bases of a rebuilt file hold most of its bytes far apart; low levels search
    /// too little of them.
    pub final_level: i32,
    /// Target size of delta packs.
    pub pack_size: u64,
    /// Threads computing deltas (0: one per CPU).
    pub threads: usize,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            plan: PlanOptions::default(),
            level: chunksnap_format::pack::DEFAULT_CHUNK_LEVEL,
            final_level: FINAL_LEVEL,
            pack_size: chunksnap_format::pack::DEFAULT_PACK_SIZE,
            threads: 0,
        }
    }
}

/// What the delta pass did for one layer (part of `--json`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DeltaReport {
    /// The layer the deltas are against.
    pub reference: Option<String>,
    /// Bytes of the layer index blob.
    pub index_bytes: u64,
    /// Bytes of the index as a delta against the reference's index (0: none, it did not pay).
    pub index_delta_bytes: u64,
    /// Deltas tried (new chunks an anchor mapped into the reference).
    pub tried: u64,
    /// Deltas kept (smaller than 3/4 of their chunk's stored size).
    pub deltas: u64,
    /// Their stored bytes.
    pub delta_bytes: u64,
    /// Stored bytes of the chunks they stand for.
    pub chunk_bytes: u64,
    /// Bytes uploaded for deltas: delta packs, the index delta, the layer's sketch blob.
    pub bytes_pushed: u64,
    /// Small files new to the reference whose content digest was left out ([`hints`]).
    pub digests_dropped: u64,
}

/// Errors of the delta pass.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("scratch store: {0}")]
    Scratch(#[source] std::io::Error),
    #[error("reading chunks from the registry: {0}")]
    Fetch(#[from] chunksnap_core::fetch::FetchError),
    #[error("reading a chunk: {0}")]
    Read(#[from] StoreError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("chunk {0}: bad digest")]
    BadDigest(usize),
    #[error("a delta worker panicked")]
    WorkerPanicked,
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Registry(#[from] chunksnap_core::registry::RegistryError),
    #[error(transparent)]
    Digest(#[from] chunksnap_format::digest::DigestError),
    #[error("layer index: {0}")]
    Format(#[from] chunksnap_format::FormatError),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A delta is kept when it is under this fraction (num/den) of the chunk's stored size: a
/// node then reads a few base chunks from its store to save at least a quarter of the bytes.
const KEEP: (usize, usize) = (3, 4);
/// Deltas computed per batch; after each batch, [`give_up`] may stop the pass.
const BATCH: usize = 64;

/// Stop trying when, after a few batches, under a tenth of the tries paid: the layer is not
/// a version of its reference (a new layer that happens to share a file name), and compressing
/// every chunk twice would only cost time.
fn give_up(tried: usize, kept: usize) -> bool {
    tried >= 4 * BATCH && kept * 10 < tried
}

/// The new chunks of `index` (stored in `new_packs`, first occurrence of each digest).
fn new_chunks(index: &LayerIndex, new_packs: &[(Digest, u64)]) -> Vec<bool> {
    let new_pack: Vec<bool> = index
        .packs
        .iter()
        .map(|p| new_packs.iter().any(|(d, _)| d.to_string() == p.digest))
        .collect();
    let mut seen = std::collections::HashSet::new();
    index
        .chunks
        .iter()
        .map(|c| new_pack.get(c.pack as usize).copied().unwrap_or(false) && seen.insert(&c.digest))
        .collect()
}

/// The reference layer of a converted layer: its digest and raw index (an index delta's base).
pub struct Reference {
    pub layer: Digest,
    pub raw_index: Vec<u8>,
}

/// A delta chosen for a chunk: the base run it was computed against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub chunk: usize,
    pub base: Range<usize>,
}

/// Adds delta frames for the new chunks of `index` (whose new packs, already pushed to `image`,
/// are `new_packs`, and whose chunks' sketches are `sketches`): picks the reference from
/// `catalog`, reads the chunks involved, pushes the delta packs to `image` and records the
/// deltas in `index`. Returns the reference (also when no chunk delta paid, for the index
/// delta).
pub async fn add_deltas(
    client: &RegistryClient,
    image: &RegRef,
    catalog: &Catalog,
    index: &mut LayerIndex,
    new_packs: &[(Digest, u64)],
    sketches: &[sketch::Sketch],
    opts: &DeltaOptions,
) -> Result<(DeltaReport, Option<Reference>), DeltaError> {
    let mut report = DeltaReport::default();
    if !opts.enabled {
        return Ok((report, None));
    }
    let Some((ref_digest, known)) = catalog.reference_for(index) else {
        return Ok((report, None));
    };
    report.reference = Some(ref_digest.to_string());
    let home = known.home.clone();
    let (raw_index, reference) = load_index_raw(client, &home, &known.index).await?;
    let base = Reference {
        layer: ref_digest,
        raw_index,
    };
    report.digests_dropped = hints::drop_new_small_file_digests(index, &reference);
    let reference = Arc::new(reference);
    let ref_sketches = match &known.sketch {
        Some(desc) => {
            let blob = client.read_blob(&home, &desc.sha256()?, desc.size).await?;
            let parsed = sketch::decode(&blob, reference.chunks.len());
            if parsed.is_none() {
                tracing::warn!(layer = %ref_digest, "ignoring a sketch blob that does not fit its index");
            }
            parsed
        }
        None => None,
    };
    let candidates = new_chunks(index, new_packs);
    let similar = ref_sketches.as_deref().map(|reference| Sketches {
        new: sketches,
        reference,
    });
    let tries = plan(index, &candidates, &reference, &opts.plan, similar);
    report.tried = tries.len() as u64;
    if tries.is_empty() {
        return Ok((report, Some(base)));
    }

    // Read the chunks involved into a scratch store (verified on the way in and out).
    let scratch = tempfile::tempdir().map_err(DeltaError::Scratch)?;
    let store = Arc::new(ChunkStore::open(scratch.path(), None).map_err(DeltaError::Read)?);
    let mut want_new = vec![false; index.chunks.len()];
    let mut want_base = vec![false; reference.chunks.len()];
    for t in &tries {
        want_new[t.chunk] = true;
        for b in &t.bases {
            want_base[b.clone()].iter_mut().for_each(|w| *w = true);
        }
    }
    let (fetch, inflight) = (FetchOptions::default(), Inflight::default());
    let here = RepoRangeSource {
        client: client.clone(),
        repo: image.clone(),
    };
    let there = RepoRangeSource {
        client: client.clone(),
        repo: home,
    };
    let stripped = without_deltas(&reference);
    fetch_needed(index, Some(&want_new), &store, &here, &fetch, &inflight)
        .await
        .map_err(DeltaError::Fetch)?;
    fetch_needed(
        &stripped,
        Some(&want_base),
        &store,
        &there,
        &fetch,
        &inflight,
    )
    .await
    .map_err(DeltaError::Fetch)?;

    let (ix, rf, o) = (Arc::new(index.clone()), reference.clone(), opts.clone());
    let frames =
        tokio::task::spawn_blocking(move || encode(&ix, &tries, &rf, &*store, &o)).await??;
    drop(scratch);

    report.deltas = frames.len() as u64;
    for (p, f) in &frames {
        report.delta_bytes += f.len() as u64;
        report.chunk_bytes += u64::from(index.chunks[p.chunk].stored_size);
    }
    let packs = attach(index, &reference, frames, opts.pack_size)?;
    for (digest, data) in packs {
        let n = data.len() as u64;
        if client.push_blob(image, &digest, Bytes::from(data)).await? {
            report.bytes_pushed += n;
        }
    }
    Ok((report, Some(base)))
}

/// The index delta of raw index `raw` (blob `blob_len` bytes) against `base`, if it pays
/// (under [`KEEP`] of the blob). Blocking.
pub fn index_delta(
    base: &Reference,
    raw: &[u8],
    blob_len: usize,
) -> Result<Option<Vec<u8>>, DeltaError> {
    let Some(frame) = compress_index_delta(&base.raw_index, raw) else {
        return Ok(None);
    };
    let frame = frame?;
    Ok((frame.len() * KEEP.1 < blob_len * KEEP.0).then_some(frame))
}

/// The packs `index`'s delta frames are in, in pack order: named on its index delta, so that
/// a node that rebuilds the index can read them while the index delta is on the wire.
pub fn delta_packs(index: &LayerIndex) -> Result<Vec<Digest>, DeltaError> {
    let used: BTreeSet<u32> = index
        .chunks
        .iter()
        .filter_map(|c| c.delta.as_ref().map(|d| d.pack))
        .collect();
    used.into_iter()
        .filter_map(|p| index.packs.get(p as usize))
        .map(|pack| Ok(Digest::parse(&pack.digest)?))
        .collect()
}

/// The reference as a plain chunk list: its own deltas are irrelevant to reading its chunks.
fn without_deltas(reference: &LayerIndex) -> LayerIndex {
    let mut plain = reference.clone();
    plain.delta_bases.clear();
    for c in &mut plain.chunks {
        c.delta = None;
    }
    plain
}

/// Default [`DeltaOptions::final_level`] (see docs/benchmarks.md, "File-aware deltas").
pub const FINAL_LEVEL: i32 = 19;

/// A delta this small (against its chunk's stored size) is not worth trying to beat.
const GOOD_ENOUGH: usize = 16;

/// Computes the delta of each try from `chunks` (which must hold every chunk involved), in
/// parallel batches: against each base in turn, stopping early at a delta under 1/16 of the
/// chunk; compresses the smallest again at [`DeltaOptions::final_level`] and keeps it if it
/// pays ([`KEEP`]), in `tries` order. Blocking.
pub fn encode(
    index: &LayerIndex,
    tries: &[Try],
    reference: &LayerIndex,
    chunks: &dyn ChunkReader,
    opts: &DeltaOptions,
) -> Result<Vec<(Picked, Vec<u8>)>, DeltaError> {
    let chunk = |i: usize, c: &chunksnap_format::pb::Chunk| -> Result<Vec<u8>, DeltaError> {
        let d = Digest::from_slice(&c.digest).map_err(|_| DeltaError::BadDigest(i))?;
        Ok(chunks.read_chunk(&d, c.size)?)
    };
    let one = |t: &Try| -> Result<Option<(Picked, Vec<u8>)>, DeltaError> {
        let c = &index.chunks[t.chunk];
        let stored = c.stored_size as usize;
        let data = chunk(t.chunk, c)?;
        let mut best: Option<(Picked, Vec<u8>, Vec<u8>)> = None;
        for range in &t.bases {
            let mut base = Vec::new();
            for k in range.clone() {
                base.extend_from_slice(&chunk(k, &reference.chunks[k])?);
            }
            let frame = compress_delta(&base, &data, opts.level)?;
            if best.as_ref().is_none_or(|(_, f, _)| frame.len() < f.len()) {
                let picked = Picked {
                    chunk: t.chunk,
                    base: range.clone(),
                };
                best = Some((picked, frame, base));
            }
            if best
                .as_ref()
                .is_some_and(|(_, f, _)| f.len() * GOOD_ENOUGH < stored)
            {
                break;
            }
        }
        let Some((picked, mut frame, base)) = best else {
            return Ok(None);
        };
        if opts.final_level > opts.level && frame.len() * KEEP.1 < stored * KEEP.0 {
            let again = compress_delta(&base, &data, opts.final_level)?;
            if again.len() < frame.len() {
                frame = again;
            }
        }
        Ok((frame.len() * KEEP.1 < stored * KEEP.0).then_some((picked, frame)))
    };
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut kept = Vec::new();
    for (n, batch) in tries.chunks(BATCH).enumerate() {
        if give_up(n * BATCH, kept.len()) {
            break;
        }
        kept.extend(
            crate::parallel::map(batch, threads, &one, || DeltaError::WorkerPanicked)?
                .into_iter()
                .flatten(),
        );
    }
    Ok(kept)
}

/// Packs `frames` (in order) and records them in `index`: the base table (every reference
/// chunk a kept delta uses, in reference order, so each delta's bases are one contiguous run),
/// the delta packs, and `Chunk.delta` on every occurrence of each chunk. Returns the packs to
/// push (digest, bytes).
pub fn attach(
    index: &mut LayerIndex,
    reference: &LayerIndex,
    frames: Vec<(Picked, Vec<u8>)>,
    pack_size: u64,
) -> Result<Vec<(Digest, Vec<u8>)>, DeltaError> {
    if frames.is_empty() {
        return Ok(Vec::new());
    }
    let used: BTreeSet<usize> = frames.iter().flat_map(|(p, _)| p.base.clone()).collect();
    let table: Vec<usize> = used.into_iter().collect();
    let first_pack = index.packs.len() as u32;
    let mut builder = PackBuilder::new(pack_size).map_err(DeltaError::Pack)?;
    let mut packs = Vec::new();
    let mut deltas = std::collections::HashMap::new();
    for (t, frame) in frames {
        let (loc, finished) = builder.push(&frame);
        packs.extend(finished);
        let base_first = table.partition_point(|&k| k < t.base.start) as u32;
        let digest = index.chunks[t.chunk].digest.clone();
        deltas.insert(
            digest,
            Delta {
                pack: first_pack + loc.pack,
                pack_offset: loc.offset,
                stored_size: loc.stored_size,
                base_first,
                base_count: t.base.len() as u32,
            },
        );
    }
    packs.extend(builder.finish());
    for c in &mut index.chunks {
        if let Some(d) = deltas.get(&c.digest) {
            c.delta = Some(*d);
        }
    }
    index.delta_bases = table
        .iter()
        .map(|&k| BaseChunk {
            digest: reference.chunks[k].digest.clone(),
            size: reference.chunks[k].size,
        })
        .collect();
    let mut out = Vec::with_capacity(packs.len());
    for p in packs {
        index.packs.push(Pack {
            digest: p.digest.to_string(),
            size: p.data.len() as u64,
        });
        out.push((p.digest, p.data));
    }
    chunksnap_format::index::validate(index)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
