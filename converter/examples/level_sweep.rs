//! Stored bytes and convert time of one uncompressed layer tar at several zstd levels
//! (`cargo run --release -p chunkconv --example level_sweep -- LAYER.tar [LEVEL...]`), to
//! choose `DEFAULT_CHUNK_LEVEL`. Compare with `casync make` over the same tar.

mod common;

use anyhow::Context;

use std::time::Instant;

use chunkconv::layer::{EmptyCatalog, LayerOptions, PackSink, SinkError, convert_layer};
use chunksnap_format::digest::Digest;

/// Counts pack bytes without keeping them.
struct Count(u64);

impl PackSink for Count {
    fn put_pack(&mut self, _: &Digest, data: Vec<u8>) -> Result<(), SinkError> {
        self.0 += data.len() as u64;
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tar = args
        .next()
        .context("usage: level_sweep LAYER.tar [LEVEL...]")?;
    let mut levels: Vec<i32> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if levels.is_empty() {
        levels = vec![3, 6, 9, 12, 15, 19];
    }
    let (data, input) = common::read_layer(&tar)?;
    println!("{tar}: {} bytes", data.len());
    println!("level  stored_bytes  seconds");
    for level in levels {
        let opts = LayerOptions {
            zstd_level: level,
            ..LayerOptions::default()
        };
        let mut sink = Count(0);
        let t = Instant::now();
        convert_layer(data.as_slice(), &input, &opts, &EmptyCatalog, &mut sink)?;
        println!(
            "{level:>5}  {:>12}  {:>7.2}",
            sink.0,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
