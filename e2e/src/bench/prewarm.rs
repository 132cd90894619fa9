//! The pre-warm figure: time to running of v2 on a node that staged it before its pod arrived
//! (`chunksnap prefetch --pull`, the daemon's pre-warm path the rollout watcher uses when a new
//! ReplicaSet appears) vs the plain pull of the same run. Target: ≤ 0.1 × plain; what is left
//! is the manifest round trip and starting the container.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, ensure};
use serde::Serialize;

use crate::bench::case::{Case, Mode};
use crate::bench::profile::Network;
use crate::chunksnap::Chunksnap;
use crate::oci::BuiltImage;
use crate::{Containerd, ContainerdConfig, Snapshotter};

/// One pre-warmed run.
#[derive(Debug, Clone, Serialize)]
pub struct PrewarmRun {
    /// The pre-warm of v2 (before the pod is scheduled; not part of the time to running).
    pub prewarm_seconds: f64,
    pub prewarm_bytes_served: u64,
    /// CRI PullImage(v2) until a container of v2 has read the case's file, after the pre-warm.
    pub seconds: f64,
    pub pull_seconds: f64,
    /// Registry bytes of that pull (the manifest; no blob expected).
    pub bytes_served: u64,
    pub blob_bytes_served: u64,
}

/// A fresh chunksnap node (state under `base`): pause (and v1 for updates) pulled, v2
/// pre-warmed, then the kubelet's pull of v2 and a container reading the case's file, timed.
pub async fn run_once(
    net: &Network,
    case: &Case,
    v1: &BuiltImage,
    v2: &BuiltImage,
    base: &Path,
) -> Result<PrewarmRun> {
    let mut dir = tempfile::Builder::new()
        .prefix("chunksnap-bench-prewarm.")
        .tempdir_in(base)?;
    dir.disable_cleanup(crate::util::keep_temp_dirs());
    let mut chunksnap = Chunksnap::new(dir.path(), vec![net.registry.host()])?;
    let mut containerd = Containerd::start_in(
        &ContainerdConfig {
            snapshotter: Snapshotter::chunksnap(chunksnap.socket()),
            plain_http_registries: vec![net.registry.host()],
            sandbox_image: net.pause.reference.clone(),
            version: crate::ContainerdVersion::from_env()?,
            pull_progress_timeout: None,
        },
        base,
    )
    .await?;
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "cri_address = {:?}\nprewarm_address = {:?}\nprewarm_jitter_ms = 0\n",
            containerd.socket(),
            dir.path().join("prewarm.sock")
        ),
    )?;
    let result = async {
        chunksnap.start().await?;
        let cri = containerd.cri().await?;
        cri.pull_image(&net.pause.reference).await?;
        if case.mode == Mode::Update {
            cri.pull_image(&v1.reference).await?;
        }
        net.registry.reset_counters();
        let start = Instant::now();
        let out = chunksnap.node_command(&["prefetch", "--pull", &v2.reference])?;
        let prewarm_seconds = start.elapsed().as_secs_f64();
        ensure!(
            out.status.success(),
            "prefetch --pull {}: {}",
            v2.reference,
            String::from_utf8_lossy(&out.stderr)
        );
        let prewarm_bytes_served = net.registry.bytes_served();

        net.registry.reset_counters();
        let start = Instant::now();
        cri.pull_image(&v2.reference).await?;
        let pull_seconds = start.elapsed().as_secs_f64();
        let (_, read_at) = cri.run_and_read_timed(&v2.reference, &case.read).await?;
        Ok(PrewarmRun {
            prewarm_seconds,
            prewarm_bytes_served,
            seconds: read_at.duration_since(start).as_secs_f64(),
            pull_seconds,
            bytes_served: net.registry.bytes_served(),
            blob_bytes_served: net.registry.blob_bytes_served(),
        })
    }
    .await;
    containerd.stop();
    if let Err(e) = chunksnap.stop() {
        eprintln!("bench: stopping chunksnap: {e:#}");
    }
    crate::util::unmount_below(dir.path());
    result
}
