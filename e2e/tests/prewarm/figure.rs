//! The bench's pre-warm figure on a small update over loopback: after a pre-warm, the
//! kubelet's pull of v2 moves no blob and v2 runs; the times of both paths are printed.

use anyhow::{Result, ensure};
use chunksnap_e2e::bench::case::{Case, Mode};
use chunksnap_e2e::bench::node::{self, Kind};
use chunksnap_e2e::bench::prewarm;
use chunksnap_e2e::bench::profile::{Network, Profile};

use super::app_images;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarmed_node_runs_v2_without_fetching_a_blob() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let net = Network::start(Profile::Loopback, 0).await?;
    let (v1, v2, _) = app_images(&net.images, "prewarm-figure").await?;
    let case = Case {
        name: "prewarm-figure".into(),
        mode: Mode::Update,
        read: "/app/VERSION".into(),
        v1: Vec::new(),
        v2: Vec::new(),
    };
    let base = tempfile::tempdir()?;
    let log = base.path().join("plain.chunksnap.log");
    let plain = node::run_once(
        Kind::Plain,
        chunksnap_e2e::ContainerdVersion::from_env()?,
        &net,
        &case,
        &v1,
        &v2,
        base.path(),
        &log,
    )
    .await?;
    let warm = prewarm::run_once(&net, &case, &v1, &v2, base.path()).await?;
    eprintln!(
        "plain: {:.2} s to running ({:.2} s pull, {} B); pre-warmed: {:.2} s to running \
         ({:.2} s pull, {} B) after a {:.2} s pre-warm ({} B)",
        plain.seconds,
        plain.pull_seconds,
        plain.bytes_served,
        warm.seconds,
        warm.pull_seconds,
        warm.bytes_served,
        warm.prewarm_seconds,
        warm.prewarm_bytes_served
    );
    ensure!(
        warm.blob_bytes_served == 0,
        "the pull after a pre-warm moved blobs"
    );
    ensure!(plain.blob_bytes_served > 0, "the plain pull moved no blob?");
    ensure!(
        warm.prewarm_bytes_served < plain.bytes_served,
        "the pre-warm moved {} B, the plain pull {} B",
        warm.prewarm_bytes_served,
        plain.bytes_served
    );
    Ok(())
}
