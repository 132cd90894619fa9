//! Which new chunks of a layer get a delta, and against which chunks of the reference layer.
//!
//! Two ways to find a new chunk's old counterpart, tried in this order:
//! - *Position.* v2's content stream and v1's line up almost everywhere: files come in tar
//!   order, and most chunks are shared. Anchors are points known to correspond in both streams:
//!   the start of a file with the same path in both, and every chunk the two layers share. From
//!   the last anchor at or before a new chunk, the chunk maps to the same distance past the
//!   anchor's counterpart; the reference chunks around that spot (within
//!   [`PlanOptions::slack`] on each side, at most [`PlanOptions::max_base`] bytes) are a base.
//! - *Resemblance* (when both layers have sketches, see [`crate::sketch`]): the reference chunk
//!   sharing the most sketch features, with its neighbours, wherever it is. This finds content
//!   that moved: a file rewritten to new blocks inside a disk image, a renamed directory.
//! - *Base file* (for a chunk inside a changed file of at least [`FILE_MIN`] bytes, see
//!   [`super::files`]): the part of the file's old version at the same relative position,
//!   [`PlanOptions::file_window`] bytes. A rebuilt shared object or bundle drifts further from
//!   its old layout than the slack reaches, and a renamed version directory has no anchor.
//!
//! Pure: no I/O, so the same indexes and sketches always give the same plan.

use std::collections::HashMap;
use std::ops::Range;

use chunksnap_format::delta::MAX_DELTA_BASE;
use chunksnap_format::pb::{EntryType, LayerIndex};

use super::files::{FileMatch, file_window, match_files};
use super::resemble::{Sketches, feature_map, most_similar};

/// Tuning of the plan (see `converter/examples/{delta_sweep,file_delta_probe}.rs` and
/// docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Bytes of the reference taken on each side of a chunk's mapped position, so that an edit
    /// which shifted the content a little still finds its old bytes.
    pub slack: u64,
    /// Largest total size of one delta's base chunks.
    pub max_base: u64,
    /// Bytes of a changed file's base file offered as a base (0: none). At most
    /// `chunksnap_format::delta::MAX_DELTA_BASE`, what readers of the format accept.
    pub file_window: u64,
}

/// Files smaller than this are left to the position and resemblance bases: they sit within
/// the slack of a file-start anchor, or inside a chunk with their neighbours.
pub const FILE_MIN: u64 = 64 << 10;

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            slack: 64 << 10,
            max_base: 256 << 10,
            file_window: MAX_DELTA_BASE,
        }
    }
}

/// One delta to try: chunk `chunk` of the new layer against each of `bases` (runs of reference
/// chunks, in order of preference); the encoder keeps the smallest delta that pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Try {
    pub chunk: usize,
    pub bases: Vec<Range<usize>>,
}

/// Start offset of every chunk in its stream, and the stream's length.
fn starts(index: &LayerIndex) -> (Vec<u64>, u64) {
    let mut out = Vec::with_capacity(index.chunks.len());
    let mut off = 0u64;
    for c in &index.chunks {
        out.push(off);
        off += u64::from(c.size);
    }
    (out, off)
}

/// (new offset, reference offset) pairs known to correspond, sorted by new offset.
fn anchors(
    new: &LayerIndex,
    new_starts: &[u64],
    reference: &LayerIndex,
    ref_starts: &[u64],
) -> Vec<(u64, u64)> {
    let is_file =
        |e: &&chunksnap_format::pb::Entry| e.r#type == EntryType::File as i32 && e.size > 0;
    let ref_files: HashMap<&[u8], u64> = reference
        .entries
        .iter()
        .filter(is_file)
        .map(|e| (e.path.as_slice(), e.offset))
        .collect();
    let mut out: Vec<(u64, u64)> = new
        .entries
        .iter()
        .filter(is_file)
        .filter_map(|e| Some((e.offset, *ref_files.get(e.path.as_slice())?)))
        .collect();
    let mut ref_chunks: HashMap<&[u8], Vec<u64>> = HashMap::new();
    for (c, s) in reference.chunks.iter().zip(ref_starts) {
        ref_chunks.entry(c.digest.as_slice()).or_default().push(*s);
    }
    // A chunk may occur more than once in the reference: take the occurrence nearest to where
    // the previous shared chunk predicts it.
    let mut last: Option<(u64, u64)> = None;
    for (c, &o) in new.chunks.iter().zip(new_starts) {
        let Some(at) = ref_chunks.get(c.digest.as_slice()) else {
            continue;
        };
        let predicted = last.map_or(o, |(a2, a1)| a1.saturating_add(o - a2));
        let i = at.partition_point(|&s| s < predicted);
        let pick = [i.checked_sub(1), (i < at.len()).then_some(i)]
            .into_iter()
            .flatten()
            .min_by_key(|&k| at[k].abs_diff(predicted))
            .map_or(at[0], |k| at[k]);
        out.push((o, pick));
        last = Some((o, pick));
    }
    out.sort_by_key(|a| a.0);
    out
}

