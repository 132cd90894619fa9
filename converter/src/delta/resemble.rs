//! Resemblance between chunks by their sketches: which reference chunk shares the most
//! features with a new one. Used to find a chunk's delta base ([`super::plan`]) and a changed
//! file's base file ([`super::files`]).

use std::collections::HashMap;

use crate::sketch::{K, Sketch};

/// The sketches of both layers' chunks, in index order.
#[derive(Debug, Clone, Copy)]
pub struct Sketches<'a> {
    pub new: &'a [Sketch],
    pub reference: &'a [Sketch],
}

/// Reference chunk by sketch feature (its first chunk with the feature).
pub(super) fn feature_map(reference: &[Sketch]) -> HashMap<u32, usize> {
    let mut map = HashMap::new();
    for (k, s) in reference.iter().enumerate() {
        for &f in s.iter().filter(|&&f| f != u32::MAX) {
            map.entry(f).or_insert(k);
        }
    }
    map
}

/// The reference chunk sharing the most features with `sketch` (ties: the first).
pub(super) fn most_similar(sketch: &Sketch, features: &HashMap<u32, usize>) -> Option<usize> {
    let mut votes: Vec<(usize, u32)> = Vec::with_capacity(K);
    for f in sketch.iter().filter(|&&f| f != u32::MAX) {
        if let Some(&k) = features.get(f) {
            match votes.iter_mut().find(|(c, _)| *c == k) {
                Some((_, n)) => *n += 1,
                None => votes.push((k, 1)),
            }
        }
    }
    votes
        .into_iter()
        .max_by_key(|&(k, n)| (n, std::cmp::Reverse(k)))
        .map(|(k, _)| k)
}
