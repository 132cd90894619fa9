//! `chunksnap status`: snapshots by kind and disk use.
//!
//! Asks the running daemon over its socket (the database is locked while it runs); when no
//! daemon answers, reads the database directly.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use chunksnap::config::Config;
use chunksnap::snapshots::local::{Local, disk_usage};
use chunksnap_proto::snapshots::snapshots_client::SnapshotsClient;
use chunksnap_proto::snapshots::{Kind, ListSnapshotsRequest};
use tonic::transport::Endpoint;

/// Prints the status report.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (source, counts) = match rt.block_on(counts_from_daemon(&config.address)) {
        Ok(c) => ("daemon", c),
        Err(e) => {
            eprintln!("chunksnap: daemon not reachable ({e:#}); reading the database directly");
            let local = Local::open(&config.root)
                .with_context(|| format!("opening {}", config.root.display()))?;
            let mut c = BTreeMap::new();
            for info in local.list()? {
                *c.entry(info.record.kind.filter_name().to_owned())
                    .or_insert(0u64) += 1;
            }
            ("database", c)
        }
    };
    println!("state root: {}", config.root.display());
    println!("snapshots ({source}):");
    for kind in ["committed", "active", "view"] {
        println!("  {kind:<10} {}", counts.get(kind).copied().unwrap_or(0));
    }
    for (what, dir) in [("snapshots", "snapshots"), ("chunk store", "chunks")] {
        let path = config.root.join(dir);
        if path.exists() {
            let (bytes, inodes) = disk_usage(&path)?;
            println!("{what:<12} {} in {inodes} inodes", human(bytes));
        }
    }
    println!(
        "store budget {} (least recently used chunks are evicted beyond it)",
        human(i64::try_from(config.store_budget_bytes).unwrap_or(i64::MAX))
    );
    super::prewarm::print_status(&rt, config);
    Ok(())
}

async fn counts_from_daemon(socket: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect()
        .await?;
    let mut client = SnapshotsClient::new(channel);
    let mut stream = client
        .list(ListSnapshotsRequest::default())
        .await?
        .into_inner();
    let mut counts = BTreeMap::new();
    while let Some(msg) = stream.message().await? {
        for info in msg.info {
            let kind = match Kind::try_from(info.kind) {
                Ok(Kind::Committed) => "committed",
                Ok(Kind::Active) => "active",
                Ok(Kind::View) => "view",
                _ => "unknown",
            };
            *counts.entry(kind.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

fn human(bytes: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}
