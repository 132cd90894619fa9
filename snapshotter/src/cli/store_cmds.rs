//! `chunksnap gc | fsck | prefetch`: node tools working on the chunk store directly.
//!
//! They are safe while the daemon runs: chunks are written with temp + rename, and a chunk
//! that disappears under a running prepare only makes that layer fall back to a normal pull.
//! `gc` cannot see the daemon's pins, so run it when no pull is in progress (the daemon also
//! evicts down to the budget after every prepare).

use std::sync::Arc;

use anyhow::Context;
use chunksnap::config::Config;
use chunksnap::metrics::Metrics;
use chunksnap::remote::chunk_remote::ChunkRemote;
use chunksnap_core::registry::RegistryClient;
use chunksnap_core::store::ChunkStore;

fn open_store(config: &Config) -> anyhow::Result<ChunkStore> {
    let dir = config.chunks_dir();
    ChunkStore::open(&dir, Some(config.store_budget_bytes))
        .with_context(|| format!("opening chunk store {}", dir.display()))
}

/// Evicts least recently used chunks beyond the budget.
pub fn gc(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let report = store.gc().context("gc")?;
    let stats = store.stats();
    println!("{report:?}");
    println!("store: {} chunks, {} bytes", stats.chunks, stats.bytes);
    Ok(())
}

/// Verifies every chunk; `repair` removes corrupt chunks and leftover temp files.
/// Returns whether damage was found (and left, without `repair`).
pub fn fsck(config: &Config, repair: bool) -> anyhow::Result<bool> {
    let store = open_store(config)?;
    let report = store.fsck(repair).context("fsck")?;
    println!(
        "chunks: {} ok, {} corrupt, {} temp files{}",
        report.ok,
        report.corrupt,
        report.temp_files,
        if report.repaired { " (removed)" } else { "" }
    );
    // Snapshot directories a crash left half-made (`new-*`) or half-removed (`rm-*`); the
    // daemon's Cleanup (run at start and by containerd) deletes them.
    let mut leftovers = Vec::new();
    if let Ok(dir) = std::fs::read_dir(config.root.join("snapshots")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("new-") || name.starts_with("rm-") {
                leftovers.push(name);
            }
        }
    }
    println!("snapshot leftovers awaiting cleanup: {}", leftovers.len());
    for l in &leftovers {
        println!("  {l}");
    }
    let damaged = report.corrupt > 0 || report.temp_files > 0;
    Ok(!damaged || report.repaired)
}

/// Fetches an image's chunks into the store.
pub fn prefetch(config: &Config, image: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let store = Arc::new(open_store(config)?);
    rt.block_on(async {
        let client = RegistryClient::new(config.registry().context("registry settings")?)
            .context("registry client")?;
        let remote = ChunkRemote::new(client, store, config.fetch(), Metrics::new());
        let stats = remote
            .prefetch_image(image)
            .await
            .with_context(|| format!("prefetching {image}"))?;
        println!(
            "{image}: {} chunks needed, {} fetched ({} bytes in {} requests), {} already local",
            stats.chunks_needed,
            stats.chunks_fetched,
            stats.bytes_fetched,
            stats.requests,
            stats.chunks_reused
        );
        Ok(())
    })
}
