//! Times the assembler alone on one layer tar, all chunks local:
//! `cargo run --release -p chunkconv --example assemble_profile -- LAYER.tar WORKDIR [RUNS]`.
//! Converts the tar in memory, fills a chunk store under WORKDIR, then assembles the layer into
//! fresh directories under WORKDIR (nothing is deleted between runs, so ext4's inode allocator
//! does not pay for recently deleted inodes).

mod common;

use std::collections::HashMap;
use std::time::Instant;

use chunkconv::layer::{EmptyCatalog, LayerOptions, PackSink, SinkError, convert_layer};
use chunksnap_core::assemble::{WhiteoutMode, assemble_layer};
use chunksnap_core::store::ChunkStore;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::Compression;

struct Keep(HashMap<Digest, Vec<u8>>);

impl PackSink for Keep {
    fn put_pack(&mut self, d: &Digest, data: Vec<u8>) -> Result<(), SinkError> {
        self.0.insert(*d, data);
        Ok(())
    }
}

struct Outcome {
    index: chunksnap_format::pb::LayerIndex,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tar, work, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: assemble_profile LAYER.tar WORKDIR [RUNS]");
    };
    let runs: usize = rest.first().map(|r| r.parse()).transpose()?.unwrap_or(3);
    let (data, input) = common::read_layer(tar)?;
    let work = std::path::Path::new(work);
    let saved = work.join("index.pb");
    let store = ChunkStore::open(&work.join("store"), None)?;
    // A second invocation on the same WORKDIR only assembles (for profiling).
    let index = match std::fs::read(&saved) {
        Ok(b) => chunksnap_format::index::decode(&b)?,
        Err(_) => {
            let mut sink = Keep(HashMap::new());
            let out = convert_layer(
                data.as_slice(),
                &input,
                &LayerOptions::default(),
                &EmptyCatalog,
                &mut sink,
            )?;
            for c in &out.index.chunks {
                let pack = &sink.0[&Digest::parse(&out.index.packs[c.pack as usize].digest)?];
                let end = c.pack_offset + u64::from(c.stored_size);
                let stored = &pack[c.pack_offset as usize..end as usize];
                let compression = Compression::try_from(c.compression)?;
                store.insert_verified(
                    &Digest::from_slice(&c.digest)?,
                    c.size,
                    compression,
                    stored,
                )?;
            }
            std::fs::write(&saved, chunksnap_format::index::encode(&out.index))?;
            out.index
        }
    };
    let out = Outcome { index };
    println!(
        "{} entries, {} chunks",
        out.index.entries.len(),
        out.index.chunks.len()
    );
    for run in 0..runs {
        let dest = work.join(format!("run-{}-{run}", std::process::id()));
        std::fs::create_dir_all(&dest)?;
        let t = Instant::now();
        let stats = assemble_layer(&out.index, &store, &dest, WhiteoutMode::Apply)?;
        println!(
            "run {run}: {:.3} s ({} files)",
            t.elapsed().as_secs_f64(),
            stats.files
        );
    }
    Ok(())
}
