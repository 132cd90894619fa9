//! The main promise: with v1 on a node, pulling v2 through CRI fetches only the chunks v1 did
//! not bring, never a layer blob, and every assembled layer equals containerd's own unpacking.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use chunksnap_e2e::ContainerdVersion;
use chunksnap_e2e::chunksnap::{chunkconv_json, convert};
use chunksnap_e2e::util::Poller;

use super::common::{Node, assert_layers_match_oracle, layer_blob_gets, oracle, prepares};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debian_security_update_fetches_only_missing_chunks() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    security_update(ContainerdVersion::from_env()?).await
}

/// v1 then v2 remotely on containerd `version`, compared with its overlayfs; then chunksnap
/// restarts under it. Also run by the containerd matrix.
pub async fn security_update(version: ContainerdVersion) -> Result<()> {
    let mut node = Node::start_on(version).await?;
    let v1 = node.env.images.debian_v1().await?;
    let v2 = node.env.images.debian_v2().await?;
    convert(&v1.reference)?;
    convert(&v2.reference)?;
    let inspect = chunkconv_json(&[
        "inspect",
        "--plain-http",
        "--base",
        &v1.reference,
        &v2.reference,
    ])?;
    let m = &inspect[0];
    let v2_unique = m["unique_stored_bytes"].as_u64().unwrap_or(0);
    let v2_in_v1 = m["base_stored_bytes"].as_u64().unwrap_or(0);
    let v2_missing = v2_unique.saturating_sub(v2_in_v1);
    let cri = node.env.containerd.cri().await?;

    node.env.registry.reset_counters();
    cri.pull_image(&v1.reference).await?;
    ensure!(
        layer_blob_gets(&node.env, &v1).is_empty(),
        "v1 layer blob was downloaded"
    );
    ensure!(
        prepares(&node, "remote").await? == 1.0,
        "v1 not assembled remotely"
    );
    let v1_bytes = node.env.registry.bytes_served();

    node.env.registry.reset_counters();
    cri.pull_image(&v2.reference).await?;
    ensure!(
        layer_blob_gets(&node.env, &v2).is_empty(),
        "v2 layer blob was downloaded"
    );
    ensure!(
        prepares(&node, "remote").await? == 2.0,
        "v2 not assembled remotely"
    );
    ensure!(
        prepares(&node, "fallback").await? == 0.0,
        "unexpected fallback"
    );
    let v2_bytes = node.env.registry.bytes_served();
    let v2_layer = v2.layers[0].size;
    // Most of v2's files are v1's, byte for byte: linked from v1's layer, not written.
    let seeded = node
        .chunksnap
        .metric("chunksnap_seeded_files_total")
        .await?;
    let seeded_bytes = node
        .chunksnap
        .metric("chunksnap_seeded_bytes_total")
        .await?;
    eprintln!("v2 pull: {seeded} files ({seeded_bytes} B) linked from v1's layer");
    ensure!(
        seeded > 1000.0 && seeded_bytes > 50e6,
        "v2 seeded only {seeded} files ({seeded_bytes} B) from v1"
    );
    eprintln!(
        "v1 pull: {v1_bytes} B served; v2 pull: {v2_bytes} B served (layer blob {v2_layer} B, \
         chunks missing on the node {v2_missing} B)"
    );
    // Only missing chunks (plus indexes, manifests and coalescing gaps): far below the layer.
    ensure!(
        v2_bytes * 5 < v2_layer,
        "v2 pull moved {v2_bytes} B, not much less than its {v2_layer} B layer"
    );
    ensure!(
        v2_bytes <= v2_missing + v2_missing / 2 + (1 << 20),
        "v2 pull moved {v2_bytes} B for {v2_missing} B of missing chunks"
    );
    // Most missing chunks come as deltas against v1's, and v2's index as a delta of v1's: the
    // pull moves a fraction of even the missing chunks.
    let deltas = node
        .chunksnap
        .metric("chunksnap_delta_chunks_total")
        .await?;
    let index_deltas = node
        .chunksnap
        .metric("chunksnap_index_deltas_total")
        .await?;
    let fallbacks = node
        .chunksnap
        .metric("chunksnap_delta_fallbacks_total")
        .await?;
    let early = node
        .chunksnap
        .metric("chunksnap_early_delta_packs_total")
        .await?;
    eprintln!(
        "v2 pull: {deltas} chunks from deltas, {index_deltas} index deltas, {early} delta packs read early"
    );
    // The delta packs were read whole next to the index delta, and their frames taken from
    // those bytes: no Range request went to a blob that was also read whole.
    ensure!(early >= 1.0, "v2's delta packs were not read early");
    let requests = node.env.registry.requests();
    let whole: BTreeSet<&str> = requests
        .iter()
        .filter(|r| r.is_blob_get() && r.range.is_none())
        .map(|r| r.path.as_str())
        .collect();
    let reread: Vec<&str> = requests
        .iter()
        .filter(|r| r.range.is_some() && whole.contains(r.path.as_str()))
        .map(|r| r.path.as_str())
        .collect();
    ensure!(
        reread.is_empty(),
        "blobs read whole and by range too: {reread:?}"
    );
    ensure!(deltas > 100.0, "only {deltas} chunks came as deltas");
    ensure!(index_deltas == 1.0, "v2's index was not rebuilt from v1's");
    ensure!(fallbacks == 0.0, "{fallbacks} deltas could not be used");
    ensure!(
        v2_bytes * 3 < v2_missing,
        "v2 pull moved {v2_bytes} B for {v2_missing} B of missing chunks: deltas unused?"
    );

    let version = cri
        .run_and_read(&v2.reference, "/etc/debian_version")
        .await?;
    ensure!(
        version.starts_with(b"12."),
        "unexpected /etc/debian_version {version:?}"
    );

    let oracle = oracle(&node.env).await?;
    assert_layers_match_oracle(&node, &oracle, &v1).await?;
    assert_layers_match_oracle(&node, &oracle, &v2).await?;

    // Restarting chunksnap, then containerd, keeps existing snapshots usable.
    node.chunksnap.stop()?;
    node.chunksnap.start().await?;
    // containerd's gRPC connection to the plugin reconnects with backoff: retry until it has.
    let mut poll = Poller::new(
        "containerd reconnecting to chunksnap",
        Duration::from_secs(60),
    );
    let again = loop {
        match cri.run_and_read(&v1.reference, "/etc/debian_version").await {
            Ok(out) => break out,
            Err(e) if format!("{e:#}").contains("connection refused") => poll.tick().await?,
            Err(e) => return Err(e),
        }
    };
    ensure!(again.starts_with(b"12."), "v1 unusable after restart");
    let fsck = node.chunksnap.node_command(&["fsck"])?;
    ensure!(
        fsck.status.success(),
        "fsck found damage: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    Ok(())
}

/// Every tar feature the converter handles survives conversion + assembly exactly as
/// containerd's own applier unpacks it (whiteouts and opaque dirs included).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crafted_features_image_matches_overlayfs() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = Node::start().await?;
    let img = node.env.images.features().await?;
    convert(&img.reference)?;
    let cri = node.env.containerd.cri().await?;
    node.env.registry.reset_counters();
    cri.pull_image(&img.reference).await?;
    ensure!(
        layer_blob_gets(&node.env, &img).is_empty(),
        "layer blob was downloaded"
    );
    ensure!(
        prepares(&node, "remote").await? == img.layers.len() as f64,
        "not every layer was assembled remotely"
    );
    let oracle = oracle(&node.env).await?;
    assert_layers_match_oracle(&node, &oracle, &img).await
}

