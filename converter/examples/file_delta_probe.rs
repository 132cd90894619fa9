//! File delta probe: where an update's bytes go. For two versions of a layer (uncompressed
//! tars) prints what a node holding v1 fetches for v2 with today's chunk deltas, with chunk
//! deltas against a window of each changed file's base file (several window sizes and levels),
//! with one `--patch-from`-style frame per changed file (whole file against whole base file,
//! level 6 and 19), and with one frame per run of consecutive changed chunks of a file:
//! `cargo run --release -p chunkconv --example file_delta_probe -- V1.tar V2.tar [EXPERIMENT...]`
//! (experiments: plan6/0 plan6/12 plan6/16 plan6/19 plan12/0 plan19/0 windows runs files6 files19;
//! none: all).
//! The layer floor (`zstd -19 --long --patch-from`) is `zstd`'s own figure, printed by the bench.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chunkconv::delta::files::{Found, chunk_range, file_window, match_files, starts};
use chunkconv::delta::{DeltaOptions, PlanOptions, Sketches, attach, encode, plan};
use chunkconv::sketch::{Sketch, sketch};
use chunksnap_core::assemble::{Seed, Seeding};
use chunksnap_core::tarscan::scan_tar;
use chunksnap_format::delta::{compress_delta, compress_index_delta};
use chunksnap_format::digest::Digest;
use chunksnap_format::index::encode_raw;
use chunksnap_format::pb::LayerIndex;

