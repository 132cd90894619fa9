//! `chunksnap prefetch --pull`: the image is pulled through containerd's CRI (so containerd
//! lists it), assembled by chunksnap from the chunks v1 did not bring, and a later CRI
//! `PullImage` (the kubelet's) moves no blob at all. An unconverted image is refused.

use anyhow::{Result, ensure};

use super::{PrewarmNode, app_images};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetch_pull_stages_v2_so_the_kubelet_pull_moves_no_blob() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = PrewarmNode::start().await?;
    let (v1, v2, plain) = app_images(&node.env.images, "prewarm-cli").await?;
    let app_layer = v2.layers.last().map_or(0, |l| l.size);
    let cri = node.env.containerd.cri().await?;
    cri.pull_image(&v1.reference).await?;

    node.env.registry.reset_counters();
    let out = node
        .chunksnap
        .node_command(&["prefetch", "--pull", &v2.reference])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "prefetch --pull: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "prefetch --pull failed");
    ensure!(
        stdout.contains("Prewarmed prewarm-cli:v2:") && stdout.contains("fetched"),
        "no summary: {stdout}"
    );
    let tags = cri.list_image_tags().await?;
    ensure!(
        tags.contains(&v2.reference),
        "CRI ListImages lacks v2: {tags:?}"
    );
    ensure!(
        node.layer_blob_gets(&v2).is_empty(),
        "v2's layer blob was downloaded: not assembled from chunks"
    );
    let staged_bytes = node.env.registry.bytes_served();
    ensure!(
        staged_bytes < app_layer,
        "staging moved {staged_bytes} B, not less than v2's layer ({} B)",
        app_layer
    );
    ensure!(node.prewarms("pulled").await? == 1.0, "pulled not counted");

    // The kubelet's pull: the image is present, nothing but the manifest travels.
    node.env.registry.reset_counters();
    cri.pull_image(&v2.reference).await?;
    let gets = node.blob_gets();
    ensure!(
        gets.is_empty(),
        "PullImage(v2) after pre-warm fetched blobs: {gets:?}"
    );
    ensure!(
        node.env.registry.blob_bytes_served() == 0,
        "PullImage(v2) moved blob bytes"
    );

    // Again: present, nothing pulled.
    let again = node
        .chunksnap
        .node_command(&["prefetch", "--pull", &v2.reference])?;
    ensure!(again.status.success(), "second prefetch --pull failed");
    ensure!(
        node.prewarms("present").await? == 1.0,
        "present not counted"
    );

    // Not converted: refused (exit 2), not pulled.
    let refused = node
        .chunksnap
        .node_command(&["prefetch", "--pull", &plain.reference])?;
    ensure!(
        refused.status.code() == Some(2),
        "unconverted image: exit {:?}",
        refused.status
    );
    let tags = cri.list_image_tags().await?;
    ensure!(
        !tags.contains(&plain.reference),
        "unconverted image was pulled"
    );
    ensure!(
        node.prewarms("unconverted").await? == 1.0,
        "unconverted not counted"
    );

    let socket = node.chunksnap.socket().display().to_string();
    let status = node
        .chunksnap
        .node_command(&["--address", &socket, "status"])?;
    let text = String::from_utf8_lossy(&status.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&status.stderr));
    ensure!(
        text.contains("pre-warm: 0 running") && text.contains("Prewarmed prewarm-cli:v2"),
        "status lacks pre-warm lines: {text}"
    );
    eprintln!(
        "pre-warm of v2 moved {staged_bytes} B (v2 app layer blob {} B)",
        app_layer
    );
    Ok(())
}
