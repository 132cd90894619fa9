//! A slow-loris registry cannot stall the node: while one registry host trickles chunksnap's
//! pack reads one byte at a time (slower than any useful rate, faster than the between-reads
//! timeout), an image from a second, healthy host is pulled through CRI in about its solo
//! time, and the slow image ends in a fallback to containerd's own pull instead of wedging.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::faults::{Fault, FaultPlan, Target, When};

use super::common::{FaultyNode, convert, unique_image};

/// Range requests end 10 s + their size at 1 MiB/s after they start; the between-reads
/// timeout (30 s) never fires on a trickle of one byte per 200 ms.
const CONFIG: &str = "registry_timeout_seconds = 30\nfetch_max_request_bytes = 1048576\n\
                      fetch_request_floor_seconds = 10\nfetch_min_rate_bytes = 1048576\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_loris_registry_does_not_stall_other_pulls() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = FaultyNode::start(CONFIG).await?;
    let slow_host = node.env.registry.host();
    let on_healthy = |reference: &str| reference.replacen(&slow_host, &node.direct_host, 1);
    // Three images of the same shape: two for the healthy host (solo, then beside the slow
    // one: a pulled image would not be pulled again), one for the slow host.
    let mut images = Vec::new();
    for seed in 1..=3 {
        let img = unique_image(&node.env, "slowloris", seed, 4, 512 << 10).await?;
        convert(&img.reference).await?;
        images.push(img);
    }
    let (solo, beside, slow) = (
        on_healthy(&images[0].reference),
        on_healthy(&images[1].reference),
        images[2].reference.clone(),
    );

    let cri = node.env.containerd.cri().await?;
    let started = Instant::now();
    cri.pull_image(&solo).await?;
    let solo_time = started.elapsed();
    let remote_solo = node.prepares("remote").await?;
    ensure!(
        remote_solo >= 2.0,
        "the healthy image was not assembled from chunks"
    );

    node.faults.set_plan(Some(FaultPlan {
        fault: Fault::Trickle(Duration::from_millis(200)),
        target: Target::RangeBlobGets,
        when: When::FirstN(u64::MAX),
    }));
    let slow_cri = node.env.containerd.cri().await?;
    let slow_started = Instant::now();
    let slow_pull = tokio::spawn(async move { slow_cri.pull_image(&slow).await });
    // Once the slow host holds requests (and with them permits and chunk claims) ...
    let waited = Instant::now();
    while node.faults.selected() == 0 {
        ensure!(
            waited.elapsed() < Duration::from_secs(120),
            "the slow image's pack reads never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... the healthy host's image comes in about its solo time.
    let started = Instant::now();
    cri.pull_image(&beside).await?;
    let beside_time = started.elapsed();
    let bound = solo_time * 3 + Duration::from_secs(5);
    eprintln!(
        "healthy pull: {:.1} s solo, {:.1} s beside a slow-loris registry (bound {:.1} s)",
        solo_time.as_secs_f64(),
        beside_time.as_secs_f64(),
        bound.as_secs_f64()
    );
    ensure!(
        beside_time <= bound,
        "the healthy pull took {beside_time:?} beside a slow registry, {solo_time:?} alone"
    );
    ensure!(
        node.prepares("remote").await? >= remote_solo + 2.0,
        "the healthy image beside the slow one was not assembled from chunks"
    );

    // The slow image ends: its pack reads hit their deadline and containerd pulls it itself.
    let slow_result = tokio::time::timeout(Duration::from_secs(300), slow_pull)
        .await
        .context("the slow-loris image's pull wedged")??;
    let slow_time = slow_started.elapsed();
    let trickled = node.faults.injected();
    node.faults.set_plan(None);
    slow_result.context("the slow-loris image's pull failed")?;
    let fallback = node.prepares("fallback").await?;
    eprintln!(
        "slow-loris pull: done in {:.1} s, {fallback} fallback prepares, {} trickled reads",
        slow_time.as_secs_f64(),
        trickled
    );
    ensure!(trickled > 0, "no pack read was trickled");
    ensure!(fallback >= 1.0, "the slow image's layers did not fall back");
    ensure!(
        node.log().contains("no complete answer within"),
        "no request deadline in the log {}",
        node.chunksnap.log_path().display()
    );
    Ok(())
}
