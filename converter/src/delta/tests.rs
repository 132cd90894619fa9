//! The encoder: deltas decode to their chunk, and the final level only ever shrinks them.

use std::collections::HashMap;

use chunksnap_core::assemble::ChunkReader;
use chunksnap_core::store::StoreError;
use chunksnap_format::delta::decompress_delta;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::{Chunk, LayerIndex};

use super::*;

struct Mem(HashMap<Digest, Vec<u8>>);

impl ChunkReader for Mem {
    fn read_chunk(&self, digest: &Digest, _: u32) -> Result<Vec<u8>, StoreError> {
        self.0
            .get(digest)
            .cloned()
            .ok_or(StoreError::Missing(*digest))
    }
}

fn index_of(chunks: &[&[u8]], mem: &mut HashMap<Digest, Vec<u8>>) -> LayerIndex {
    LayerIndex {
        chunks: chunks
            .iter()
            .map(|c| {
                let d = Digest::of(c);
                mem.insert(d, c.to_vec());
                Chunk {
                    digest: d.as_bytes().to_vec(),
                    size: c.len() as u32,
                    // As stored: noise does not compress.
                    stored_size: c.len() as u32,
                    ..Chunk::default()
                }
            })
            .collect(),
        ..LayerIndex::default()
    }
}

#[test]
fn the_final_level_shrinks_a_rebuilt_chunks_delta_and_it_still_decodes() {
    // Base: four 128 KiB chunks of 32-byte records, a shared 24-byte template and 8 bytes of
    // their own, as machine code repeats instruction patterns with different operands. The new
    // chunk: records of the base in a shuffled order, as a relinked object file looks against its
    // old version. Only a deep search finds each record's own match rather than the template's.
    let mut rng = chunksnap_testkit::Rng::new(9);
    let template = chunksnap_testkit::noise(40, 24);
    let base: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            let mut c = Vec::with_capacity(128 << 10);
            while c.len() < 128 << 10 {
                c.extend_from_slice(&template);
                c.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
            c
        })
        .collect();
    let flat = base.concat();
    let mut new = Vec::new();
    while new.len() < 96 << 10 {
        let at = (rng.next_u64() % (flat.len() as u64 / 32)) as usize * 32;
        new.extend_from_slice(&flat[at..at + 32]);
    }
    let mut mem = HashMap::new();
    let refs: Vec<&[u8]> = base.iter().map(Vec::as_slice).collect();
    let reference = index_of(&refs, &mut mem);
    let index = index_of(&[&new], &mut mem);
    let chunks = Mem(mem);
    let every_base = 0..reference.chunks.len();
    let tries = [Try {
        chunk: 0,
        bases: vec![every_base.clone()],
    }];
    let at = |final_level| {
        let opts = DeltaOptions {
            level: 3,
            final_level,
            threads: 1,
            ..DeltaOptions::default()
        };
        let mut kept = encode(&index, &tries, &reference, &chunks, &opts).unwrap();
        assert_eq!(kept.len(), 1);
        let (picked, frame) = kept.remove(0);
        assert_eq!(picked.base, every_base);
        frame
    };
    let (plain, refined) = (at(0), at(19));
    assert!(
        refined.len() < plain.len(),
        "level 19: {} B, level 3: {} B",
        refined.len(),
        plain.len()
    );
    let digest = Digest::of(&new);
    let back = decompress_delta(&refined, &flat, new.len() as u64, &digest).unwrap();
    assert_eq!(back, new);
}

#[test]
fn delta_packs_are_the_packs_holding_delta_frames_in_pack_order() {
    use chunksnap_format::pb::{Delta, Pack};
    let pack = |n: u8| Pack {
        digest: Digest::of(&[n]).to_string(),
        size: 10,
    };
    let with_delta = |p: u32| Chunk {
        delta: Some(Delta {
            pack: p,
            ..Delta::default()
        }),
        ..Chunk::default()
    };
    let index = LayerIndex {
        packs: vec![pack(0), pack(1), pack(2)],
        chunks: vec![
            with_delta(2),
            Chunk::default(),
            with_delta(1),
            with_delta(2),
        ],
        ..LayerIndex::default()
    };
    let want = vec![Digest::of(&[1]), Digest::of(&[2])];
    assert_eq!(delta_packs(&index).unwrap(), want);
    assert!(delta_packs(&LayerIndex::default()).unwrap().is_empty());
}
