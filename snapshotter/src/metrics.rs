//! Prometheus metrics and the `/metrics` + `/healthz` HTTP endpoint (hyper 1, HTTP/1.1).
//!
//! Labels are bounded: only `outcome` on prepares (remote | fallback | error), nothing per
//! image or layer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `chunksnap_prepares_total{outcome}`: remote-capable Prepares by outcome.
pub const PREPARES_TOTAL: &str = "chunksnap_prepares";
/// `chunksnap_chunks_fetched_total`: chunks read from registries.
pub const CHUNKS_FETCHED_TOTAL: &str = "chunksnap_chunks_fetched";
/// `chunksnap_bytes_fetched_total`: bytes read from registries (stored size).
pub const BYTES_FETCHED_TOTAL: &str = "chunksnap_bytes_fetched";
/// `chunksnap_chunks_reused_total`: chunks already in the node store.
pub const CHUNKS_REUSED_TOTAL: &str = "chunksnap_chunks_reused";
/// `chunksnap_delta_chunks_total`: chunks rebuilt from a delta against chunks already stored.
pub const DELTA_CHUNKS_TOTAL: &str = "chunksnap_delta_chunks";
/// `chunksnap_delta_fallbacks_total`: deltas that could not be used (the chunk was fetched).
pub const DELTA_FALLBACKS_TOTAL: &str = "chunksnap_delta_fallbacks";
/// `chunksnap_index_deltas_total`: layer indexes rebuilt from a delta against one on the node.
pub const INDEX_DELTAS_TOTAL: &str = "chunksnap_index_deltas";
/// `chunksnap_early_delta_packs_total`: delta packs read whole while their layer's index delta
/// was on the wire.
pub const EARLY_DELTA_PACKS_TOTAL: &str = "chunksnap_early_delta_packs";
/// `chunksnap_seeded_files_total`: files hardlinked from earlier layers instead of written.
pub const SEEDED_FILES_TOTAL: &str = "chunksnap_seeded_files";
/// `chunksnap_seeded_bytes_total`: content bytes of those files.
pub const SEEDED_BYTES_TOTAL: &str = "chunksnap_seeded_bytes";
/// `chunksnap_seeds_rejected_total`: planned seed files that failed their check (written instead).
pub const SEEDS_REJECTED_TOTAL: &str = "chunksnap_seeds_rejected";
/// `chunksnap_verify_failures_total`: assembled layers that failed verification (fell back).
pub const VERIFY_FAILURES_TOTAL: &str = "chunksnap_verify_failures";
/// `chunksnap_prepare_seconds`: duration of remote-capable Prepares.
pub const PREPARE_SECONDS: &str = "chunksnap_prepare_seconds";
/// `chunksnap_store_bytes`: bytes held by the chunk store.
pub const STORE_BYTES: &str = "chunksnap_store_bytes";
/// `chunksnap_removals_in_progress`: snapshot removals not finished yet (their directory,
/// `snapshots/rm-<id>`, may still exist).
pub const REMOVALS_IN_PROGRESS: &str = "chunksnap_removals_in_progress";

/// The `outcome` label of [`PREPARES_TOTAL`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: Outcome,
}

/// Prepare outcomes (a closed set, so the label stays bounded).
#[derive(
    Debug, Clone, Copy, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue,
)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    remote,
    fallback,
    error,
}

