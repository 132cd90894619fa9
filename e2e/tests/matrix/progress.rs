//! Long remote prepares vs CRI's `image_pull_progress_timeout` (containerd 1.7+). containerd
//! cancels a pull only when registry requests *it* makes are open and read nothing for that
//! long; while chunksnap assembles a layer containerd has no request open, so a prepare far
//! longer than the timeout must complete. A pull the client abandons (what the timeout does
//! when it fires) cancels the prepare, which must leave nothing behind.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use chunksnap_e2e::ContainerdVersion;
use chunksnap_e2e::faults::{Fault, FaultPlan, Target, When};
use chunksnap_e2e::util::Poller;

use crate::reliability::common::{
    FaultyNode, convert, fsck_corrupt, lasting_leftovers, oracle, oracle_differences, unique_image,
};

/// One small request at a time: every Range read pays the link's delay.
const CONFIG: &str = "fetch_max_request_bytes = 262144\nfetch_parallelism = 1\n";
const TIMEOUT: Duration = Duration::from_secs(1);
/// The slow link: each of chunksnap's Range reads waits this long.
const DELAY: Duration = Duration::from_millis(500);

pub async fn long_prepares_outlast_the_progress_timeout(version: ContainerdVersion) -> Result<()> {
    let node = FaultyNode::start_with_progress_timeout(version, CONFIG, TIMEOUT).await?;
    let oracle = oracle(&node.env).await?;
    let cri = node.env.containerd.cri().await?;
    // Two layers of 4 MiB incompressible files: a few dozen delayed reads each.
    let img = unique_image(&node.env, "progress", 300, 4, 1 << 20).await?;
    convert(&img.reference).await?;
    node.faults.set_plan(Some(FaultPlan {
        fault: Fault::Delay(DELAY),
        target: Target::RangeBlobGets,
        when: When::FirstN(u64::MAX),
    }));
    let started = Instant::now();
    cri.pull_image(&img.reference).await?;
    let took = started.elapsed();
    let remote = node.prepares("remote").await?;
    eprintln!(
        "containerd {version}: pull with progress timeout {TIMEOUT:?} took {took:?}, \
         {remote} remote prepares"
    );
    ensure!(
        took > TIMEOUT * 4,
        "the pull took only {took:?}: the link was not slow enough to prove anything"
    );
    ensure!(
        remote == img.layers.len() as f64,
        "{remote} remote prepares"
    );
    ensure!(
        node.prepares("fallback").await? == 0.0,
        "unexpected fallback"
    );
    let log = std::fs::read_to_string(node.env.containerd.log_path())?;
    ensure!(
        !log.contains("because of no progress"),
        "containerd cancelled a pull for lack of progress"
    );
    ensure!(
        oracle_differences(&node.env.containerd, &oracle, &img).await? == 0,
        "layers differ from the oracle"
    );

    // Cancelled mid-assembly: the abandoned prepare cleans up; the next pull is whole.
    let img = unique_image(&node.env, "progress", 301, 4, 1 << 20).await?;
    convert(&img.reference).await?;
    node.env.registry.reset_counters();
    let (c, r) = (cri.clone(), img.reference.clone());
    let pull = tokio::spawn(async move { c.pull_image(&r).await });
    let mut poll = Poller::new("chunksnap's first Range read", Duration::from_secs(60));
    while !node
        .env
        .registry
        .requests()
        .iter()
        .any(|r| r.is_blob_get() && r.range.is_some())
    {
        poll.tick().await?;
    }
    pull.abort();
    let cancelled = pull.await.is_err();
    let left = lasting_leftovers(&node.chunksnap).await;
    ensure!(
        left.is_empty(),
        "leftovers after a cancelled pull: {left:?}"
    );
    node.faults.set_plan(None);
    cri.pull_image(&img.reference).await?;
    eprintln!(
        "containerd {version}: pull cancelled mid-assembly ({cancelled}); prepares since start: \
         {} remote, {} error",
        node.prepares("remote").await?,
        node.prepares("error").await?
    );
    ensure!(
        fsck_corrupt(&node.chunksnap)? == 0,
        "fsck found corrupt chunks"
    );
    ensure!(
        oracle_differences(&node.env.containerd, &oracle, &img).await? == 0,
        "layers differ from the oracle after the cancelled pull"
    );
    Ok(())
}
