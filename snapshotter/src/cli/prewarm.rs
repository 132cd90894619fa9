//! `chunksnap prefetch --pull` (one image through the daemon's pre-warm API) and
//! `chunksnap prewarm-watch` (the Kubernetes rollout watcher).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chunksnap::config::Config;
use chunksnap::prewarm::api::PrewarmClient;
use chunksnap::prewarm::{Outcome, Request};

/// Asks the daemon to stage `image` through CRI and prints what it cost. Exits 2 when the
/// image was not pulled (not converted, budget, queue), 1 on an error.
pub fn pull(config: &Config, image: &str, allow_full: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let socket = config.prewarm_socket();
    // The daemon bounds the pull itself; leave it room to answer.
    let timeout = Duration::from_secs(config.prewarm_timeout_seconds.saturating_add(60));
    let client = PrewarmClient::new(&socket, timeout);
    let request = Request {
        image: image.to_owned(),
        rollout: String::new(),
        allow_full,
        no_jitter: true,
    };
    let report = rt
        .block_on(client.prewarm(&request))
        .with_context(|| format!("asking the daemon at {} to pre-warm", socket.display()))?;
    match report.outcome {
        Outcome::pulled | Outcome::present => {
            println!("{}", report.summary());
            println!("image id {}", report.image_ref);
            Ok(ExitCode::SUCCESS)
        }
        Outcome::unconverted => {
            eprintln!(
                "chunksnap: {image} has no chunksnap artifact; not pulled (--allow-full pulls whole layers)"
            );
            Ok(ExitCode::from(2))
        }
        Outcome::over_budget | Outcome::queue_full => {
            eprintln!("chunksnap: {}", report.summary());
            Ok(ExitCode::from(2))
        }
        Outcome::error => anyhow::bail!("{}", report.summary()),
    }
}

/// `chunksnap status` lines about pre-warm: the queue and the latest results.
pub fn print_status(rt: &tokio::runtime::Runtime, config: &Config) {
    let client = PrewarmClient::new(&config.prewarm_socket(), Duration::from_secs(2));
    let status = match rt.block_on(client.status()) {
        Ok(status) => status,
        Err(e) => {
            println!("pre-warm: daemon not reachable ({e})");
            return;
        }
    };
    println!(
        "pre-warm: {} running, {} waiting (limits: {} at once, queue {}, {} per rollout)",
        status.running,
        status.waiting,
        status.concurrency,
        status.queue,
        chunksnap::prewarm::human_bytes(status.rollout_budget_bytes)
    );
    for report in &status.recent {
        println!("  {:<11} {}", format!("{:?}", report.outcome), report.summary());
    }
}
