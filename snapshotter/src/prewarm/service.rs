//! The daemon's pre-warmer: every request waits in a bounded queue (refused at once when it is
//! full), sleeps a random jitter (so a thousand nodes reacting to one rollout do not hit the
//! registry in the same second), then runs under a per-node concurrency limit and a per-rollout
//! byte budget. Results feed the metrics and a short list of recent results for
//! `chunksnap status`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::cri::CriImages;
use super::{Outcome, Report, Request, stage};
use crate::metrics::Metrics;
use crate::remote::chunk_remote::ChunkRemote;

/// Rollouts whose spent bytes are remembered (the oldest is forgotten beyond this).
const MAX_ROLLOUTS: usize = 1024;
/// Recent results kept for `chunksnap status`.
const RECENT: usize = 16;
/// Longest image reference accepted (a reference is at most a few hundred bytes).
pub const MAX_IMAGE_LEN: usize = 1024;

/// Limits of the pre-warmer (config keys `prewarm_*`).
#[derive(Debug, Clone)]
pub struct PrewarmOptions {
    /// Pulls running at once on this node.
    pub concurrency: usize,
    /// Requests waiting beyond those running; more are refused (`queue_full`).
    pub queue: usize,
    /// Registry bytes one rollout may cost this node; later images of it are skipped.
    pub rollout_budget_bytes: u64,
    /// Each request first sleeps a random time below this.
    pub jitter: Duration,
    /// Pull images without a chunksnap artifact too (whole layers).
    pub allow_full: bool,
    /// Longest a single pull may take.
    pub timeout: Duration,
}

/// What `GET /v1/status` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub running: usize,
    pub waiting: usize,
    pub concurrency: usize,
    pub queue: usize,
    pub rollout_budget_bytes: u64,
    /// Newest first.
    pub recent: Vec<Report>,
}

/// The daemon's pre-warmer (shared by every API connection).
pub struct Prewarmer {
    remote: Arc<ChunkRemote>,
    cri: CriImages,
    metrics: Metrics,
    options: PrewarmOptions,
    permits: Semaphore,
    /// Requests admitted and not finished (waiting or running).
    admitted: AtomicUsize,
    /// Bytes spent per rollout key, in the order first seen.
    spent: Mutex<(HashMap<String, u64>, VecDeque<String>)>,
    recent: Mutex<VecDeque<Report>>,
    random: RandomState,
}

impl Prewarmer {
    pub fn new(
        remote: Arc<ChunkRemote>,
        cri: CriImages,
        metrics: Metrics,
        options: PrewarmOptions,
    ) -> Self {
        let permits = Semaphore::new(options.concurrency.max(1));
        Self {
            remote,
            cri,
            metrics,
            options,
            permits,
            admitted: AtomicUsize::new(0),
            spent: Mutex::default(),
            recent: Mutex::default(),
            random: RandomState::new(),
        }
    }

    /// Runs one request to its end (or refuses it) and reports how it went.
    pub async fn prewarm(&self, request: &Request) -> Report {
        let report = self.admit(request).await;
        self.metrics.prewarm.record(report.outcome);
        if report.outcome == Outcome::pulled {
            self.metrics.prewarm.bytes.inc_by(report.bytes_fetched);
            self.metrics.prewarm.seconds.observe(report.seconds);
        }
        tracing::info!(
            image = %report.image,
            rollout = %request.rollout,
            outcome = ?report.outcome,
            bytes = report.bytes_fetched,
            seconds = report.seconds,
            detail = %report.detail,
            "pre-warm"
        );
        let mut recent = lock(&self.recent);
        recent.push_front(report.clone());
        recent.truncate(RECENT);
        report
    }

    async fn admit(&self, request: &Request) -> Report {
        let limit = self.options.concurrency.max(1) + self.options.queue;
        let admitted = self
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        if admitted.is_err() {
            return skipped(request, Outcome::queue_full);
        }
        let _admitted = Admitted(&self.admitted);
        let jitter_ms = self.options.jitter.as_millis() as u64;
        if jitter_ms > 0 && !request.no_jitter {
            let wait = self.random.hash_one(&request.image) % jitter_ms;
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return skipped(request, Outcome::error);
        };
        let key = if request.rollout.is_empty() {
            &request.image
        } else {
            &request.rollout
        };
        if self.spent_on(key) >= self.options.rollout_budget_bytes {
            return skipped(request, Outcome::over_budget);
        }
        let before = self.metrics.bytes_fetched.get();
        let run = stage::stage(
            &self.remote,
            &self.cri,
            &request.image,
            self.options.allow_full || request.allow_full,
        );
        let mut report = match tokio::time::timeout(self.options.timeout, run).await {
            Ok(report) => report,
            Err(_) => Report {
                detail: format!("timed out after {:?}", self.options.timeout),
                seconds: self.options.timeout.as_secs_f64(),
                ..skipped(request, Outcome::error)
            },
        };
        report.bytes_fetched = self.metrics.bytes_fetched.get().saturating_sub(before);
        self.spend(key, report.bytes_fetched);
        report
    }

    fn spent_on(&self, key: &str) -> u64 {
        lock(&self.spent).0.get(key).copied().unwrap_or(0)
    }

    fn spend(&self, key: &str, bytes: u64) {
        let mut guard = lock(&self.spent);
        let (spent, order) = &mut *guard;
        if !spent.contains_key(key) {
            order.push_back(key.to_owned());
            if order.len() > MAX_ROLLOUTS
                && let Some(old) = order.pop_front()
            {
                spent.remove(&old);
            }
        }
        *spent.entry(key.to_owned()).or_insert(0) += bytes;
    }

    /// The queue, limits and recent results.
    pub fn status(&self) -> Status {
        let admitted = self.admitted.load(Ordering::Acquire);
        let running = self.options.concurrency.max(1) - self.permits.available_permits();
        Status {
            running,
            waiting: admitted.saturating_sub(running),
            concurrency: self.options.concurrency.max(1),
            queue: self.options.queue,
            rollout_budget_bytes: self.options.rollout_budget_bytes,
            recent: lock(&self.recent).iter().cloned().collect(),
        }
    }
}

/// Releases an admission slot when the request ends, however it ends.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn skipped(request: &Request, outcome: Outcome) -> Report {
    Report {
        image: request.image.clone(),
        outcome,
        bytes_fetched: 0,
        seconds: 0.0,
        image_ref: String::new(),
        detail: String::new(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
