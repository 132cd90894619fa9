//! The pre-warmer's bounds and its API, without containerd: the CRI socket does not exist, so
//! a request that gets as far as the pull ends in `error`.

use std::sync::Arc;
use std::time::Duration;

use chunksnap_core::registry::{RegistryClient, RegistryConfig};
use chunksnap_core::store::ChunkStore;
use tokio_util::sync::CancellationToken;

use super::api::{ApiError, PrewarmClient, serve};
use super::cri::CriImages;
use super::service::{PrewarmOptions, Prewarmer};
use super::{Outcome, Report, Request, human_bytes};
use crate::metrics::Metrics;
use crate::remote::chunk_remote::ChunkRemote;

struct Fixture {
    client: PrewarmClient,
    metrics: Metrics,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start(options: PrewarmOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ChunkStore::open(dir.path(), None).unwrap());
    let registry = RegistryClient::new(RegistryConfig {
        docker_config: None,
        ..RegistryConfig::default()
    })
    .unwrap();
    let metrics = Metrics::new();
    let remote = ChunkRemote::new(registry, store, Default::default(), metrics.clone());
    let cri = CriImages::new(&dir.path().join("no-containerd.sock"));
    let prewarmer = Arc::new(Prewarmer::new(remote, cri, metrics.clone(), options));
    let socket = dir.path().join("run/prewarm.sock");
    let listener = crate::server::bind_socket(&socket).unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, prewarmer, shutdown.clone()));
    Fixture {
        client: PrewarmClient::new(&socket, Duration::from_secs(30)),
        metrics,
        shutdown,
        _dir: dir,
    }
}

fn options() -> PrewarmOptions {
    PrewarmOptions {
        concurrency: 1,
        queue: 0,
        rollout_budget_bytes: 1 << 30,
        jitter: Duration::ZERO,
        allow_full: false,
        timeout: Duration::from_secs(10),
    }
}

fn request(image: &str) -> Request {
    Request {
        image: image.into(),
        rollout: "web/app@2".into(),
        allow_full: false,
        no_jitter: false,
    }
}

fn counted(metrics: &Metrics, outcome: &str) -> bool {
    metrics.encode().contains(&format!(
        "chunksnap_prewarm_total{{outcome=\"{outcome}\"}} 1"
    ))
}

#[tokio::test]
async fn a_failed_pull_is_reported_with_its_cause_and_counted() {
    let f = start(options()).await;
    let report = f
        .client
        .prewarm(&request("127.0.0.1:1/app:v2"))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::error);
    assert!(report.detail.contains("CRI"), "{}", report.detail);
    assert!(counted(&f.metrics, "error"));
    let status = f.client.status().await.unwrap();
    assert_eq!((status.running, status.waiting), (0, 0));
    assert_eq!(status.recent.len(), 1);
    assert_eq!(status.recent[0].outcome, Outcome::error);
    f.shutdown.cancel();
}

#[tokio::test]
async fn a_spent_rollout_budget_skips_the_pull() {
    let f = start(PrewarmOptions {
        rollout_budget_bytes: 0,
        ..options()
    })
    .await;
    let report = f
        .client
        .prewarm(&request("127.0.0.1:1/app:v2"))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::over_budget);
    assert!(counted(&f.metrics, "over_budget"));
    f.shutdown.cancel();
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    // One admitted request sleeping in a long jitter fills concurrency 1 + queue 0.
    let f = start(PrewarmOptions {
        jitter: Duration::from_secs(3600),
        ..options()
    })
    .await;
    let first = tokio::spawn({
        let client = f.client.clone();
        async move { client.prewarm(&request("127.0.0.1:1/slow:v2")).await }
    });
    for _ in 0..500 {
        if f.client.status().await.unwrap().waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = f
        .client
        .prewarm(&request("127.0.0.1:1/app:v2"))
        .await
        .unwrap();
    assert_eq!(refused.outcome, Outcome::queue_full);
    assert!(counted(&f.metrics, "queue_full"));
    first.abort();
    f.shutdown.cancel();
}

#[tokio::test]
async fn bad_requests_are_refused() {
    let f = start(options()).await;
    let long = "r/".to_owned() + &"a".repeat(2000);
    match f.client.prewarm(&request(&long)).await {
        Err(ApiError::Status { status, .. }) => assert_eq!(status, 400),
        other => panic!("{other:?}"),
    }
    match f.client.prewarm(&request("")).await {
        Err(ApiError::Status { status, .. }) => assert_eq!(status, 400),
        other => panic!("{other:?}"),
    }
    f.shutdown.cancel();
}

#[test]
fn summaries_read_like_events() {
    let report = Report {
        image: "127.0.0.1:5000/team/app:v2".into(),
        outcome: Outcome::pulled,
        bytes_fetched: 1_100_000,
        seconds: 0.43,
        image_ref: String::new(),
        detail: String::new(),
    };
    assert_eq!(report.summary(), "Prewarmed app:v2: 1.1 MB fetched, 0.4 s");
    assert_eq!(human_bytes(999), "999 B");
    assert_eq!(human_bytes(2_500_000_000), "2.5 GB");
}