/// The reference chunks around mapped position `m` for a chunk of `len` bytes: those within
/// `slack` on each side, trimmed to `max_base` bytes around the middle of the chunk.
fn base_around(
    m: u64,
    len: u64,
    ref_starts: &[u64],
    ref_len: u64,
    reference: &LayerIndex,
    opts: &PlanOptions,
) -> Option<Range<usize>> {
    if m >= ref_len {
        return None;
    }
    let lo = m.saturating_sub(opts.slack);
    let hi = m
        .saturating_add(len)
        .saturating_add(opts.slack)
        .min(ref_len);
    let first = ref_starts.partition_point(|&s| s <= lo).saturating_sub(1);
    let end = ref_starts.partition_point(|&s| s < hi);
    let mid = m.saturating_add(len / 2).min(ref_len - 1);
    let centre = ref_starts
        .partition_point(|&s| s <= mid)
        .saturating_sub(1)
        .clamp(first, end - 1);
    grow(centre, first..end, reference, opts.max_base)
}

/// The run around reference chunk `centre` within `within`, at most `max_base` bytes: grown to
/// the right first (what follows matters most), then left.
fn grow(
    centre: usize,
    within: Range<usize>,
    reference: &LayerIndex,
    max_base: u64,
) -> Option<Range<usize>> {
    let size = |k: usize| u64::from(reference.chunks[k].size);
    let (mut a, mut b) = (centre, centre + 1);
    let mut total = size(centre);
    if total > max_base {
        return None;
    }
    loop {
        let grew_right = b < within.end && total + size(b) <= max_base;
        if grew_right {
            total += size(b);
            b += 1;
        }
        let grew_left = a > within.start && total + size(a - 1) <= max_base;
        if grew_left {
            a -= 1;
            total += size(a);
        }
        if !grew_right && !grew_left {
            break;
        }
    }
    Some(a..b)
}

/// The changed file holding the middle of `chunk` (`matches` sorted by stream offset).
fn file_of<'m>(matches: &'m [FileMatch], chunk: &Range<u64>) -> Option<&'m FileMatch> {
    let mid = (chunk.start + chunk.end) / 2;
    let k = matches.partition_point(|m| m.new.range.start <= mid);
    let m = &matches[k.checked_sub(1)?];
    (m.new.range.end > mid).then_some(m)
}

/// `run` shortened at its ends (a window's first and last chunks may reach past it) until its
/// chunks total at most `cap` bytes.
fn trim(run: Range<usize>, reference: &LayerIndex, cap: u64) -> Option<Range<usize>> {
    let size = |k: usize| u64::from(reference.chunks[k].size);
    let (mut a, mut b) = (run.start, run.end);
    let mut total: u64 = (a..b).map(size).sum();
    while total > cap && b > a {
        // Drop the larger end first: it is the one reaching furthest past the window.
        if size(a) >= size(b - 1) {
            total -= size(a);
            a += 1;
        } else {
            b -= 1;
            total -= size(b);
        }
    }
    (b > a).then_some(a..b)
}

