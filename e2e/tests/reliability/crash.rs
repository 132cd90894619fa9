//! Crashes: `chunksnap serve` is SIGKILLed at random moments while containerd prepares layers,
//! then restarted. The next pull must complete (remote or fallback) with layers equal to
//! containerd's own unpacking, `chunksnap fsck` must find no damage, and no half-made snapshot
//! directory or temp chunk file may survive the restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use chunksnap_e2e::faults::{Fault, FaultPlan, Target, When, next_random};
use chunksnap_e2e::util::Poller;
use chunksnap_e2e::Cri;

use super::common::{
    FaultyNode, convert, fsck_corrupt, leftovers, oracle, oracle_differences, unique_image,
};

/// Small requests, two at a time, each delayed by the fault proxy: a pull takes a second or
/// two, so kills land in every phase (artifact lookup, fetch, assembly, commit).
const CONFIG: &str = "fetch_max_request_bytes = 1048576\nfetch_parallelism = 2\n";
const ROUNDS: u64 = 12;

/// Pulls `image`, retrying while containerd has not yet reconnected to the restarted plugin.
async fn pull_after_restart(cri: &Cri, image: &str) -> Result<()> {
    let mut poll = Poller::new("pull after chunksnap restart", Duration::from_secs(60));
    loop {
        match cri.pull_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_unavailable(&e) => poll.tick().await?,
            Err(e) => return Err(e),
        }
    }
}

fn is_unavailable(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("connection refused") || s.contains("Unavailable") || s.contains("transport")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_prepares_recovers() -> Result<()> {
    let mut node = FaultyNode::start(CONFIG).await?;
    let oracle = oracle(&node.env).await?;
    let cri = node.env.containerd.cri().await?;
    let mut rng = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("crash test seed {rng}");
    let slow = FaultPlan {
        fault: Fault::Delay(Duration::from_millis(150)),
        target: Target::RangeBlobGets,
        when: When::FirstN(u64::MAX),
    };
    let (mut first_ok, mut first_failed) = (0, 0);
    for round in 0..ROUNDS {
        let img = unique_image(&node.env, "crash", 100 + round, 3, 600 << 10).await?;
        convert(&img.reference).await?;
        node.faults.set_plan(Some(slow));
        let delay = Duration::from_millis(next_random(&mut rng) % 2500);
        let (c, r) = (cri.clone(), img.reference.clone());
        let pull = tokio::spawn(async move { c.pull_image(&r).await });
        tokio::time::sleep(delay).await;
        node.chunksnap.kill()?;
        match pull.await? {
            Ok(_) => first_ok += 1,
            Err(_) => first_failed += 1,
        }
        node.chunksnap.start().await?;
        let left = leftovers(node.chunksnap.root());
        ensure!(
            left.is_empty(),
            "round {round} (kill after {delay:?}): leftovers after restart: {left:?}"
        );
        pull_after_restart(&cri, &img.reference).await?;
        node.faults.set_plan(None);
        ensure!(
            fsck_corrupt(&node.chunksnap)? == 0,
            "round {round}: fsck found corrupt chunks"
        );
        ensure!(
            oracle_differences(&node.env.containerd, &oracle, &img).await? == 0,
            "round {round} (kill after {delay:?}): layers differ from the oracle"
        );
    }
    let (remote, fallback) = (node.prepares("remote").await?, node.prepares("fallback").await?);
    eprintln!(
        "crash test: {ROUNDS} kills; pulls interrupted {first_failed}, finished before the kill \
         {first_ok}; after the last restart: {remote} remote, {fallback} fallback prepares"
    );
    ensure!(first_failed > 0, "no kill landed during a pull");
    Ok(())
}
