//! Which file of the reference layer a changed file of the new layer is a version of.
//!
//! A rebuilt shared object or a regenerated bundle shifts bytes throughout the file: content-
//! defined chunk boundaries move and the old chunk nearest in the stream is a weak base. The old
//! version of the *same file* is the strong one (what `zstd --patch-from` uses), so the plan
//! ([`super::plan`]) offers, for a new chunk inside a changed file, the matching part of its base
//! file. A base file is, in this order:
//! - the reference file with the same path;
//! - the one whose path is the same once version-like tokens are masked
//!   (`numpy-1.26.3.dist-info/RECORD` ↔ `numpy-1.26.4.dist-info/RECORD`,
//!   `.pnpm/x@1.2.3/node_modules/x/index.js`, `libfoo-0cf96a72.so.1.2`); several such files:
//!   the one closest in size;
//! - with sketches, the reference file holding the most chunks that resemble the file's own.
//!
//! Pure: the same indexes and sketches always give the same matches.

use std::collections::HashMap;
use std::ops::Range;

use chunksnap_format::pb::{EntryType, LayerIndex};

use super::resemble::{Sketches, feature_map, most_similar};

/// How a base file was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    SamePath,
    Renamed,
    Similar,
}

/// A regular file's content: its range of the content stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub entry: usize,
    pub range: Range<u64>,
}

/// A changed file of the new layer and its base file in the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMatch {
    pub new: File,
    pub base: File,
    pub found: Found,
}

/// The regular files with content, in stream order (the order of their entries).
pub fn files(index: &LayerIndex) -> Vec<File> {
    let mut out: Vec<File> = index
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.r#type == EntryType::File as i32 && e.size > 0)
        .map(|(i, e)| File {
            entry: i,
            range: e.offset..e.offset.saturating_add(e.size),
        })
        .collect();
    out.sort_by_key(|f| f.range.start);
    out
}

/// `path` with every token holding a digit masked, tokens being split at `-_.@+~/`: two
/// versions of a package's files compare equal.
pub fn version_masked(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for token in path.split_inclusive(|b| b"-_.@+~/".contains(b)) {
        let (word, sep) = match token.last() {
            Some(b) if b"-_.@+~/".contains(b) => (&token[..token.len() - 1], Some(*b)),
            _ => (token, None),
        };
        if word.iter().any(u8::is_ascii_digit) {
            out.push(b'#');
        } else {
            out.extend_from_slice(word);
        }
        out.extend(sep);
    }
    out
}

/// Base files for the changed files of `new` (regular files of at least `min_size` bytes whose
/// content is not the same-path file's). Sorted by the new file's stream offset.
pub fn match_files(
    new: &LayerIndex,
    reference: &LayerIndex,
    min_size: u64,
    sketches: Option<Sketches<'_>>,
) -> Vec<FileMatch> {
    let ref_files = files(reference);
    let by_path: HashMap<&[u8], usize> = ref_files
        .iter()
        .enumerate()
        .map(|(k, f)| (reference.entries[f.entry].path.as_slice(), k))
        .collect();
    let mut by_masked: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    for (k, f) in ref_files.iter().enumerate() {
        by_masked
            .entry(version_masked(&reference.entries[f.entry].path))
            .or_default()
            .push(k);
    }
    let similar = sketches
        .filter(|s| s.new.len() == new.chunks.len() && s.reference.len() == reference.chunks.len())
        .map(|s| (s.new, feature_map(s.reference)));
    let new_starts = starts(new);
    let ref_starts = starts(reference);
    let mut out = Vec::new();
    for f in files(new) {
        let e = &new.entries[f.entry];
        if e.size < min_size {
            continue;
        }
        let size_of = |k: &usize| ref_files[*k].range.end - ref_files[*k].range.start;
        let pick = if let Some(&k) = by_path.get(e.path.as_slice()) {
            let same = &reference.entries[ref_files[k].entry];
            if !e.content_digest.is_empty() && same.content_digest == e.content_digest {
                continue;
            }
            Some((k, Found::SamePath))
        } else if let Some(ks) = by_masked.get(&version_masked(&e.path)) {
            ks.iter()
                .min_by_key(|k| (size_of(k).abs_diff(e.size), **k))
                .map(|&k| (k, Found::Renamed))
        } else if let Some((new_sketches, features)) = &similar {
            let chunks = chunk_range(&new_starts, &f.range);
            let mut votes: HashMap<usize, usize> = HashMap::new();
            for i in chunks {
                let Some(c) = most_similar(&new_sketches[i], features) else {
                    continue;
                };
                let at = ref_starts[c];
                let k = ref_files.partition_point(|r| r.range.start <= at);
                if let Some(k) = k.checked_sub(1).filter(|&k| ref_files[k].range.end > at) {
                    *votes.entry(k).or_default() += 1;
                }
            }
            votes
                .into_iter()
                .max_by_key(|&(k, n)| (n, std::cmp::Reverse(k)))
                .map(|(k, _)| (k, Found::Similar))
        } else {
            None
        };
        if let Some((k, found)) = pick {
            out.push(FileMatch {
                new: f,
                base: ref_files[k].clone(),
                found,
            });
        }
    }
    out
}