/// The deltas worth trying: for each chunk with `candidate[i]` (a new chunk, first occurrence),
/// its position base (if an anchor maps it inside the reference's stream) and, with
/// `sketches`, its resemblance base (if a reference chunk shares a feature with it).
pub fn plan(
    new: &LayerIndex,
    candidate: &[bool],
    reference: &LayerIndex,
    opts: &PlanOptions,
    sketches: Option<Sketches<'_>>,
) -> Vec<Try> {
    let (new_starts, _) = starts(new);
    let (ref_starts, ref_len) = starts(reference);
    if ref_starts.is_empty() {
        return Vec::new();
    }
    let anchors = anchors(new, &new_starts, reference, &ref_starts);
    let similar = sketches
        .filter(|s| s.new.len() == new.chunks.len() && s.reference.len() == reference.chunks.len())
        .map(|s| (s.new, feature_map(s.reference)));
    let window = opts.file_window.min(MAX_DELTA_BASE);
    let matches = if window > 0 {
        match_files(new, reference, FILE_MIN, sketches)
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    for (i, c) in new.chunks.iter().enumerate() {
        if !candidate.get(i).copied().unwrap_or(false) {
            continue;
        }
        let mut bases = Vec::with_capacity(2);
        let o = new_starts[i];
        let k = anchors.partition_point(|a| a.0 <= o);
        if let Some(&(a2, a1)) = k.checked_sub(1).and_then(|k| anchors.get(k)) {
            let m = a1.saturating_add(o - a2);
            bases.extend(base_around(
                m,
                u64::from(c.size),
                &ref_starts,
                ref_len,
                reference,
                opts,
            ));
        }
        if let Some((new_sketches, features)) = &similar
            && let Some(k) = most_similar(&new_sketches[i], features)
        {
            let within = k.saturating_sub(1)..(k + 2).min(reference.chunks.len());
            if let Some(run) = grow(k, within, reference, opts.max_base)
                && !bases.contains(&run)
            {
                bases.push(run);
            }
        }
        let chunk = o..o + u64::from(c.size);
        if let Some(m) = file_of(&matches, &chunk)
            && let Some(run) = file_window(m, &chunk, &ref_starts, window)
            && let Some(run) = trim(run, reference, window)
            && !bases.contains(&run)
        {
            bases.push(run);
        }
        if !bases.is_empty() {
            out.push(Try { chunk: i, bases });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chunksnap_format::pb::{Chunk, Entry};

    use super::*;
    use crate::sketch::K;

    fn index(chunks: &[(u8, u32)], files: &[(&str, u64, u64)]) -> LayerIndex {
        LayerIndex {
            chunks: chunks
                .iter()
                .map(|&(d, size)| Chunk {
                    digest: vec![d; 32],
                    size,
                    ..Chunk::default()
                })
                .collect(),
            entries: files
                .iter()
                .map(|&(p, offset, size)| Entry {
                    path: p.as_bytes().to_vec(),
                    offset,
                    size,
                    ..Entry::default()
                })
                .collect(),
            ..LayerIndex::default()
        }
    }

    const OPTS: PlanOptions = PlanOptions {
        slack: 100,
        max_base: 1000,
        file_window: 0,
    };

    fn opts(slack: u64, max_base: u64) -> PlanOptions {
        PlanOptions {
            slack,
            max_base,
            file_window: 0,
        }
    }

    fn one(chunk: usize, base: Range<usize>) -> Try {
        Try {
            chunk,
            bases: vec![base],
        }
    }

    #[test]
    fn a_changed_chunk_maps_past_the_shared_chunk_before_it() {
        // v1: A B C D, v2: A X C D (B changed into X): X's base is around B.
        let v1 = index(&[(1, 100), (2, 100), (3, 100), (4, 100)], &[]);
        let v2 = index(&[(1, 100), (9, 100), (3, 100), (4, 100)], &[]);
        let tries = plan(&v2, &[false, true, false, false], &v1, &OPTS, None);
        assert_eq!(tries, vec![one(1, 0..3)]);
    }

    #[test]
    fn file_starts_anchor_when_no_chunk_is_shared() {
        // Nothing shared; the file "b" starts at 300 in v1 and at 200 in v2.
        let v1 = index(&[(1, 300), (2, 300)], &[("a", 0, 300), ("b", 300, 300)]);
        let v2 = index(&[(7, 200), (8, 300)], &[("a", 0, 200), ("b", 200, 300)]);
        let tries = plan(&v2, &[true, true], &v1, &opts(0, 1000), None);
        assert_eq!(tries, vec![one(0, 0..1), one(1, 1..2)]);
    }

    #[test]
    fn bases_are_capped_and_nothing_maps_past_the_end() {
        let v1 = index(&[(1, 400), (2, 400), (3, 400), (4, 400)], &[("f", 0, 1600)]);
        let v2 = index(&[(1, 400), (9, 400), (8, 2000)], &[("f", 0, 2800)]);
        let tries = plan(&v2, &[false, true, true], &v1, &opts(1000, 900), None);
        // Chunk 1 maps to 400: its centre chunk plus the one after fit in 900 bytes. Chunk 2
        // maps to 800..2800: its middle lies past v1's end, so it centres on v1's last chunk.
        assert_eq!(tries, vec![one(1, 1..3), one(2, 2..4)]);
        // A chunk mapped past the reference's end gets no delta.
        let v3 = index(
            &[(1, 400), (2, 400), (3, 400), (4, 400), (5, 400), (6, 100)],
            &[],
        );
        let cand = [false, false, false, false, false, true];
        assert!(plan(&v3, &cand, &v1, &OPTS, None).is_empty());
    }

    #[test]
    fn a_repeated_chunk_anchors_at_the_predicted_occurrence() {
        // Z occurs twice in v1; in v2 the second occurrence is followed by a changed chunk.
        let v1 = index(&[(5, 100), (1, 100), (5, 100), (2, 100)], &[]);
        let v2 = index(&[(5, 100), (1, 100), (5, 100), (9, 100)], &[]);
        let tries = plan(&v2, &[false, false, false, true], &v1, &opts(0, 100), None);
        assert_eq!(tries, vec![one(3, 3..4)]);
    }

    #[test]
    fn resemblance_finds_content_that_moved() {
        // X in v2 sits where v1 had A, but resembles v1's D (sketches share features): both
        // bases are offered, position first. Y has no position base but resembles B.
        let v1 = index(&[(1, 100), (2, 100), (3, 100), (4, 100)], &[]);
        let v2 = index(&[(9, 100), (8, 100)], &[]);
        let none = [u32::MAX; K];
        let reference = [[1, 2, 3, 4], none, none, [10, 11, 12, 13]];
        let new = [[10, 11, 12, 99], [30, 31, 32, 33]];
        let (new_b, ref_b) = (&new[..], &reference[..]);
        let s = Sketches {
            new: new_b,
            reference: ref_b,
        };
        // Chunk 0 has no anchor before it: only the resemblance base (D and its neighbour).
        let tries = plan(&v2, &[true, true], &v1, &opts(0, 200), Some(s));
        assert_eq!(tries, vec![one(0, 2..4)]);
        // With an anchor (a shared file start), position first, then resemblance.
        let v1f = index(&[(1, 100), (2, 100), (3, 100), (4, 100)], &[("f", 0, 400)]);
        let v2f = index(&[(9, 100), (8, 100)], &[("f", 0, 200)]);
        let tries = plan(&v2f, &[true, false], &v1f, &opts(0, 100), Some(s));
        assert_eq!(
            tries,
            vec![Try {
                chunk: 0,
                bases: vec![0..1, 3..4]
            }]
        );
        // Sketches that do not match the indexes are ignored.
        let short = Sketches {
            new: &new[..1],
            reference: ref_b,
        };
        assert!(plan(&v2, &[true, true], &v1, &opts(0, 200), Some(short)).is_empty());
    }

    #[test]
    fn a_chunk_of_a_changed_file_gets_the_same_part_of_its_base_file() {
        // v1: a file, then lib-1.0.so at 100_000..300_000 (chunks of 30_000). v2: lib-1.1.so
        // alone (chunks of 50_000): no chunk shared, no path in common, so no anchor; the
        // renamed version is its base file.
        let v1 = index(
            &(1..=10u8).map(|d| (d, 30_000)).collect::<Vec<_>>(),
            &[("x", 0, 100_000), ("lib-1.0.so", 100_000, 200_000)],
        );
        let v2 = index(
            &[(21, 50_000), (22, 50_000), (23, 50_000), (24, 50_000)],
            &[("lib-1.1.so", 0, 200_000)],
        );
        let cand = [false, false, true, false];
        let with = |file_window| PlanOptions {
            slack: 0,
            max_base: 100_000,
            file_window,
        };
        // Chunk 2 (100_000..150_000, mid 125_000) maps to 225_000: a 90_000 window is
        // 180_000..270_000, reference chunks 6..9.
        assert_eq!(
            plan(&v2, &cand, &v1, &with(90_000), None),
            vec![one(2, 6..9)]
        );
        // Edge chunks reaching past a smaller window are trimmed to fit it.
        assert_eq!(
            plan(&v2, &cand, &v1, &with(80_000), None),
            vec![one(2, 7..9)]
        );
        assert!(plan(&v2, &cand, &v1, &with(0), None).is_empty());
    }
}
