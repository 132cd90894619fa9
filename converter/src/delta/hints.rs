//! Seeding hints an update's nodes cannot use, left out of its index.
//!
//! A regular file's `content_digest` lets a node link an identical file it already holds
//! instead of writing it from chunks (seeding). Against a reference layer, a file whose content
//! the reference does not hold is new to every node that holds the reference: its digest is 32
//! bytes of an update's index delta that do not compress, and on a dependency bump with many
//! small changed files those were half of the delta (docs/decisions.md, "Small files new to
//! the reference carry no content digest"). Such a file that is also small is written from chunks the node fetches anyway, so
//! its digest is left out; large new files keep theirs (a node may hold them from another
//! image). A node never trusts the digest either way: the layer's diffID covers every byte.

use std::collections::HashSet;

use chunksnap_format::pb::{EntryType, LayerIndex};

/// Files under this size whose content the reference lacks get no content digest.
pub const SMALL_FILE: u64 = 64 << 10;

/// Clears the content digest of every regular file of `index` under [`SMALL_FILE`] bytes whose
/// content no file of `reference` has; returns how many were cleared.
pub fn drop_new_small_file_digests(index: &mut LayerIndex, reference: &LayerIndex) -> u64 {
    let held: HashSet<&[u8]> = reference
        .entries
        .iter()
        .filter(|e| !e.content_digest.is_empty())
        .map(|e| e.content_digest.as_slice())
        .collect();
    let mut cleared = 0;
    for e in &mut index.entries {
        if e.r#type == EntryType::File as i32
            && e.size < SMALL_FILE
            && !e.content_digest.is_empty()
            && !held.contains(e.content_digest.as_slice())
        {
            e.content_digest.clear();
            cleared += 1;
        }
    }
    cleared
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunksnap_format::pb::Entry;

    fn file(path: &str, size: u64, digest: u8) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            r#type: EntryType::File as i32,
            size,
            content_digest: vec![digest; 32],
            ..Default::default()
        }
    }

    #[test]
    fn only_small_files_new_to_the_reference_lose_their_digest() {
        let reference = LayerIndex {
            entries: vec![file("a", 10, 1), file("moved-from", 10, 2)],
            ..Default::default()
        };
        let mut index = LayerIndex {
            entries: vec![
                file("a", 10, 1),                      // unchanged: seeded from the reference
                file("moved-to", 10, 2),               // same content elsewhere: seeded too
                file("changed", 10, 3),                // new and small: cleared
                file("big", SMALL_FILE, 4),            // new but large: kept
                file("just-under", SMALL_FILE - 1, 5), // cleared
            ],
            ..Default::default()
        };
        assert_eq!(drop_new_small_file_digests(&mut index, &reference), 2);
        let kept: Vec<bool> = index
            .entries
            .iter()
            .map(|e| e.content_digest.len() == 32)
            .collect();
        assert_eq!(kept, [true, true, false, true, false]);
    }
}
