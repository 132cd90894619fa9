//! Planning a fetch: which chunk frames to read ([`Want`]: the full frame or a delta against
//! bases already stored), and how they group into coalesced Range [`Request`]s per pack.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chunksnap_format::digest::Digest;
use chunksnap_format::pb::{Compression, LayerIndex};

use super::{FetchError, FetchOptions};
use crate::store::ChunkStore;

/// A chunk to fetch: where it is and what it must decode to.
#[derive(Debug, Clone)]
pub(super) struct Want {
    pub(super) digest: Digest,
    pub(super) size: u32,
    pub(super) pack: u32,
    pub(super) offset: u64,
    pub(super) stored: u32,
    pub(super) how: How,
    /// The chunk's own frame, kept while `how` is a delta: where to go if the delta fails.
    pub(super) full: Option<FullFrame>,
}

/// What the bytes at a [`Want`]'s range are.
#[derive(Debug, Clone)]
pub(super) enum How {
    /// The chunk's frame, as the index's `compression` says.
    Full(Compression),
    /// A delta frame against these base chunks (digest, size), in order.
    Delta(Arc<[(Digest, u32)]>),
}

/// Where a chunk's own frame is.
#[derive(Debug, Clone, Copy)]
pub(super) struct FullFrame {
    pub(super) pack: u32,
    pub(super) offset: u64,
    pub(super) stored: u32,
    pub(super) compression: Compression,
}

impl Want {
    pub(super) fn full(digest: Digest, size: u32, f: FullFrame) -> Self {
        Self {
            digest,
            size,
            pack: f.pack,
            offset: f.offset,
            stored: f.stored,
            how: How::Full(f.compression),
            full: None,
        }
    }

    /// The same chunk as its own frame (after a delta could not be used).
    pub(super) fn into_full(self) -> Self {
        match self.full {
            Some(f) => Self::full(self.digest, self.size, f),
            None => self,
        }
    }
}

/// One Range request and the chunks inside it.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) pack: String,
    pub(super) start: u64,
    pub(super) len: u64,
    pub(super) chunks: Vec<Want>,
}

/// What fetching the chunks of `index` for which `wanted` holds (each distinct digest once)
/// would cost with `opts`: (requests, bytes read including coalescing gaps). For tuning.
pub fn estimate(
    index: &LayerIndex,
    mut wanted: impl FnMut(&Digest) -> bool,
    opts: &FetchOptions,
) -> (u64, u64) {
    let mut seen = HashSet::new();
    let wants: Vec<Want> = index
        .chunks
        .iter()
        .filter_map(|c| {
            let digest = Digest::from_slice(&c.digest).ok()?;
            let frame = FullFrame {
                pack: c.pack,
                offset: c.pack_offset,
                stored: c.stored_size,
                compression: Compression::try_from(c.compression).ok()?,
            };
            (seen.insert(digest) && wanted(&digest) && (c.pack as usize) < index.packs.len())
                .then(|| Want::full(digest, c.size, frame))
        })
        .collect();
    let requests = plan(&wants, index, opts);
    let bytes = requests.iter().map(|r| r.len).sum();
    (requests.len() as u64, bytes)
}

/// Groups chunks per pack, by offset, into coalesced requests.
pub(super) fn plan(wants: &[Want], index: &LayerIndex, opts: &FetchOptions) -> Vec<Request> {
    let mut per_pack: BTreeMap<u32, Vec<Want>> = BTreeMap::new();
    for w in wants {
        per_pack.entry(w.pack).or_default().push(w.clone());
    }
    let mut out = Vec::new();
    for (pack, mut chunks) in per_pack {
        chunks.sort_by_key(|w| w.offset);
        let pack = index.packs[pack as usize].digest.clone();
        let mut cur: Option<Request> = None;
        for w in chunks {
            let end = w.offset + u64::from(w.stored);
            if let Some(r) = cur.as_mut() {
                let r_end = r.start + r.len;
                let gap = w.offset.saturating_sub(r_end);
                if gap <= opts.max_gap && end - r.start <= opts.max_request && w.offset >= r.start {
                    r.len = r.len.max(end - r.start);
                    r.chunks.push(w);
                    continue;
                }
            }
            if let Some(r) = cur.take() {
                out.push(r);
            }
            cur = Some(Request {
                pack: pack.clone(),
                start: w.offset,
                len: u64::from(w.stored),
                chunks: vec![w],
            });
        }
        out.extend(cur);
    }
    out
}

/// Index sanity for a frame's pack range: `plan` adds offsets and sizes, so an unvalidated
/// index must not make that overflow or point past the pack list.
pub(super) fn check_range(
    index: &LayerIndex,
    chunk: usize,
    pack: u32,
    offset: u64,
    stored: u32,
) -> Result<(), FetchError> {
    if pack as usize >= index.packs.len() {
        return Err(FetchError::BadIndex(format!(
            "chunk {chunk}: pack {pack} out of range"
        )));
    }
    if offset.checked_add(u64::from(stored)).is_none() {
        return Err(FetchError::BadIndex(format!(
            "chunk {chunk}: pack range {offset}+{stored} overflows"
        )));
    }
    Ok(())
}

/// Switches every want whose chunk has a delta with all bases in the store to that delta, and
/// pins those bases (the returned guard) so that eviction cannot take them mid-fetch.
pub(super) fn use_deltas(
    index: &LayerIndex,
    delta_of: &HashMap<Digest, usize>,
    wants: &mut [Want],
    store: &ChunkStore,
) -> Result<Option<crate::store::PinGuard>, FetchError> {
    if delta_of.is_empty() {
        return Ok(None);
    }
    let mut pinned = Vec::new();
    for w in wants.iter_mut() {
        let Some(&i) = delta_of.get(&w.digest) else {
            continue;
        };
        let Some(d) = index.chunks.get(i).and_then(|c| c.delta.as_ref()) else {
            continue;
        };
        let first = d.base_first as usize;
        let Some(bases) = index
            .delta_bases
            .get(first..first.saturating_add(d.base_count as usize))
        else {
            return Err(FetchError::BadIndex(format!(
                "chunk {i}: delta bases out of range"
            )));
        };
        let bases = bases
            .iter()
            .map(|b| Ok((Digest::from_slice(&b.digest)?, b.size)))
            .collect::<Result<Vec<_>, chunksnap_format::digest::DigestError>>()
            .map_err(|e| FetchError::BadIndex(format!("chunk {i}: delta base: {e}")))?;
        if bases.is_empty() || !bases.iter().all(|(b, _)| store.contains(b)) {
            continue;
        }
        check_range(index, i, d.pack, d.pack_offset, d.stored_size)?;
        pinned.extend(bases.iter().map(|(b, _)| *b));
        let How::Full(compression) = w.how else {
            continue;
        };
        w.full = Some(FullFrame {
            pack: w.pack,
            offset: w.offset,
            stored: w.stored,
            compression,
        });
        w.pack = d.pack;
        w.offset = d.pack_offset;
        w.stored = d.stored_size;
        w.how = How::Delta(bases.into());
    }
    Ok((!pinned.is_empty()).then(|| store.pin(pinned)))
}
