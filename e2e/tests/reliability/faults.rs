//! Registry faults on chunksnap's pack reads: 5xx, 429, resets, truncated and corrupted bodies,
//! stalls. Every pull must either assemble layers equal to containerd's own unpacking or fall
//! back to containerd's pull; no corrupt chunk and no temp file may stay behind.

use std::time::Duration;

use anyhow::{Result, ensure};
use chunksnap_e2e::faults::{Fault, FaultPlan, Target, When};

use super::common::{
    FaultyNode, convert, fsck_corrupt, lasting_leftovers, oracle, oracle_differences, unique_image,
};

/// 1 MiB requests (the smallest chunksnap allows) so every layer takes several Range reads;
/// a 2 s read timeout so stalls resolve quickly.
const CONFIG: &str = "registry_timeout_seconds = 2\nfetch_max_request_bytes = 1048576\n";
const PULLS: u64 = 3;

#[derive(Debug, Default)]
struct Row {
    mode: &'static str,
    pulls: u64,
    remote: f64,
    fallback: f64,
    failed: u64,
    corrupt: u64,
    mismatched: u64,
    injected: u64,
    leftovers: Vec<std::path::PathBuf>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_faults_recover_or_fall_back() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = FaultyNode::start(CONFIG).await?;
    let oracle = oracle(&node.env).await?;
    let cri = node.env.containerd.cri().await?;
    let range = |fault, when| FaultPlan {
        fault,
        target: Target::RangeBlobGets,
        when,
    };
    let p = |seed| When::Probability { p: 0.4, seed };
    let modes: Vec<(&'static str, FaultPlan)> = vec![
        ("503 (p=0.4)", range(Fault::Status(503), p(11))),
        ("500 x3 first", range(Fault::Status(500), When::FirstN(3))),
        (
            "429 Retry-After (p=0.4)",
            range(
                Fault::TooManyRequests {
                    retry_after_secs: 1,
                },
                p(12),
            ),
        ),
        ("reset mid-body (p=0.4)", range(Fault::ResetMidBody, p(13))),
        ("truncated body (p=0.4)", range(Fault::Truncate, p(14))),
        ("flipped byte (p=0.4)", range(Fault::FlipByte, p(15))),
        (
            "stall 6s > 2s timeout (x2 first)",
            range(Fault::Stall(Duration::from_secs(6)), When::FirstN(2)),
        ),
        (
            "every read 503",
            range(Fault::Status(503), When::FirstN(u64::MAX)),
        ),
    ];
    let mut rows = Vec::new();
    let mut seed = 0;
    for (mode, plan) in modes {
        let mut row = Row {
            mode,
            ..Row::default()
        };
        for _ in 0..PULLS {
            seed += 1;
            let img = unique_image(&node.env, "faults", seed, 2, 700 << 10).await?;
            node.faults.set_plan(None);
            convert(&img.reference).await?;
            let (r0, f0) = (
                node.prepares("remote").await?,
                node.prepares("fallback").await?,
            );
            // A different coin-flip sequence for every pull.
            let mut plan = plan;
            if let When::Probability { p, .. } = plan.when {
                plan.when = When::Probability {
                    p,
                    seed: seed * 7919,
                };
            }
            node.faults.set_plan(Some(plan));
            let pulled = cri.pull_image(&img.reference).await;
            row.injected += node.faults.injected();
            node.faults.set_plan(None);
            row.pulls += 1;
            row.remote += node.prepares("remote").await? - r0;
            row.fallback += node.prepares("fallback").await? - f0;
            match pulled {
                Ok(_) => {
                    if oracle_differences(&node.env.containerd, &oracle, &img).await? > 0 {
                        row.mismatched += 1;
                    }
                }
                Err(e) => {
                    eprintln!("{mode}: pull of {} failed: {e:#}", img.reference);
                    row.failed += 1;
                }
            }
        }
        row.corrupt = fsck_corrupt(&node.chunksnap)?;
        row.leftovers = lasting_leftovers(&node.chunksnap).await;
        rows.push(row);
    }
    eprintln!(
        "\n{:<34} {:>5} {:>8} {:>6} {:>8} {:>6} {:>7} {:>8} {:>9}",
        "mode",
        "pulls",
        "injected",
        "remote",
        "fallback",
        "failed",
        "corrupt",
        "mismatch",
        "leftovers"
    );
    for r in &rows {
        eprintln!(
            "{:<34} {:>5} {:>8} {:>6} {:>8} {:>6} {:>7} {:>8} {:>9}",
            r.mode,
            r.pulls,
            r.injected,
            r.remote,
            r.fallback,
            r.failed,
            r.corrupt,
            r.mismatched,
            r.leftovers.len()
        );
    }
    for r in &rows {
        ensure!(r.injected > 0, "{}: no fault was injected", r.mode);
        ensure!(r.failed == 0, "{}: {} pulls failed", r.mode, r.failed);
        ensure!(r.corrupt == 0, "{}: corrupt chunks in the store", r.mode);
        ensure!(
            r.mismatched == 0,
            "{}: layers differ from the oracle",
            r.mode
        );
        ensure!(
            r.leftovers.is_empty(),
            "{}: temp files or dirs left: {:?}",
            r.mode,
            r.leftovers
        );
        ensure!(
            r.remote + r.fallback == 2.0 * r.pulls as f64,
            "{}: {} remote + {} fallback prepares for {} two-layer pulls",
            r.mode,
            r.remote,
            r.fallback,
            r.pulls
        );
    }
    // Transient failures that clear up within the retries must not cost the remote path.
    for r in rows.iter().filter(|r| r.mode.contains("first")) {
        ensure!(
            r.fallback == 0.0,
            "{}: a few transient failures made {} layers fall back",
            r.mode,
            r.fallback
        );
    }
    // Occasional faults are retried: most layers must still be assembled remotely.
    for r in rows.iter().filter(|r| r.mode.contains("p=")) {
        ensure!(
            r.remote > r.fallback,
            "{}: {} remote vs {} fallback",
            r.mode,
            r.remote,
            r.fallback
        );
    }
    let all = rows.last().map(|r| (r.remote, r.fallback));
    ensure!(
        all == Some((0.0, 2.0 * PULLS as f64)),
        "with every read failing, every layer must fall back: {all:?}"
    );
    Ok(())
}
