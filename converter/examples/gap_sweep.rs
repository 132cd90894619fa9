//! Range-coalescing sweep: what a node fetches for layer v2 with v2 converted against v1 (as
//! `chunkconv convert` does with the repository's other tags), on a cold node and on a node
//! holding v1's chunks, for several `max_gap` values:
//! `cargo run --release -p chunkconv --example gap_sweep -- V1.tar V2.tar`.

mod common;

use std::collections::HashSet;

use chunkconv::layer::{ChunkCatalog, EmptyCatalog, LayerOptions, convert_layer};
use chunksnap_core::fetch::{FetchOptions, estimate};
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::LayerIndex;

fn convert(path: &str, catalog: &dyn ChunkCatalog) -> anyhow::Result<LayerIndex> {
    let (data, input) = common::read_layer(path)?;
    let out = convert_layer(
        data.as_slice(),
        &input,
        &LayerOptions::default(),
        catalog,
        &mut common::Discard,
    )?;
    Ok(out.index)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v1, v2] = args.as_slice() else {
        anyhow::bail!("usage: gap_sweep V1.tar V2.tar");
    };
    let i1 = convert(v1, &EmptyCatalog)?;
    let known = common::Known::of(&i1)?;
    let i2 = convert(v2, &known)?;
    let have: HashSet<Digest> = i1
        .chunks
        .iter()
        .filter_map(|c| Digest::from_slice(&c.digest).ok())
        .collect();
    let stored = |ix: &LayerIndex, want: &dyn Fn(&Digest) -> bool| -> u64 {
        let mut seen = HashSet::new();
        ix.chunks
            .iter()
            .filter_map(|c| Some((Digest::from_slice(&c.digest).ok()?, c.stored_size)))
            .filter(|(d, _)| seen.insert(*d) && want(d))
            .map(|(_, s)| u64::from(s))
            .sum()
    };
    println!(
        "v2 chunk bytes: cold {} B, missing with v1 local {} B",
        stored(&i2, &|_| true),
        stored(&i2, &|d| !have.contains(d))
    );
    println!("max_gap KiB | cold requests  cold MB | update requests  update MB");
    for gap_kib in [0u64, 8, 16, 32, 64, 128, 256, 1024] {
        let opts = FetchOptions {
            max_gap: gap_kib << 10,
            ..FetchOptions::default()
        };
        let (cr, cb) = estimate(&i2, |_| true, &opts);
        let (ur, ub) = estimate(&i2, |d| !have.contains(d), &opts);
        println!(
            "{gap_kib:>11} | {cr:>13} {:>8.2} | {ur:>15} {:>10.2}",
            cb as f64 / 1e6,
            ub as f64 / 1e6
        );
    }
    Ok(())
}
