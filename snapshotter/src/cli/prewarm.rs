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
        println!(
            "  {:<11} {}",
            format!("{:?}", report.outcome),
            report.summary()
        );
    }
}

/// `chunksnap prewarm-watch` flags.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// This node's name [default: $NODE_NAME, from the pod's spec.nodeName].
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// Only workloads in this namespace (repeatable) [default: every namespace].
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// Never workloads in this namespace (repeatable).
    #[arg(long = "exclude-namespace", value_name = "NS")]
    exclude_namespaces: Vec<String>,
    /// Only workloads annotated `chunksnap.io/prewarm: "true"` (otherwise every workload
    /// not annotated "false").
    #[arg(long)]
    require_annotation: bool,
    /// Rollouts pre-warmed at once (the daemon also limits its pulls).
    #[arg(long, value_name = "N", default_value_t = 2)]
    concurrency: usize,
}

/// Runs the rollout watcher until SIGTERM/SIGINT.
pub fn watch(config: &Config, args: WatchArgs) -> anyhow::Result<()> {
    use chunksnap::kube::prewarm::{WatchOptions, plan::Filters, run};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("log level {:?}", config.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let node = args
        .node
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .context("name this node with --node or NODE_NAME")?;
    let options = WatchOptions {
        node,
        filters: Filters {
            namespaces: args.namespaces,
            exclude_namespaces: args.exclude_namespaces,
            require_annotation: args.require_annotation,
        },
        concurrency: args.concurrency.max(1),
    };
    // A request waits behind the daemon's queue and jitter, then its pull.
    let timeout = Duration::from_secs(config.prewarm_timeout_seconds.saturating_mul(4));
    let daemon = PrewarmClient::new(&config.prewarm_socket(), timeout);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let token = shutdown.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            token.cancel();
        });
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        run(client, &options, daemon, shutdown)
            .await
            .context("watching rollouts")
    })
}
