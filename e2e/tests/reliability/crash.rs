//! Crashes: `chunksnap serve` is SIGKILLed at random moments while containerd prepares layers,
//! then restarted. The next pull must complete (remote or fallback) with layers equal to
//! containerd's own unpacking, `chunksnap fsck` must find no damage, and no half-made snapshot
//! directory or temp chunk file may survive the restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use chunksnap_e2e::faults::{Fault, FaultPlan, Target, When};
use chunksnap_e2e::util::Poller;
use chunksnap_e2e::{ContainerdVersion, Cri};
use chunksnap_testkit::Rng;

use super::common::{
    FaultyNode, convert, fsck_corrupt, lasting_leftovers, oracle, oracle_differences, unique_image,
};

/// Small requests, two at a time, each delayed by the fault proxy: a pull takes a second or
/// two, so kills land in every phase (artifact lookup, fetch, assembly, commit).
const CONFIG: &str = "fetch_max_request_bytes = 1048576\nfetch_parallelism = 2\n";
const ROUNDS: u64 = 12;
const CONTAINERD_ROUNDS: u64 = 4;

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
    let s = format!("{e:#}").to_lowercase();
    s.contains("connection refused") || s.contains("unavailable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_prepares_recovers() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    chunksnap_killed_during_pulls(ContainerdVersion::from_env()?).await
}

/// The chunksnap kill rounds on containerd `version`. Also run by the containerd matrix.
pub async fn chunksnap_killed_during_pulls(version: ContainerdVersion) -> Result<()> {
    let mut node = FaultyNode::start_on(version, CONFIG).await?;
    let oracle = oracle(&node.env).await?;
    let cri = node.env.containerd.cri().await?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("crash test seed {seed}");
    let mut rng = Rng::new(seed);
    let slow = FaultPlan {
        fault: Fault::Delay(Duration::from_millis(400)),
        target: Target::RangeBlobGets,
        when: When::FirstN(u64::MAX),
    };
    let (mut first_ok, mut first_failed) = (0, 0);
    let (mut remote, mut fallback) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let img = unique_image(&node.env, "crash", 100 + round, 3, 600 << 10).await?;
        convert(&img.reference).await?;
        node.faults.set_plan(Some(slow));
        let delay = Duration::from_millis(rng.next_u64() % 1000);
        let (c, r) = (cri.clone(), img.reference.clone());
        let pull = tokio::spawn(async move { c.pull_image(&r).await });
        tokio::time::sleep(delay).await;
        node.chunksnap.kill()?;
        match pull.await? {
            Ok(_) => first_ok += 1,
            Err(_) => first_failed += 1,
        }
        node.chunksnap.start().await?;
        let left = lasting_leftovers(&node.chunksnap).await;
        ensure!(
            left.is_empty(),
            "round {round} (kill after {delay:?}): leftovers after restart: {left:?}"
        );
        pull_after_restart(&cri, &img.reference).await?;
        node.faults.set_plan(None);
        // Counters restart with the daemon: these are the prepares of the pull after the kill.
        remote += node.prepares("remote").await?;
        fallback += node.prepares("fallback").await?;
        ensure!(
            fsck_corrupt(&node.chunksnap)? == 0,
            "round {round}: fsck found corrupt chunks"
        );
        ensure!(
            oracle_differences(&node.env.containerd, &oracle, &img).await? == 0,
            "round {round} (kill after {delay:?}): layers differ from the oracle"
        );
    }
    eprintln!(
        "crash test: {ROUNDS} kills; pulls interrupted {first_failed}, finished before the kill \
         {first_ok}; pulls after the restarts: {remote} remote, {fallback} fallback prepares"
    );
    ensure!(first_failed > 0, "no kill landed during a pull");
    Ok(())
}

/// containerd itself killed mid-pull and restarted on the same root: the next pull completes
/// with correct layers and chunksnap's state stays clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containerd_killed_during_pull_recovers() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    containerd_killed_during_pulls(ContainerdVersion::from_env()?).await
}

/// The containerd kill rounds on containerd `version`. Also run by the containerd matrix.
pub async fn containerd_killed_during_pulls(version: ContainerdVersion) -> Result<()> {
    let mut node = FaultyNode::start_on(version, CONFIG).await?;
    let oracle = oracle(&node.env).await?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("containerd crash test seed {seed}");
    let mut rng = Rng::new(seed);
    node.faults.set_plan(Some(FaultPlan {
        fault: Fault::Delay(Duration::from_millis(400)),
        target: Target::RangeBlobGets,
        when: When::FirstN(u64::MAX),
    }));
    let mut interrupted = 0;
    for round in 0..CONTAINERD_ROUNDS {
        let img = unique_image(&node.env, "ctdcrash", 200 + round, 3, 600 << 10).await?;
        convert(&img.reference).await?;
        let cri = node.env.containerd.cri().await?;
        let r = img.reference.clone();
        let pull = tokio::spawn(async move { cri.pull_image(&r).await });
        let delay = Duration::from_millis(rng.next_u64() % 1000);
        tokio::time::sleep(delay).await;
        node.env.containerd.restart(true).await?;
        if pull.await?.is_err() {
            interrupted += 1;
        }
        let cri = node.env.containerd.cri().await?;
        cri.pull_image(&img.reference).await?;
        ensure!(
            oracle_differences(&node.env.containerd, &oracle, &img).await? == 0,
            "round {round} (kill after {delay:?}): layers differ from the oracle"
        );
        let left = lasting_leftovers(&node.chunksnap).await;
        ensure!(left.is_empty(), "round {round}: leftovers {left:?}");
        ensure!(
            fsck_corrupt(&node.chunksnap)? == 0,
            "round {round}: fsck found corrupt chunks"
        );
    }
    node.faults.set_plan(None);
    eprintln!("containerd crash test: {CONTAINERD_ROUNDS} kills, {interrupted} pulls interrupted");
    ensure!(interrupted > 0, "no kill landed during a pull");
    Ok(())
}
