//! Chunk sketches: finding the chunk of an earlier layer most like a new chunk, wherever it is.
//!
//! Position (anchors, see `delta::plan`) finds the old bytes of content that stayed in place.
//! Content that moved, such as a file rewritten to new blocks inside a filesystem image or a
//! directory renamed by a version bump, is found by resemblance instead: a chunk's sketch is the
//! [`K`] smallest hashes of its content-defined ~64-byte windows (a bottom-k sample), so two
//! chunks that share most of their bytes share most of their sketch. [`crate::layer`] computes
//! every chunk's sketch; they are stored per layer in a sketch blob of the artifact, read only by
//! converters ([`crate::delta`]), never by nodes.
//!
//! Blob format (`application/vnd.chunksnap.layer.sketch.v1`): the magic `CSK1`, then for each
//! chunk of the layer index, in order, [`K`] little-endian `u32` (`u32::MAX`: no feature).

/// Features per chunk.
pub const K: usize = 4;
/// A chunk's sketch.
pub type Sketch = [u32; K];

const MAGIC: &[u8; 4] = b"CSK1";
/// A feature is taken where the window hash has these low bits clear: one window in 64.
const WINDOW_MASK: u64 = 0x3f;

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < 256 {
        // splitmix64: a fixed table, so sketches never change between builds.
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

static GEAR: [u64; 256] = gear_table();

/// The sketch of `data`.
pub fn sketch(data: &[u8]) -> Sketch {
    let mut best = [u32::MAX; K];
    // A gear hash depends on the last 64 bytes only (older bits shift out).
    let mut h: u64 = 0;
    for &b in data {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if h & WINDOW_MASK == 0 {
            let v = ((h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 32) as u32;
            if v < best[K - 1] && !best.contains(&v) {
                best[K - 1] = v;
                best.sort_unstable();
            }
        }
    }
    best
}

/// The sketch blob of a layer's chunks, in order.
pub fn encode(sketches: &[Sketch]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + sketches.len() * K * 4);
    out.extend_from_slice(MAGIC);
    for s in sketches {
        for f in s {
            out.extend_from_slice(&f.to_le_bytes());
        }
    }
    out
}

/// Parses a sketch blob that must describe `chunks` chunks; `None` if it does not.
pub fn decode(blob: &[u8], chunks: usize) -> Option<Vec<Sketch>> {
    let body = blob.strip_prefix(MAGIC)?;
    if body.len() != chunks.checked_mul(K * 4)? {
        return None;
    }
    Some(
        body.chunks_exact(K * 4)
            .map(|c| {
                let mut s = [0u32; K];
                for (f, b) in s.iter_mut().zip(c.chunks_exact(4)) {
                    *f = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                s
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunksnap_testkit::noise;

    fn shared(a: &Sketch, b: &Sketch) -> usize {
        a.iter()
            .filter(|f| **f != u32::MAX && b.contains(f))
            .count()
    }

    #[test]
    fn similar_chunks_share_their_sketch_and_others_do_not() {
        let a = noise(1, 32 << 10);
        let mut b = a.clone();
        b[1000] ^= 1;
        b[20_000] ^= 1;
        b.splice(9000..9000, *b"a few inserted bytes");
        let (sa, sb, sc) = (sketch(&a), sketch(&b), sketch(&noise(2, 32 << 10)));
        assert!(shared(&sa, &sb) >= 3, "{sa:?} {sb:?}");
        assert_eq!(shared(&sa, &sc), 0);
        assert_eq!(sketch(&[]), [u32::MAX; K]);
    }

    #[test]
    fn blobs_round_trip_and_must_match_the_chunk_count() {
        let s = vec![sketch(&noise(3, 5000)), [u32::MAX; K]];
        let blob = encode(&s);
        assert_eq!(decode(&blob, 2), Some(s));
        assert_eq!(decode(&blob, 3), None);
        assert_eq!(decode(&blob[1..], 2), None);
    }
}