fn stream(tar: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s = Vec::new();
    scan_tar(tar, &mut s)?;
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v1, v2, experiments @ ..] = args.as_slice() else {
        anyhow::bail!(
            "usage: file_delta_probe V1.tar V2.tar [plan6/19 windows runs files6 files19 ...]"
        );
    };
    let common::Pair {
        v1: d1,
        v2: d2,
        i1,
        out2,
    } = common::convert_pair(v1, v2)?;
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

    let total = |per: &HashMap<usize, u64>| -> u64 {
        missing
            .iter()
            .map(|&i| per.get(&i).copied().unwrap_or(stored(i)).min(stored(i)))
            .sum()
    };
    let on = |name: &str| experiments.is_empty() || experiments.iter().any(|e| e == name);

    // The converter's plan and encoder: without base files (before issue 19), and as now, at
    // several levels.
    let mut today = HashMap::new();
    let window = PlanOptions::default().file_window;
    let rows: &[(&str, u64, i32, i32)] = &[
        ("no base files", 0, 6, 0),
        ("default plan", window, 6, 0),
        ("default plan", window, 6, 12),
        ("default plan", window, 6, 16),
        ("default plan", window, 6, 19),
        ("default plan", window, 12, 0),
        ("default plan", window, 19, 0),
    ];
    for &(name, file_window, level, final_level) in rows {
        if !(file_window == 0 || on(&format!("plan{level}/{final_level}"))) {
            continue;
        }
        let t = Instant::now();
        let p = PlanOptions {
            file_window,
            ..PlanOptions::default()
        };
        let tries = plan(&i2, &candidate, &i1, &p, Some(sketches));
        let d = DeltaOptions {
            level,
            final_level,
            ..DeltaOptions::default()
        };
        let kept = encode(&i2, &tries, &i1, &chunks, &d)?;
        let per: HashMap<usize, u64> = kept
            .iter()
            .map(|(p, f)| (p.chunk, f.len() as u64))
            .collect();
        let secs = t.elapsed().as_secs_f64();
        let n = kept.len();
        // What the index costs an updating node: its delta against v1's raw index, with this
        // plan's base table and delta records in it.
        let mut with = i2.clone();
        attach(&mut with, &i1, kept, DeltaOptions::default().pack_size)?;
        let index_delta = compress_index_delta(&encode_raw(&i1), &encode_raw(&with))
            .transpose()?
            .map_or(0, |d| d.len());
        println!(
            "chunk deltas, {name}, level {level} then {final_level}: {} B, {n} deltas, {secs:.1} s; index delta {index_delta} B ({} base chunks)",
            total(&per),
            with.delta_bases.len()
        );
        if file_window == 0 {
            today = per;
        }
    }

    // Changed files and their bases.
    let matches = match_files(&i2, &i1, 1, Some(sketches));
    let mut of_chunk: HashMap<usize, usize> = HashMap::new();
    for (n, m) in matches.iter().enumerate() {
        for k in chunk_range(&st2, &m.new.range) {
            of_chunk.entry(k).or_insert(n);
        }
    }
    let count = |f: Found| matches.iter().filter(|m| m.found == f).count();
    let in_files: u64 = missing
        .iter()
        .filter(|i| of_chunk.contains_key(i))
        .map(|&i| stored(i))
        .sum();
    println!(
        "{} changed files with a base ({} same path, {} renamed, {} similar); their chunks to fetch: {in_files} B stored",
        matches.len(),
        count(Found::SamePath),
        count(Found::Renamed),
        count(Found::Similar),
    );
    let base_of = |run: std::ops::Range<usize>| {
        &s1[st1[run.start] as usize
            ..(st1[run.end - 1] + u64::from(i1.chunks[run.end - 1].size)) as usize]
    };

    // Chunk deltas against a window of the base file only (with today's where smaller).
    if on("windows") {
        println!("window KiB | level | file deltas | with today's: node fetches B | seconds");
        for (window, level) in [(1024u64, 6), (4096, 6), (8192, 6), (1024, 12)] {
            let t = Instant::now();
            let mut per = today.clone();
            let mut n = 0;
            for &i in &missing {
                let Some(&f) = of_chunk.get(&i) else { continue };
                let range = st2[i]..st2[i] + u64::from(i2.chunks[i].size);
                let Some(run) = file_window(&matches[f], &range, &st1, window << 10) else {
                    continue;
                };
                let data = &s2[range.start as usize..range.end as usize];
                let frame = compress_delta(base_of(run), data, level)?.len() as u64;
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
    }

    // Runs of consecutive chunks to fetch inside one changed file as one frame, against the base
    // file's window around the run (a node would decode the run to get any of its chunks).
    if on("runs") {
        println!("run KiB | window KiB | level | node fetches B | seconds");
        for (run_max, extra, level) in [
            (1024u64, 1024u64, 6),
            (4096, 1024, 6),
            (1024, 1024, 19),
            (4096, 4096, 19),
        ] {
            let t = Instant::now();
            let mut fetched = 0u64;
            let mut k = 0;
            while k < missing.len() {
                let i = missing[k];
                let Some(&f) = of_chunk.get(&i) else {
                    fetched += today.get(&i).copied().unwrap_or(stored(i)).min(stored(i));
                    k += 1;
                    continue;
                };
                // Extend the run over consecutive chunks of the same file.
                let mut j = k + 1;
                let mut len = u64::from(i2.chunks[i].size);
                while j < missing.len()
                    && missing[j] == missing[j - 1] + 1
                    && of_chunk.get(&missing[j]) == Some(&f)
                    && len + u64::from(i2.chunks[missing[j]].size) <= run_max << 10
                {
                    len += u64::from(i2.chunks[missing[j]].size);
                    j += 1;
                }
                let range = st2[i]..st2[i] + len;
                let window = len + (extra << 10);
                let stored_run: u64 = missing[k..j].iter().map(|&c| stored(c)).sum();
                let frame = match file_window(&matches[f], &range, &st1, window) {
                    Some(run) => compress_delta(
                        base_of(run),
                        &s2[range.start as usize..range.end as usize],
                        level,
                    )?
                    .len() as u64,
                    None => u64::MAX,
                };
                let chunked: u64 = missing[k..j]
                    .iter()
                    .map(|&c| today.get(&c).copied().unwrap_or(stored(c)).min(stored(c)))
                    .sum();
                fetched += frame.min(chunked).min(stored_run);
                k = j;
            }
            println!(
                "{run_max:>7} | {extra:>10} | {level:>5} | {fetched:>14} | {:>7.1}",
                t.elapsed().as_secs_f64()
            );
        }
    }

    // One frame per changed file against its whole base file: the per-file patch-from.
    for level in [6, 19] {
        if !on(&format!("files{level}")) {
            continue;
        }
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
            file_bytes += compress_delta(base, data, level)?.len() as u64;
            covered.extend(ks);
        }
        let rest: u64 = missing
            .iter()
            .filter(|i| !covered.contains(i))
            .map(|&i| today.get(&i).copied().unwrap_or(stored(i)).min(stored(i)))
            .sum();
        println!(
            "per-file patch-from (level {level}, whole files): {} B ({file_bytes} B for {} files, {rest} B other chunks), {:.1} s",
            file_bytes + rest,
            matches.len(),
            t.elapsed().as_secs_f64()
        );
    }
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
