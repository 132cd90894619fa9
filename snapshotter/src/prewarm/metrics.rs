//! `chunksnap_prewarm_total{outcome}`, `chunksnap_prewarm_bytes_total`,
//! `chunksnap_prewarm_seconds`: registered with the daemon's other metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Outcome;

/// The `outcome` label of `chunksnap_prewarm_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrewarmLabel {
    pub outcome: Outcome,
}

/// Pre-warm metrics (handles share state; cheap to clone).
#[derive(Clone)]
pub struct PrewarmMetrics {
    pub total: Family<PrewarmLabel, Counter>,
    pub bytes: Counter,
    pub seconds: Histogram,
}

impl PrewarmMetrics {
    /// Creates the metrics and registers them in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            total: Family::default(),
            bytes: Counter::default(),
            // 50 ms .. ~27 min.
            seconds: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
        };
        r.register(
            "chunksnap_prewarm",
            "Pre-warm requests by outcome",
            m.total.clone(),
        );
        r.register(
            "chunksnap_prewarm_bytes",
            "Registry bytes fetched while pre-warm pulls ran",
            m.bytes.clone(),
        );
        r.register(
            "chunksnap_prewarm_seconds",
            "Duration of pre-warm pulls (queueing and jitter excluded)",
            m.seconds.clone(),
        );
        for outcome in Outcome::ALL {
            let _ = m.total.get_or_create(&PrewarmLabel { outcome });
        }
        m
    }

    /// Counts one finished pre-warm.
    pub fn record(&self, outcome: Outcome) {
        self.total.get_or_create(&PrewarmLabel { outcome }).inc();
    }
}
