//! What a layer may cost the node's disk before any of it is fetched: its content (what the
//! assembly writes) and its distinct chunks (what the prepare pins in the store). An index is
//! small; what it describes need not be, and pins beat the store budget, so a layer that does
//! not fit is refused with [`FetchError::TooLarge`] and falls back to containerd.

use std::collections::HashSet;

use chunksnap_format::pb::LayerIndex;

use super::FetchError;
use chunksnap_format::digest::Digest;

/// Largest layer content assembled from chunks by default: 64 GiB.
pub const MAX_LAYER_CONTENT: u64 = 64 << 30;

/// What a layer costs: content bytes (every listing of every chunk) and distinct chunk bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerCost {
    /// Bytes of the content stream, written into the snapshot (less its holes).
    pub content: u64,
    /// Bytes of the distinct chunks, pinned in the store until the layer is assembled.
    pub pinned: u64,
}

/// Refuses a layer whose content exceeds `max_content` or whose distinct chunks exceed the
/// store's `budget` (when it has one).
pub fn check_layer(
    index: &LayerIndex,
    budget: Option<u64>,
    max_content: u64,
) -> Result<LayerCost, FetchError> {
    let mut seen = HashSet::with_capacity(index.chunks.len());
    let mut cost = LayerCost {
        content: 0,
        pinned: 0,
    };
    for c in &index.chunks {
        let size = u64::from(c.size);
        cost.content = cost.content.saturating_add(size);
        if let Ok(d) = Digest::from_slice(&c.digest)
            && seen.insert(d)
        {
            cost.pinned = cost.pinned.saturating_add(size);
        }
    }
    if cost.content > max_content {
        return Err(FetchError::TooLarge {
            what: "layer content",
            bytes: cost.content,
            limit: max_content,
        });
    }
    if let Some(budget) = budget
        && cost.pinned > budget
    {
        return Err(FetchError::TooLarge {
            what: "distinct chunks (pinned in the store)",
            bytes: cost.pinned,
            limit: budget,
        });
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use chunksnap_format::pb::Chunk;

    use super::*;

    fn index(sizes: &[(u8, u32)]) -> LayerIndex {
        LayerIndex {
            chunks: sizes
                .iter()
                .map(|&(d, size)| Chunk {
                    digest: vec![d; 32],
                    size,
                    ..Chunk::default()
                })
                .collect(),
            ..LayerIndex::default()
        }
    }

    #[test]
    fn content_and_pins_are_bounded() {
        // One 1 MiB chunk listed 4096 times: 4 GiB of content, 1 MiB pinned.
        let repeated = index(&vec![(1, 1 << 20); 4096]);
        let cost = check_layer(&repeated, Some(2 << 20), 8 << 30).unwrap();
        assert_eq!(
            cost,
            LayerCost {
                content: 4 << 30,
                pinned: 1 << 20
            }
        );
        assert!(matches!(
            check_layer(&repeated, None, 1 << 30),
            Err(FetchError::TooLarge { what: "layer content", bytes, limit })
                if bytes == 4 << 30 && limit == 1 << 30
        ));
        // Distinct chunks beyond the budget.
        let wide = index(&[(1, 1 << 20), (2, 1 << 20), (3, 1 << 20)]);
        assert!(check_layer(&wide, Some(3 << 20), MAX_LAYER_CONTENT).is_ok());
        assert!(matches!(
            check_layer(&wide, Some((3 << 20) - 1), MAX_LAYER_CONTENT),
            Err(FetchError::TooLarge { bytes, .. }) if bytes == 3 << 20
        ));
        assert!(check_layer(&wide, None, MAX_LAYER_CONTENT).is_ok());
    }
}
