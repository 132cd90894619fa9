//! Times a node's update from v1 to v2 of one layer, the daemon's data path without containerd
//! or a network: `cargo run --release -p chunkconv --example update_profile -- V1.tar V2.tar WORKDIR`.
//!
//! Converts both tars in memory (v2 against v1, deltas included, as `chunkconv convert` does:
//! `common::with_deltas`),
//! fills a chunk store with v1 and assembles v1, then times v2: the fetch of what the node lacks
//! (served from memory, so this is decode and store cost only) and the seeded assembly, first
//! one after the other, then overlapped as the daemon runs them. WORKDIR should be on the
//! filesystem a node would use (see docs/benchmarks.md on ext4 without a journal). With
//! `SHOW_REQUESTS=1` each Range request (pack, offset, length) is printed.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chunksnap_core::assemble::{
    AssembleOptions, ChunkReader, Seed, Seeding, WhiteoutMode, assemble_layer_with,
};
use chunksnap_core::fetch::{FetchError, FetchOptions, Inflight, RangeSource, fetch_needed};
use chunksnap_core::store::{ChunkStore, StoreError};
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::LayerIndex;

/// The packs once converted, shared: the "registry" the node fetches from.
#[derive(Clone)]
struct Registry(Arc<HashMap<String, Bytes>>);

impl RangeSource for Registry {
    async fn read_range(&self, pack: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        let p = self
            .0
            .get(pack)
            .ok_or_else(|| FetchError::range(pack, offset, len, "no pack"))?;
        if std::env::var_os("SHOW_REQUESTS").is_some() {
            eprintln!("request {} {offset} {len}", &pack[7..15]);
        }
        Ok(p.slice(offset as usize..(offset + len) as usize))
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v1, v2, work] = args.as_slice() else {
        anyhow::bail!("usage: update_profile V1.tar V2.tar WORKDIR");
    };
    let work = std::path::Path::new(work);
    std::fs::create_dir_all(work)?;
    let run = tempfile::tempdir_in(work)?;
    let common::with_deltas::DeltaPair {
        i1,
        i2,
        packs,
        deltas,
    } = common::with_deltas::convert_with_deltas(v1, v2)?;
    println!(
        "v2: {} entries, {} chunks, {deltas} deltas",
        i2.entries.len(),
        i2.chunks.len()
    );
    let reg = Registry(Arc::new(packs.0));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = Arc::new(ChunkStore::open(&run.path().join("store"), None)?);
    let fetch = FetchOptions::default();
    let (i1, i2) = (Arc::new(i1), Arc::new(i2));
    let dir1 = run.path().join("v1");
    std::fs::create_dir(&dir1)?;
    rt.block_on(fetch_needed(
        &i1,
        None,
        &store,
        &reg,
        &fetch,
        &Inflight::default(),
    ))?;
    let t = Instant::now();
    assemble_layer_with(
        &i1,
        &*store,
        &dir1,
        &AssembleOptions {
            mode: WhiteoutMode::Overlay,
            parents: &[],
            seeding: None,
            cancel: None,
            progress: None,
        },
    )?;
    println!(
        "v1 assembled (no seeds) in {:.3}s",
        t.elapsed().as_secs_f64()
    );

    let seeds = || {
        vec![Seed {
            index: i1.clone(),
            dir: dir1.clone(),
        }]
    };
    for overlapped in [false, true] {
        let dir2 = run.path().join(format!("v2-{overlapped}"));
        std::fs::create_dir(&dir2)?;
        let st = Arc::new(ChunkStore::open(
            &run.path().join(format!("store-{overlapped}")),
            None,
        )?);
        // The same v1 chunks as the first store.
        rt.block_on(fetch_needed(
            &i1,
            None,
            &st,
            &reg,
            &fetch,
            &Inflight::default(),
        ))?;
        let t = Instant::now();
        let cpu0 = cpu_seconds();
        let seeding = Seeding::plan(&i2, seeds());
        let needed = seeding.needed_chunks(&i2);
        let planned = t.elapsed().as_secs_f64();
        let opts = AssembleOptions {
            mode: WhiteoutMode::Overlay,
            parents: &[],
            seeding: Some(&seeding),
            cancel: None,
            progress: None,
        };
        let (fetched, stats) = if overlapped {
            let inflight = Inflight::default();
            let (i2f, stf, nf, src, inf) = (
                i2.clone(),
                st.clone(),
                needed.clone(),
                reg.clone(),
                inflight.clone(),
            );
            let h = rt.spawn(async move {
                fetch_needed(&i2f, Some(&nf), &stf, &src, &FetchOptions::default(), &inf).await
            });
            let reader = WaitingReader {
                store: st.clone(),
                index: i2.clone(),
                source: reg.clone(),
                inflight,
                rt: rt.handle().clone(),
            };
            let a = assemble_layer_with(&i2, &reader, &dir2, &opts)?;
            (rt.block_on(h)??, a)
        } else {
            let f = rt.block_on(fetch_needed(
                &i2,
                Some(&needed),
                &st,
                &reg,
                &fetch,
                &Inflight::default(),
            ))?;
            println!(
                "  fetch {:.3}s ({} chunks, {} from deltas, {} B)",
                t.elapsed().as_secs_f64() - planned,
                f.chunks_fetched,
                f.chunks_from_deltas,
                f.bytes_fetched
            );
            let a = assemble_layer_with(&i2, &*st, &dir2, &opts)?;
            (f, a)
        };
        println!(
            "v2 {}: plan {planned:.3}s, total {:.3}s, cpu {:.2}s; {} chunks fetched ({} from deltas), {} files written, {} seeded",
            if overlapped {
                "overlapped"
            } else {
                "sequential"
            },
            t.elapsed().as_secs_f64(),
            cpu_seconds() - cpu0,
            fetched.chunks_fetched,
            fetched.chunks_from_deltas,
            stats.files,
            stats.seeded_files
        );
    }
    Ok(())
}

/// The store, waiting for chunks a concurrent fetch is still bringing, as the daemon's reader
/// does: a fetch of the one chunk through the shared `Inflight` waits on that fetch's claim.
struct WaitingReader {
    store: Arc<ChunkStore>,
    index: Arc<LayerIndex>,
    source: Registry,
    inflight: Inflight,
    rt: tokio::runtime::Handle,
}

impl ChunkReader for WaitingReader {
    fn read_chunk(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        if let Ok(data) = self.store.get(digest, size) {
            return Ok(data);
        }
        let one: Vec<bool> = self
            .index
            .chunks
            .iter()
            .map(|c| c.digest == digest.0)
            .collect();
        let fetch = FetchOptions::default();
        self.rt
            .block_on(fetch_needed(
                &self.index,
                Some(&one),
                &self.store,
                &self.source,
                &fetch,
                &self.inflight,
            ))
            .map_err(|_| StoreError::Missing(*digest))?;
        self.store.get(digest, size)
    }
}

/// CPU time of the whole process so far (user + system, every thread): against the wall
/// time it shows how well the phase kept the CPUs busy.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0 // USER_HZ
}