/// Seeds are checked, never trusted: with v1's layer tampered with on disk (contents changed,
/// size, mode and mtime kept) and the chunk store emptied, v2 still equals containerd's own
/// unpacking; the tampered files are written from chunks fetched on demand, not linked.
/// chunksnap restarts in between, so the seeds' indexes come from its disk, not memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampered_seeds_are_rejected_and_v2_still_matches_overlayfs() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let mut node = Node::start().await?;
    let v1 = node.env.images.debian_v1().await?;
    let v2 = node.env.images.debian_v2().await?;
    convert(&v1.reference)?;
    convert(&v2.reference)?;
    let cri = node.env.containerd.cri().await?;
    cri.pull_image(&v1.reference).await?;

    let v1_dir = node.layer_dirs(&v1).await?.remove(0);
    let tampered = tamper_files(&v1_dir.join("usr/bin"))?;
    ensure!(tampered > 10, "only {tampered} files tampered with");
    node.chunksnap.stop()?;
    let chunks = node.chunksnap.root().join("chunks");
    std::fs::remove_dir_all(&chunks)?;
    node.chunksnap.start().await?;

    let mut poll = Poller::new(
        "containerd reconnecting to chunksnap",
        Duration::from_secs(60),
    );
    loop {
        match cri.pull_image(&v2.reference).await {
            Ok(_) => break,
            Err(e) if format!("{e:#}").contains("connection refused") => poll.tick().await?,
            Err(e) => return Err(e),
        }
    }
    ensure!(
        prepares(&node, "remote").await? == 1.0,
        "v2 not assembled remotely"
    );
    let rejected = node
        .chunksnap
        .metric("chunksnap_seeds_rejected_total")
        .await?;
    let seeded = node
        .chunksnap
        .metric("chunksnap_seeded_files_total")
        .await?;
    eprintln!("{tampered} files tampered with; v2: {seeded} seeded, {rejected} seeds rejected");
    ensure!(rejected > 0.0, "no tampered seed was caught");
    ensure!(seeded > 1000.0, "seeding stopped working ({seeded} files)");
    let oracle = oracle(&node.env).await?;
    assert_layers_match_oracle(&node, &oracle, &v2).await
}

/// Flips one byte of every regular file of at least 4 KiB under `dir`, keeping its size, mode
/// and mtime; returns how many.
fn tamper_files(dir: &std::path::Path) -> Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let md = std::fs::symlink_metadata(&path)?;
        if !md.file_type().is_file() || md.len() < 4096 {
            continue;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, 100)?;
        byte[0] ^= 0xff;
        file.write_all_at(&byte, 100)?;
        let times = std::fs::FileTimes::new()
            .set_accessed(md.accessed()?)
            .set_modified(md.modified()?);
        file.set_times(times)?;
        n += 1;
    }
    Ok(n)
}
