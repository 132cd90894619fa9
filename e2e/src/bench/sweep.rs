//! The chunk-size sweep (`bench/run.sh sweep`): for each case (default `debian-security`) and
//! average chunk size, convert v1 and v2 into a fresh repository and measure what a node holding
//! v1 fetches for v2 (with `chunkconv extract` into a shared store, which uses the node's fetch
//! path), plus convert time.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::bench::profile::{Network, Profile};
use crate::bench::{Settings, blocking, case, fresh_dir, tools};

/// One chunk size.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    pub case: String,
    pub chunk_avg: u64,
    pub v1_chunks: u64,
    pub convert_v1_seconds: f64,
    pub convert_v2_seconds: f64,
    pub v2_bytes_pushed: u64,
    /// Registry bytes served for v2 to a store that holds v1's chunks.
    pub v2_node_bytes: u64,
}

pub const SIZES: [u64; 3] = [16 << 10, 32 << 10, 64 << 10];

/// Runs the sweep on `cases` (names under `s.cases_dir`).
pub async fn run(s: &Settings, cases: &[String]) -> Result<Vec<SweepRow>> {
    let net = Network::start(Profile::Loopback, 0).await?;
    let debian = case::debian_tars(&net.images).await?;
    let blobs = std::sync::Arc::new(case::Blobs::default());
    let mut rows = Vec::new();
    for name in cases {
        let (dir, work, n, d) = (
            s.cases_dir.clone(),
            s.work.clone(),
            name.clone(),
            debian.clone(),
        );
        let c = blocking(move || case::load(&dir, &n, &work, &d)).await?;
        rows.extend(run_case(s, &net, &blobs, &c).await?);
    }
    Ok(rows)
}

async fn run_case(
    s: &Settings,
    net: &Network,
    blobs: &std::sync::Arc<case::Blobs>,
    c: &case::Case,
) -> Result<Vec<SweepRow>> {
    let mut rows = Vec::new();
    for avg in SIZES {
        eprintln!("bench sweep: {} chunk avg {} KiB", c.name, avg >> 10);
        let repo = format!("sweep-{}-{}k", c.name, avg >> 10);
        let mut refs = Vec::new();
        for (tag, tars) in [("v1", c.v1.clone()), ("v2", c.v2.clone())] {
            let (b, up, host, repo) = (
                blobs.clone(),
                net.registry.upstream(),
                net.registry.host(),
                repo.clone(),
            );
            refs.push(
                blocking(move || b.push_to(up, &host, &repo, tag, &tars))
                    .await?
                    .reference,
            );
        }
        let (r1, r2) = (refs[0].clone(), refs[1].clone());
        let c1 = blocking(move || tools::convert(&r1, Some(avg))).await?;
        let c2 = blocking(move || tools::convert(&r2, Some(avg))).await?;
        let store = fresh_dir(&s.work.join("sweep-store"))?;
        let dir: PathBuf = s.work.join("sweep-dir");
        let (r1, st, d) = (refs[0].clone(), store.clone(), dir.clone());
        blocking(move || {
            fresh_dir(&d)?;
            tools::extract(&r1, &st, &d)
        })
        .await?;
        net.registry.reset_counters();
        let (r2, st, d) = (refs[1].clone(), store.clone(), dir.clone());
        let extracted = blocking(move || {
            fresh_dir(&d)?;
            tools::extract(&r2, &st, &d)
        })
        .await;
        if let Err(e) = extracted {
            let failed: Vec<String> = net
                .registry
                .requests()
                .iter()
                .filter(|r| r.status >= 400)
                .take(5)
                .map(|r| format!("{} {} {:?} -> {}", r.method, r.path, r.range, r.status))
                .collect();
            return Err(e.context(format!("failed registry requests: {failed:?}")));
        }
        let served = net.registry.bytes_served();
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&store);
        rows.push(SweepRow {
            case: c.name.clone(),
            chunk_avg: avg,
            v1_chunks: c1.chunks,
            convert_v1_seconds: c1.seconds,
            convert_v2_seconds: c2.seconds,
            v2_bytes_pushed: c2.bytes_pushed,
            v2_node_bytes: served,
        });
    }
    Ok(rows)
}

/// The sweep as a table.
pub fn table(rows: &[SweepRow]) -> String {
    let mut s = String::from(
        "case             | chunk avg | v1 chunks | convert v1 s | convert v2 s | v2 pushed MB | v2 fetched by node MB\n",
    );
    for r in rows {
        s.push_str(&format!(
            "{:<16} | {:>5} KiB | {:>9} | {:>12.2} | {:>12.2} | {:>12.2} | {:>21.2}\n",
            r.case,
            r.chunk_avg >> 10,
            r.v1_chunks,
            r.convert_v1_seconds,
            r.convert_v2_seconds,
            r.v2_bytes_pushed as f64 / 1e6,
            r.v2_node_bytes as f64 / 1e6
        ));
    }
    s
}