/// Start offset of every chunk in its stream.
pub fn starts(index: &LayerIndex) -> Vec<u64> {
    let mut out = Vec::with_capacity(index.chunks.len());
    let mut off = 0u64;
    for c in &index.chunks {
        out.push(off);
        off += u64::from(c.size);
    }
    out
}

/// The chunks (by start offsets `starts`) overlapping `range` of the stream.
pub fn chunk_range(starts: &[u64], range: &Range<u64>) -> Range<usize> {
    let first = starts
        .partition_point(|&s| s <= range.start)
        .saturating_sub(1);
    let end = starts.partition_point(|&s| s < range.end);
    first..end.max(first)
}

/// For a chunk at `chunk` (stream range) inside changed file `m.new`: the reference chunks
/// covering the part of `m.base` at the same relative position, `window` bytes around it
/// (clamped to the base file), as one run of reference chunks.
pub fn file_window(
    m: &FileMatch,
    chunk: &Range<u64>,
    ref_starts: &[u64],
    window: u64,
) -> Option<Range<usize>> {
    let (new_len, base_len) = (
        m.new.range.end - m.new.range.start,
        m.base.range.end - m.base.range.start,
    );
    if new_len == 0 || base_len == 0 || ref_starts.is_empty() {
        return None;
    }
    let mid = (chunk.start + chunk.end) / 2;
    let rel = mid.clamp(m.new.range.start, m.new.range.end - 1) - m.new.range.start;
    // Proportional position: a rebuilt file grows or shrinks throughout, not at one end.
    let mapped =
        m.base.range.start + (u128::from(rel) * u128::from(base_len) / u128::from(new_len)) as u64;
    let half = window / 2;
    let mut lo = mapped.saturating_sub(half).max(m.base.range.start);
    let hi = (lo + window).min(m.base.range.end);
    lo = hi.saturating_sub(window).max(m.base.range.start);
    let run = chunk_range(ref_starts, &(lo..hi));
    (!run.is_empty()).then_some(run)
}

#[cfg(test)]
mod tests {
    use chunksnap_format::pb::{Chunk, Entry};

    use super::*;

    fn layer(files: &[(&str, u64, u8)]) -> LayerIndex {
        let mut off = 0;
        let mut entries = Vec::new();
        let mut chunks = Vec::new();
        for &(p, size, content) in files {
            entries.push(Entry {
                path: p.as_bytes().to_vec(),
                r#type: EntryType::File as i32,
                offset: off,
                size,
                content_digest: vec![content; 32],
                ..Entry::default()
            });
            chunks.push(Chunk {
                digest: vec![content; 32],
                size: size as u32,
                ..Chunk::default()
            });
            off += size;
        }
        LayerIndex {
            entries,
            chunks,
            ..LayerIndex::default()
        }
    }

