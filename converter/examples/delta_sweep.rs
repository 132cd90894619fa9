//! Delta sweep: what a node holding v1 fetches for v2's layer, with and without delta frames,
//! for several plan settings (slack, base cap, resemblance by sketches) and zstd levels. Uses the converter's own
//! planner and encoder and the node's own seeding plan (files v1 already has are linked, not
//! fetched): `cargo run --release -p chunkconv --example delta_sweep -- V1.tar V2.tar`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chunkconv::delta::{DeltaOptions, PlanOptions, Sketches, encode, plan};
use chunkconv::sketch::{Sketch, sketch};
use chunksnap_core::assemble::{ChunkReader, Seed, Seeding};
use chunksnap_core::store::StoreError;
use chunksnap_core::tarscan::scan_tar;
use chunksnap_format::chunker::{ChunkerError, ChunkerParams, chunk_stream};
use chunksnap_format::digest::Digest;
use chunksnap_format::index::encode as encode_index;

/// Every chunk's bytes, by digest.
struct Chunks(HashMap<Digest, Vec<u8>>);

impl ChunkReader for Chunks {
    fn read_chunk(&self, digest: &Digest, _: u32) -> Result<Vec<u8>, StoreError> {
        self.0
            .get(digest)
            .cloned()
            .ok_or(StoreError::Missing(*digest))
    }
}

fn add_chunks(data: &[u8], into: &mut HashMap<Digest, Vec<u8>>) -> anyhow::Result<()> {
    let mut stream = Vec::new();
    scan_tar(data, &mut stream)?;
    chunk_stream(
        stream.as_slice(),
        &ChunkerParams::default(),
        |c: Vec<u8>| {
            into.insert(Digest::of(&c), c);
            Ok::<(), ChunkerError>(())
        },
    )?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v1, v2] = args.as_slice() else {
        anyhow::bail!("usage: delta_sweep V1.tar V2.tar");
    };
    let common::Pair {
        v1: d1,
        v2: d2,
        i1,
        out2,
    } = common::convert_pair(v1, v2)?;
    let i2 = out2.index;
    let mut all = HashMap::new();
    add_chunks(&d1, &mut all)?;
    add_chunks(&d2, &mut all)?;
    let chunks = Chunks(all);

    // What a node holding v1 needs of v2: chunks of files it cannot link, minus v1's chunks.
    let have: HashSet<&[u8]> = i1.chunks.iter().map(|c| c.digest.as_slice()).collect();
    let seeding = Seeding::plan(
        &i2,
        vec![Seed {
            index: std::sync::Arc::new(i1.clone()),
            dir: "/nonexistent".into(),
        }],
    );
    let needed = seeding.needed_chunks(&i2);
    let mut seen = HashSet::new();
    let missing: Vec<usize> = (0..i2.chunks.len())
        .filter(|&i| needed[i] && !have.contains(i2.chunks[i].digest.as_slice()))
        .filter(|&i| seen.insert(i2.chunks[i].digest.clone()))
        .collect();
    let plain: u64 = missing
        .iter()
        .map(|&i| u64::from(i2.chunks[i].stored_size))
        .sum();
    let new_pack: HashSet<u32> = (0..i2.packs.len() as u32)
        .filter(|p| {
            out2.stats
                .packs
                .iter()
                .any(|(d, _)| d.to_string() == i2.packs[*p as usize].digest)
        })
        .collect();
    let mut first = HashSet::new();
    let candidate: Vec<bool> = i2
        .chunks
        .iter()
        .map(|c| new_pack.contains(&c.pack) && first.insert(c.digest.clone()))
        .collect();
    let (raw1, raw2) = (
        chunksnap_format::index::encode_raw(&i1),
        chunksnap_format::index::encode_raw(&i2),
    );
    let index_delta = chunksnap_format::delta::compress_index_delta(&raw1, &raw2)
        .transpose()?
        .map_or(0, |d| d.len());
    println!("index delta against v1's index: {index_delta} B");
    println!(
        "v2: {} chunks ({} new), {} files linked from v1, {} chunks to fetch = {plain} B stored; index {} B",
        i2.chunks.len(),
        out2.stats.new_chunks,
        seeding.files(),
        missing.len(),
        encode_index(&i2).len()
    );
    let sketches_of = |ix: &chunksnap_format::pb::LayerIndex| -> Vec<Sketch> {
        ix.chunks
            .iter()
            .map(|c| match Digest::from_slice(&c.digest) {
                Ok(d) => sketch(&chunks.0[&d]),
                Err(_) => [u32::MAX; 4],
            })
            .collect()
    };
    let (s1, s2) = (sketches_of(&i1), sketches_of(&i2));
    println!(
        "slack KiB | max base KiB | level | sketches |  tried   kept | node fetches B | of plain | seconds"
    );
    for (slack, max_base, level, similar) in [
        (16, 256, 6, false),
        (64, 128, 6, false),
        (64, 256, 3, false),
        (64, 256, 6, false),
        (64, 512, 6, false),
        (256, 256, 6, false),
        (64, 256, 12, false),
        (64, 256, 6, true),
        (64, 512, 6, true),
    ] {
        let p = PlanOptions {
            slack: slack << 10,
            max_base: max_base << 10,
            file_window: 0,
        };
        let t = Instant::now();
        let sk = similar.then_some(Sketches {
            new: &s2,
            reference: &s1,
        });
        let tries = plan(&i2, &candidate, &i1, &p, sk);
        let d = DeltaOptions {
            level,
            ..DeltaOptions::default()
        };
        let kept = encode(&i2, &tries, &i1, &chunks, &d)?;
        let secs = t.elapsed().as_secs_f64();
        let by_chunk: HashMap<usize, usize> =
            kept.iter().map(|(t, f)| (t.chunk, f.len())).collect();
        let first_of: HashMap<&[u8], usize> = i2
            .chunks
            .iter()
            .enumerate()
            .filter(|(i, _)| candidate[*i])
            .map(|(i, c)| (c.digest.as_slice(), i))
            .collect();
        let fetched: u64 = missing
            .iter()
            .map(|&i| {
                let c = &i2.chunks[i];
                first_of
                    .get(c.digest.as_slice())
                    .and_then(|k| by_chunk.get(k))
                    .map_or(u64::from(c.stored_size), |&n| n as u64)
            })
            .sum();
        println!(
            "{slack:>9} | {max_base:>12} | {level:>5} | {similar:>8} | {:>6} {:>6} | {fetched:>14} | {:>8.3} | {secs:>7.2}",
            tries.len(),
            kept.len(),
            fetched as f64 / plain.max(1) as f64
        );
    }
    Ok(())
}