/// All metrics of the daemon; cheap to clone (handles share state).
#[derive(Clone)]
pub struct Metrics {
    pub prepares: Family<OutcomeLabel, Counter>,
    pub chunks_fetched: Counter,
    pub bytes_fetched: Counter,
    pub chunks_reused: Counter,
    pub delta_chunks: Counter,
    pub delta_fallbacks: Counter,
    pub index_deltas: Counter,
    pub early_delta_packs: Counter,
    pub seeded_files: Counter,
    pub seeded_bytes: Counter,
    pub seeds_rejected: Counter,
    pub verify_failures: Counter,
    pub prepare_seconds: Histogram,
    pub store_bytes: Gauge,
    pub removals_in_progress: Gauge,
    /// `chunksnap_prewarm_*` (see [`crate::prewarm::metrics`]).
    pub prewarm: crate::prewarm::metrics::PrewarmMetrics,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let prepares = Family::<OutcomeLabel, Counter>::default();
        let chunks_fetched = Counter::default();
        let bytes_fetched = Counter::default();
        let chunks_reused = Counter::default();
        let delta_chunks = Counter::default();
        let delta_fallbacks = Counter::default();
        let index_deltas = Counter::default();
        let early_delta_packs = Counter::default();
        let seeded_files = Counter::default();
        let seeded_bytes = Counter::default();
        let seeds_rejected = Counter::default();
        let verify_failures = Counter::default();
        // 10 ms .. ~80 s.
        let prepare_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let store_bytes = Gauge::default();
        let removals_in_progress = Gauge::default();
        r.register(
            PREPARES_TOTAL,
            "Remote-capable prepares by outcome",
            prepares.clone(),
        );
        r.register(
            CHUNKS_FETCHED_TOTAL,
            "Chunks fetched from registries",
            chunks_fetched.clone(),
        );
        r.register(
            BYTES_FETCHED_TOTAL,
            "Bytes fetched from registries",
            bytes_fetched.clone(),
        );
        r.register(
            CHUNKS_REUSED_TOTAL,
            "Chunks found in the node store",
            chunks_reused.clone(),
        );
        r.register(
            DELTA_CHUNKS_TOTAL,
            "Chunks rebuilt from a delta frame against chunks already in the node store",
            delta_chunks.clone(),
        );
        r.register(
            DELTA_FALLBACKS_TOTAL,
            "Delta frames that could not be used, so the full chunk was fetched",
            delta_fallbacks.clone(),
        );
        r.register(
            INDEX_DELTAS_TOTAL,
            "Layer indexes rebuilt from a delta against an index already on the node",
            index_deltas.clone(),
        );
        r.register(
            EARLY_DELTA_PACKS_TOTAL,
            "Delta packs read whole while their layer's index delta was on the wire",
            early_delta_packs.clone(),
        );
        r.register(
            SEEDED_FILES_TOTAL,
            "Files hardlinked from earlier layers on the node instead of written",
            seeded_files.clone(),
        );
        r.register(
            SEEDED_BYTES_TOTAL,
            "Content bytes of files hardlinked from earlier layers",
            seeded_bytes.clone(),
        );
        r.register(
            SEEDS_REJECTED_TOTAL,
            "Planned seed files that failed their check and were written from chunks",
            seeds_rejected.clone(),
        );
        r.register(
            VERIFY_FAILURES_TOTAL,
            "Remotely assembled layers that were not the image's own layer (diffID), so fell back",
            verify_failures.clone(),
        );
        r.register(
            PREPARE_SECONDS,
            "Duration of remote-capable prepares",
            prepare_seconds.clone(),
        );
        r.register(
            STORE_BYTES,
            "Bytes held by the chunk store",
            store_bytes.clone(),
        );
        r.register(
            REMOVALS_IN_PROGRESS,
            "Snapshot removals not finished yet (committing, or deleting the directory)",
            removals_in_progress.clone(),
        );
        // Every outcome is exported from the start (as 0), so rates work before the first event.
        for outcome in [Outcome::remote, Outcome::fallback, Outcome::error] {
            let _ = prepares.get_or_create(&OutcomeLabel { outcome });
        }
        let prewarm = crate::prewarm::metrics::PrewarmMetrics::register(&mut r);
        Self {
            prepares,
            chunks_fetched,
            bytes_fetched,
            chunks_reused,
            delta_chunks,
            delta_fallbacks,
            index_deltas,
            early_delta_packs,
            seeded_files,
            seeded_bytes,
            seeds_rejected,
            verify_failures,
            prepare_seconds,
            store_bytes,
            removals_in_progress,
            prewarm,
            registry: Arc::new(r),
        }
    }

    /// Counts one prepare with `outcome`.
    pub fn prepare(&self, outcome: Outcome) {
        self.prepares.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` is cancelled.
pub async fn serve_http(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(cause = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(route(&req, &metrics)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, cause = %e, "metrics connection ended");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn route(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