    #[test]
    fn versions_are_masked_token_by_token() {
        assert_eq!(
            version_masked(b"site/numpy-1.26.3.dist-info/RECORD"),
            b"site/numpy-#.#.#.dist-info/RECORD"
        );
        assert_eq!(
            version_masked(b"site/numpy-1.26.4.dist-info/RECORD"),
            version_masked(b"site/numpy-1.26.3.dist-info/RECORD")
        );
        assert_eq!(
            version_masked(b"n/.pnpm/x@1.2.3/node_modules/x/a.js"),
            b"n/.pnpm/x@#.#.#/node_modules/x/a.js"
        );
        assert_ne!(version_masked(b"a/core.so"), version_masked(b"a/multi.so"));
    }

    #[test]
    fn same_path_then_renamed_version_then_nothing() {
        let v1 = layer(&[
            ("app/a.so", 100, 1),
            ("app/pkg-1.0.dist-info/RECORD", 50, 2),
            ("app/keep.py", 10, 3),
            ("app/libz-ab12.so.1", 70, 4),
            ("app/libz-cd34.so.1", 300, 5),
        ]);
        let v2 = layer(&[
            ("app/a.so", 110, 11),
            ("app/pkg-1.1.dist-info/RECORD", 52, 12),
            ("app/keep.py", 10, 3),
            ("app/libz-ef56.so.1", 280, 14),
            ("app/new.txt", 40, 15),
        ]);
        let m = match_files(&v2, &v1, 1, None);
        let pairs: Vec<(usize, usize, Found)> = m
            .iter()
            .map(|m| (m.new.entry, m.base.entry, m.found))
            .collect();
        // keep.py is unchanged (same content): no match; libz picks the closer size; new.txt has
        // no counterpart.
        assert_eq!(
            pairs,
            vec![
                (0, 0, Found::SamePath),
                (1, 1, Found::Renamed),
                (3, 4, Found::Renamed)
            ]
        );
        assert_eq!(m[0].base.range, 0..100);
        // Small files are left to chunk deltas.
        assert_eq!(match_files(&v2, &v1, 100, None).len(), 2);
    }

    #[test]
    fn similar_files_are_found_by_sketch_votes() {
        let v1 = layer(&[("x/one", 100, 1), ("x/two", 100, 2)]);
        let v2 = layer(&[("y/renamed", 100, 9)]);
        let none = [u32::MAX; 4];
        let s = Sketches {
            new: &[[5, 6, 7, 8]],
            reference: &[none, [5, 6, 70, 80]],
        };
        let m = match_files(&v2, &v1, 1, Some(s));
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].base.entry, m[0].found), (1, Found::Similar));
    }

    #[test]
    fn the_window_sits_at_the_same_relative_place_and_inside_the_base() {
        // Base file: 10 chunks of 100 bytes at 1000..2000 of the reference stream.
        let ref_starts: Vec<u64> = (0..30).map(|k| k * 100).collect();
        let m = FileMatch {
            new: File {
                entry: 0,
                range: 0..2000,
            },
            base: File {
                entry: 0,
                range: 1000..2000,
            },
            found: Found::SamePath,
        };
        // A chunk at 1000..1100 of the new file (half way) maps to 1500 of the base file.
        assert_eq!(
            file_window(&m, &(1000..1100), &ref_starts, 200),
            Some(14..17)
        );
        // Near the end the window is shifted back inside the file.
        assert_eq!(
            file_window(&m, &(1950..2000), &ref_starts, 300),
            Some(17..20)
        );
        // A window larger than the file: the whole file.
        assert_eq!(
            file_window(&m, &(0..10), &ref_starts, 1 << 20),
            Some(10..20)
        );
    }
}
