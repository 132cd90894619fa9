//! Probe: how much would chunk deltas against v1 save for a node updating v1 -> v2?
//! `cargo run --release -p chunkconv --example delta_probe -- V1.tar V2.tar`

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chunksnap_core::chunker::{ChunkerError, ChunkerParams, chunk_stream};
use chunksnap_core::digest::Digest;
use chunksnap_core::format::pack::compress_chunk;
use chunksnap_core::tarscan::scan_tar;
use chunksnap_proto::index::{Entry, EntryType};

struct Layer {
    entries: Vec<Entry>,
    stream: Vec<u8>,
    /// (offset, len, digest)
    chunks: Vec<(u64, u32, Digest)>,
}

fn load(path: &str) -> anyhow::Result<Layer> {
    let data = std::fs::read(path)?;
    let mut stream = Vec::new();
    let scan = scan_tar(data.as_slice(), &mut stream)?;
    let mut chunks = Vec::new();
    let mut off = 0u64;
    chunk_stream(
        stream.as_slice(),
        &ChunkerParams::default(),
        |c: Vec<u8>| {
            chunks.push((off, c.len() as u32, Digest::of(&c)));
            off += c.len() as u64;
            Ok::<(), ChunkerError>(())
        },
    )?;
    Ok(Layer {
        entries: scan.entries,
        stream,
        chunks,
    })
}

fn is_file(e: &Entry) -> bool {
    e.r#type == EntryType::File as i32 && e.size > 0
}

fn norm(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut in_digits = false;
    for &b in p {
        if b.is_ascii_digit() {
            if !in_digits {
                out.push(b'#');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(b);
        }
    }
    out
}

fn delta(base: &[u8], src: &[u8], level: i32) -> usize {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut c = CCtx::create();
    let wlog = (usize::BITS - (base.len() + src.len()).leading_zeros()).clamp(10, 27);
    c.set_parameter(CParameter::CompressionLevel(level))
        .unwrap();
    c.set_parameter(CParameter::WindowLog(wlog)).unwrap();
    c.set_parameter(CParameter::ContentSizeFlag(true)).unwrap();
    c.ref_prefix(base).unwrap();
    let mut out = Vec::with_capacity(src.len() + 1024);
    c.compress2(&mut out, src).unwrap();
    out.len()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v1, v2] = &args[..2] else {
        anyhow::bail!("usage: delta_probe V1.tar V2.tar");
    };
    let (l1, l2) = (load(v1)?, load(v2)?);
    let have: HashSet<Digest> = l1.chunks.iter().map(|c| c.2).collect();
    // Seeding approximation: files whose content digest v1 has are linked, not fetched.
    let v1_files: HashSet<&[u8]> = l1
        .entries
        .iter()
        .filter(|e| is_file(e))
        .map(|e| e.content_digest.as_slice())
        .collect();
    let starts: Vec<u64> = l2.chunks.iter().map(|c| c.0).collect();
    let mut needed = vec![false; l2.chunks.len()];
    let mut changed_files = 0;
    for e in l2.entries.iter().filter(|e| is_file(e)) {
        if v1_files.contains(e.content_digest.as_slice()) {
            continue;
        }
        changed_files += 1;
        let first = starts.partition_point(|&s| s <= e.offset).saturating_sub(1);
        for (n, s) in starts.iter().enumerate().skip(first) {
            if *s >= e.offset + e.size {
                break;
            }
            needed[n] = true;
        }
    }
    let mut missing: Vec<usize> = (0..l2.chunks.len())
        .filter(|&i| needed[i] && !have.contains(&l2.chunks[i].2))
        .collect();
    let mut seen = HashSet::new();
    missing.retain(|&i| seen.insert(l2.chunks[i].2));
    let plain: usize = missing
        .iter()
        .map(|&i| {
            let (o, n, _) = l2.chunks[i];
            compress_chunk(&l2.stream[o as usize..o as usize + n as usize], 6)
                .unwrap()
                .data
                .len()
        })
        .sum();
    println!(
        "v2: {} chunks, {} changed files, {} missing chunks, plain stored {} B",
        l2.chunks.len(),
        changed_files,
        missing.len(),
        plain
    );

    // Anchors: (v2 offset, v1 offset) from same-path (then digit-normalised) file starts and
    // from chunks both layers have.
    let mut by_path: HashMap<&[u8], u64> = HashMap::new();
    let mut by_norm: HashMap<Vec<u8>, u64> = HashMap::new();
    for e in l1.entries.iter().filter(|e| is_file(e)) {
        by_path.insert(&e.path, e.offset);
        by_norm.entry(norm(&e.path)).or_insert(e.offset);
    }
    let mut v1_chunk_at: HashMap<Digest, Vec<u64>> = HashMap::new();
    for c in &l1.chunks {
        v1_chunk_at.entry(c.2).or_default().push(c.0);
    }
    let v1_starts: Vec<u64> = l1.chunks.iter().map(|c| c.0).collect();
    for (use_chunks, use_norm) in [(false, false), (true, false), (true, true)] {
        let mut anchors: Vec<(u64, u64)> = Vec::new();
        for e in l2.entries.iter().filter(|e| is_file(e)) {
            if let Some(o) = by_path.get(e.path.as_slice()) {
                anchors.push((e.offset, *o));
            } else if use_norm && let Some(o) = by_norm.get(&norm(&e.path)) {
                anchors.push((e.offset, *o));
            }
        }
        if use_chunks {
            for c in &l2.chunks {
                if let Some(v) = v1_chunk_at.get(&c.2) {
                    anchors.push((c.0, v[0]));
                }
            }
        }
        anchors.sort();
        for slack in [16u64 << 10, 64 << 10, 256 << 10] {
            for cap in [256usize << 10, 1 << 20] {
                for level in [6, 19] {
                    let t = Instant::now();
                    let mut total = 0usize;
                    let mut used = 0;
                    for &i in &missing {
                        let (o, n, _) = l2.chunks[i];
                        let src = &l2.stream[o as usize..o as usize + n as usize];
                        let full = compress_chunk(src, 6).unwrap().data.len();
                        let k = anchors.partition_point(|a| a.0 <= o);
                        let Some(&(a2, a1)) = k.checked_sub(1).map(|k| &anchors[k]) else {
                            total += full;
                            continue;
                        };
                        let m = a1 + (o - a2);
                        let lo = m.saturating_sub(slack);
                        let hi = (m + u64::from(n) + slack).min(l1.stream.len() as u64);
                        if lo >= hi {
                            total += full;
                            continue;
                        }
                        // whole v1 chunks covering [lo, hi)
                        let f = v1_starts.partition_point(|&s| s <= lo).saturating_sub(1);
                        let l = v1_starts.partition_point(|&s| s < hi);
                        let mut b0 = v1_starts[f] as usize;
                        let mut b1 = if l < v1_starts.len() {
                            v1_starts[l] as usize
                        } else {
                            l1.stream.len()
                        };
                        if b1 - b0 > cap {
                            let mid = m as usize;
                            b0 = mid.saturating_sub(cap / 2).max(b0);
                            b1 = (b0 + cap).min(b1);
                        }
                        let d = delta(&l1.stream[b0..b1], src, level);
                        if d * 2 < full {
                            total += d;
                            used += 1;
                        } else {
                            total += full;
                        }
                    }
                    println!(
                        "chunks-anchors={use_chunks} norm={use_norm} slack={:>4}K cap={:>5}K level={level:>2}: {total:>9} B ({:.3} of plain), {used} deltas, {:.2}s",
                        slack >> 10,
                        cap >> 10,
                        total as f64 / plain as f64,
                        t.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
    Ok(())
}
