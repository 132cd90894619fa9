//! `chunksnap serve`: the daemon.
//!
//! Signals: SIGTERM (sent by systemd/kubelet on stop) and SIGINT (Ctrl-C) both mean "shut
//! down cleanly": stop accepting calls, let in-flight calls finish, close the database, and
//! remove the socket. Nothing is lost on a hard kill either: state is the DB plus directories,
//! and leftovers are removed by the next `Cleanup`.

use std::sync::Arc;

use anyhow::Context;
use chunksnap::config::Config;
use chunksnap::remote::layer_verify::VerifyPolicy;

use chunksnap::metrics::{self, Metrics};
use chunksnap::prewarm::{self, cri::CriImages, service::Prewarmer};
use chunksnap::remote::chunk_remote::{ChunkRemote, ChunkRemoteLayers, NodeOptions};
use chunksnap::server;
use chunksnap::snapshots::local::Local;
use chunksnap::snapshots::service::Service;
use chunksnap::snapshots::snapshotter::Snapshotter;
use chunksnap_core::registry::RegistryClient;
use chunksnap_core::store::ChunkStore;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("log level {:?}", config.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    chunksnap_core::malloc::tune();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let root = config.root.clone();
    let local = tokio::task::spawn_blocking(move || Local::open(&root))
        .await?
        .with_context(|| format!("opening state root {}", config.root.display()))?;
    let metrics = Metrics::new();
    let chunks = config.chunks_dir();
    let budget = config.store_budget_bytes;
    let store = tokio::task::spawn_blocking(move || ChunkStore::open(&chunks, Some(budget)))
        .await?
        .with_context(|| format!("opening chunk store {}", config.chunks_dir().display()))?;
    let client = RegistryClient::new(config.registry().context("registry settings")?)
        .context("registry client")?;
    let verify = VerifyPolicy::new(&config.insecure_skip_layer_verification);
    verify.log_start();
    let node = NodeOptions {
        mirrors: config.mirrors.clone(),
        index_dir: Some(config.index_dir()),
        verify,
    };
    let remote = ChunkRemote::with_options(
        client,
        Arc::new(store),
        config.fetch(),
        metrics.clone(),
        node,
    );
    let prewarmer = Arc::new(Prewarmer::new(
        remote.clone(),
        CriImages::new(&config.cri_address),
        metrics.clone(),
        config.prewarm(),
    ));
    let snapshotter = Snapshotter::new(
        Arc::new(local),
        Arc::new(ChunkRemoteLayers(remote)),
        metrics.clone(),
    );
    let service = Service::new(snapshotter);
    let listener = server::bind_socket(&config.address)
        .with_context(|| format!("binding {}", config.address.display()))?;
    let prewarm_socket = config.prewarm_socket();
    let prewarm_listener = server::bind_socket(&prewarm_socket)
        .with_context(|| format!("binding {}", prewarm_socket.display()))?;
    let http = metrics::bind(config.metrics_address)
        .await
        .with_context(|| format!("binding metrics address {}", config.metrics_address))?;

    let shutdown = CancellationToken::new();
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    tokio::spawn(metrics::serve_http(http, metrics, shutdown.clone()));
    tokio::spawn(prewarm::api::serve(
        prewarm_listener,
        prewarmer,
        shutdown.clone(),
    ));
    tracing::info!(
        socket = %config.address.display(),
        root = %config.root.display(),
        metrics = %config.metrics_address,
        "chunksnap serving"
    );
    let result = server::serve(listener, service, shutdown.clone()).await;
    shutdown.cancel();
    for socket in [&config.address, &prewarm_socket] {
        if let Err(e) = std::fs::remove_file(socket) {
            tracing::warn!(cause = %e, socket = %socket.display(), "could not remove socket");
        }
    }
    result.context("gRPC server")?;
    tracing::info!("stopped");
    Ok(())
}
