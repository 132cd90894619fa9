//! Cold probe: the bytes a node with an empty store fetches for a layer, per-chunk frames (as
//! stored today) against frames covering runs of consecutive chunks, at several zstd levels:
//! `cargo run --release -p chunkconv --example cold_probe -- LAYER.tar [RUN_KIB:LEVEL ...]`
//! (`0:LEVEL` = one frame per chunk). Also prints what a node that needs only some chunks of a
//! run pays: the bytes of every run holding at least one chunk of `--sample` (every 50th chunk),
//! a stand-in for an update's scattered changed chunks. Compare with the gzip layer and
//! `zstd -19 --long` over the whole tar.

use std::time::Instant;

use anyhow::Context;
use chunksnap_core::tarscan::scan_tar;
use chunksnap_format::chunker::{ChunkerError, ChunkerParams, chunk_stream};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tar = args
        .next()
        .context("usage: cold_probe LAYER.tar [RUN_KIB:LEVEL ...]")?;
    let mut configs: Vec<(usize, i32)> = args
        .map(|a| {
            let (r, l) = a.split_once(':').context("RUN_KIB:LEVEL")?;
            Ok((r.parse::<usize>()? << 10, l.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    if configs.is_empty() {
        configs = vec![
            (0, 6),
            (0, 19),
            (256 << 10, 19),
            (1 << 20, 19),
            (4 << 20, 19),
        ];
    }
    let data = std::fs::read(&tar).with_context(|| format!("reading {tar}"))?;
    let mut stream = Vec::new();
    scan_tar(data.as_slice(), &mut stream)?;
    let mut chunks = Vec::new();
    chunk_stream(
        stream.as_slice(),
        &ChunkerParams::default(),
        |c: Vec<u8>| {
            chunks.push(c);
            Ok::<(), ChunkerError>(())
        },
    )?;
    println!(
        "{tar}: {} B tar, {} B content, {} chunks",
        data.len(),
        stream.len(),
        chunks.len()
    );
    println!("run KiB | level | stored B | sampled-update B | seconds");
    for (run, level) in configs {
        let t = Instant::now();
        let (mut total, mut sampled) = (0u64, 0u64);
        let mut k = 0;
        while k < chunks.len() {
            let mut j = k + 1;
            let mut len = chunks[k].len();
            while run > 0 && j < chunks.len() && len + chunks[j].len() <= run {
                len += chunks[j].len();
                j += 1;
            }
            let raw: Vec<u8> = chunks[k..j].concat();
            let n = zstd::bulk::compress(&raw, level)?.len().min(raw.len() + 1) as u64;
            total += n;
            if (k..j).any(|c| c % 50 == 0) {
                sampled += n;
            }
            k = j;
        }
        println!(
            "{:>7} | {level:>5} | {total:>8} | {sampled:>16} | {:>7.1}",
            run >> 10,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
