//! File delta probe: where an update's bytes go. For two versions of a layer (uncompressed
//! tars) prints what a node holding v1 fetches for v2 with today's chunk deltas, with chunk
//! deltas against a window of each changed file's base file (several window sizes and levels),
//! and with one `--patch-from`-style frame per changed file (whole file against whole base file,
//! level 19): `cargo run --release -p chunkconv --example file_delta_probe -- V1.tar V2.tar`.
//! The layer floor (`zstd -19 --long --patch-from`) is `zstd`'s own figure, printed by the bench.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chunkconv::delta::files::{chunk_range, file_window, match_files, starts};
use chunkconv::delta::{DeltaOptions, PlanOptions, Sketches, encode, plan};
use chunkconv::layer::{EmptyCatalog, LayerOptions, convert_layer};
use chunkconv::sketch::{Sketch, sketch};
use chunksnap_core::assemble::{Seed, Seeding};
use chunksnap_core::tarscan::scan_tar;
use chunksnap_format::delta::compress_delta;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::LayerIndex;

fn stream(tar: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s = Vec::new();
    scan_tar(tar, &mut s)?;
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v1, v2] = args.as_slice() else {
        anyhow::bail!("usage: file_delta_probe V1.tar V2.tar");
    };
    let (d1, in1) = common::read_layer(v1)?;
    let (d2, in2) = common::read_layer(v2)?;
    let opts = LayerOptions::default();
    let i1 = convert_layer(
        d1.as_slice(),
        &in1,
        &opts,
        &EmptyCatalog,
        &mut common::Discard,
    )?
    .index;
    let known = common::Known::of(&i1)?;
    let out2 = convert_layer(d2.as_slice(), &in2, &opts, &known, &mut common::Discard)?;
    let i2 = out2.index;
    let (s1, s2) = (stream(&d1)?, stream(&d2)?);
    drop((d1, d2));
    let (st1, st2) = (starts(&i1), starts(&i2));
    let bytes = |ix: &LayerIndex, st: &[u64], s: &[u8], k: usize| {
        let a = st[k] as usize;
        s[a..a + ix.chunks[k].size as usize].to_vec()
    };
    let mut all: HashMap<Digest, Vec<u8>> = HashMap::new();
    for k in 0..i1.chunks.len() {
        all.insert(
            Digest::from_slice(&i1.chunks[k].digest)?,
            bytes(&i1, &st1, &s1, k),
        );
    }
    for k in 0..i2.chunks.len() {
        all.insert(
            Digest::from_slice(&i2.chunks[k].digest)?,
            bytes(&i2, &st2, &s2, k),
        );
    }
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
    let stored = |i: usize| u64::from(i2.chunks[i].stored_size);
    let plain: u64 = missing.iter().map(|&i| stored(i)).sum();
    println!(
        "v2: {} chunks, {} to fetch = {plain} B stored ({} B raw)",
        i2.chunks.len(),
        missing.len(),
        missing
            .iter()
            .map(|&i| u64::from(i2.chunks[i].size))
            .sum::<u64>()
    );
    let candidate: Vec<bool> = {
        let m: HashSet<usize> = missing.iter().copied().collect();
        (0..i2.chunks.len()).map(|i| m.contains(&i)).collect()
    };
    let sk = |ix: &LayerIndex| -> Vec<Sketch> {
        ix.chunks
            .iter()
            .map(|c| Digest::from_slice(&c.digest).map_or([u32::MAX; 4], |d| sketch(&chunks.0[&d])))
            .collect()
    };
    let (k1, k2) = (sk(&i1), sk(&i2));
    let sketches = Sketches {
        new: &k2,
        reference: &k1,
    };

    // Today: the converter's plan and encoder.
    let t = Instant::now();
    let tries = plan(
        &i2,
        &candidate,
        &i1,
        &PlanOptions::default(),
        Some(sketches),
    );
    let kept = encode(&i2, &tries, &i1, &chunks, &DeltaOptions::default())?;
    let today: HashMap<usize, u64> = kept
        .iter()
        .map(|(p, f)| (p.chunk, f.len() as u64))
        .collect();
    let total = |per: &HashMap<usize, u64>| -> u64 {
        missing
            .iter()
            .map(|&i| per.get(&i).copied().unwrap_or(stored(i)).min(stored(i)))
            .sum()
    };
    println!(
        "today (chunk deltas): {} B, {} deltas, {:.1} s",
        total(&today),
        kept.len(),
        t.elapsed().as_secs_f64()
    );

    // Changed files and their bases.
    let matches = match_files(&i2, &i1, 1, Some(sketches));
    let mut of_chunk: HashMap<usize, usize> = HashMap::new();
    for (n, m) in matches.iter().enumerate() {
        for k in chunk_range(&st2, &m.new.range) {
            of_chunk.entry(k).or_insert(n);
        }
    }
    let in_files: u64 = missing
        .iter()
        .filter(|i| of_chunk.contains_key(i))
        .map(|&i| stored(i))
        .sum();
    println!(
        "{} changed files with a base ({} same path, {} renamed, {} similar); their chunks to fetch: {in_files} B stored",
        matches.len(),
        matches
            .iter()
            .filter(|m| m.found == chunkconv::delta::files::Found::SamePath)
            .count(),
        matches
            .iter()
            .filter(|m| m.found == chunkconv::delta::files::Found::Renamed)
            .count(),
        matches
            .iter()
            .filter(|m| m.found == chunkconv::delta::files::Found::Similar)
            .count(),
    );

    // Chunk deltas against a window of the base file.
    println!("window KiB | level | file deltas | with today's: node fetches B | seconds");
    for (window, level) in [(1024u64, 6), (4096, 6), (8192, 6), (8192, 3), (8192, 12)] {
        let t = Instant::now();
        let mut per = today.clone();
        let mut n = 0;
        for &i in &missing {
            let Some(&f) = of_chunk.get(&i) else { continue };
            let range = st2[i]..st2[i] + u64::from(i2.chunks[i].size);
            let Some(run) = file_window(&matches[f], &range, &st1, window << 10) else {
                continue;
            };
            let base = &s1[st1[run.start] as usize
                ..(st1[run.end - 1] + u64::from(i1.chunks[run.end - 1].size)) as usize];
            let data = &s2[range.start as usize..range.end as usize];
            let frame = compress_delta(base, data, level)?.len() as u64;
            let e = per.entry(i).or_insert(u64::MAX);
            if frame < *e {
                *e = frame;
                n += 1;
            }
        }
        println!(
            "{window:>10} | {level:>5} | {n:>11} | {:>28} | {:>7.1}",
            total(&per),
            t.elapsed().as_secs_f64()
        );
    }

    // One frame per changed file against its whole base file: the per-file patch-from.
    let t = Instant::now();
    let mut file_bytes = 0u64;
    let mut covered: HashSet<usize> = HashSet::new();
    for m in &matches {
        let ks: Vec<usize> = chunk_range(&st2, &m.new.range)
            .filter(|k| candidate[*k])
            .collect();
        if ks.is_empty() {
            continue;
        }
        let base = &s1[m.base.range.start as usize..m.base.range.end as usize];
        let data = &s2[m.new.range.start as usize..m.new.range.end as usize];
        file_bytes += compress_delta(base, data, 19)?.len() as u64;
        covered.extend(ks);
    }
    let rest: u64 = missing
        .iter()
        .filter(|i| !covered.contains(i))
        .map(|&i| today.get(&i).copied().unwrap_or(stored(i)).min(stored(i)))
        .sum();
    println!(
        "per-file patch-from (level 19, whole files): {} B ({file_bytes} B for {} files, {rest} B other chunks), {:.1} s",
        file_bytes + rest,
        matches.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every chunk's bytes, by digest.
struct Chunks(HashMap<Digest, Vec<u8>>);

impl chunksnap_core::assemble::ChunkReader for Chunks {
    fn read_chunk(
        &self,
        digest: &Digest,
        _: u32,
    ) -> Result<Vec<u8>, chunksnap_core::store::StoreError> {
        self.0
            .get(digest)
            .cloned()
            .ok_or(chunksnap_core::store::StoreError::Missing(*digest))
    }
}
