//! Pre-warm: staging an image on this node through containerd's CRI ImageService before a pod
//! asks for it, so containerd records the image, chunksnap assembles its layers from the
//! missing chunks only, and the kubelet's later `PullImage` finds it present.
//!
//! - [`cri`]: the CRI image client (pull with credentials, image status);
//! - [`stage`]: one pre-warm (present? converted? pull), shared by `chunksnap prefetch --pull`
//!   and the daemon;
//! - [`service`]: the daemon's bounded pre-warmer (queue, concurrency, per-rollout byte budget,
//!   jitter, metrics, recent results);
//! - [`api`]: its small HTTP/1.1 API on a unix socket next to the gRPC socket, and the client
//!   the Kubernetes watcher ([`crate::kube::prewarm`]) and `chunksnap status` use;
//! - the `chunksnap_prewarm_*` metrics ([`metrics`]).

pub mod api;
pub mod cri;
pub mod metrics;
pub mod service;
pub mod stage;

use serde::{Deserialize, Serialize};

/// How one pre-warm ended (a closed set: the `outcome` metric label).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    prometheus_client::encoding::EncodeLabelValue,
)]
#[serde(rename_all = "snake_case")]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Pulled through CRI now.
    pulled,
    /// containerd already had the image; nothing was pulled.
    present,
    /// The image has no chunksnap artifact and full-layer pre-pulls are not allowed.
    unconverted,
    /// The rollout's byte budget on this node is spent.
    over_budget,
    /// The queue was full; the request was refused at once.
    queue_full,
    /// The pull or a lookup failed (see the `error` text).
    error,
}

impl Outcome {
    /// Every outcome, for exporting each counter from the start.
    pub const ALL: [Outcome; 6] = [
        Outcome::pulled,
        Outcome::present,
        Outcome::unconverted,
        Outcome::over_budget,
        Outcome::queue_full,
        Outcome::error,
    ];
}

/// A pre-warm request (the API's JSON body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Image reference, as a pod spec names it.
    pub image: String,
    /// Key the byte budget is kept under (`namespace/workload@revision`); empty: the image.
    #[serde(default)]
    pub rollout: String,
    /// Pull it even without a chunksnap artifact (whole layers), whatever the daemon's
    /// `prewarm_allow_full` says.
    #[serde(default)]
    pub allow_full: bool,
    /// Start at once (an operator's `chunksnap prefetch --pull`, not a fleet reacting).
    #[serde(default)]
    pub no_jitter: bool,
}

/// The result of one pre-warm (the API's JSON answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub image: String,
    pub outcome: Outcome,
    /// Registry bytes the daemon fetched while this pull ran (other pulls running at the same
    /// time count too: an upper bound).
    pub bytes_fetched: u64,
    pub seconds: f64,
    /// containerd's image id after a pull.
    #[serde(default)]
    pub image_ref: String,
    /// Why it failed or was skipped (no credentials ever appear here).
    #[serde(default)]
    pub detail: String,
}

impl Report {
    /// The one-line summary used in events and CLI output
    /// (`Prewarmed app:v2: 1.1 MB fetched, 0.4 s`).
    pub fn summary(&self) -> String {
        let image = short_image(&self.image);
        match self.outcome {
            Outcome::pulled => format!(
                "Prewarmed {image}: {} fetched, {:.1} s",
                human_bytes(self.bytes_fetched),
                self.seconds
            ),
            Outcome::present => format!("{image} already present"),
            Outcome::unconverted => format!("{image} not pre-warmed: not converted"),
            Outcome::over_budget => format!("{image} not pre-warmed: rollout byte budget spent"),
            Outcome::queue_full => format!("{image} not pre-warmed: pre-warm queue full"),
            Outcome::error => format!("{image} not pre-warmed: {}", self.detail),
        }
    }
}

/// `registry.example/team/app:v2` → `app:v2` (what a human reads in an event).
fn short_image(image: &str) -> &str {
    image.rsplit('/').next().unwrap_or(image)
}

/// Decimal units, one decimal (`1.1 MB`), as `kubectl` users read sizes.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests;
