//! A chunk damaged on disk after it was stored (bit rot, or a write torn by a crash: chunks
//! are not fsynced). A verified layer reads its chunks without hashing each one again, so the
//! layer's diffID check is what catches the damage: the pull falls back to containerd's own
//! and is correct, the damaged chunks are removed, and the next pull assembles remotely again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::common::{FaultyNode, convert, fsck_corrupt, oracle, oracle_differences, unique_image};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_damaged_on_disk_is_caught_removed_and_fetched_again() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = FaultyNode::start("").await?;
    let oracle = oracle(&node.env).await?;
    let cri = node.env.containerd.cri().await?;
    let img = unique_image(&node.env, "bitrot", 515, 3, 96 << 10).await?;
    convert(&img.reference).await?;
    let layers = img.layers.len() as f64;
    cri.pull_image(&img.reference).await?;
    ensure!(
        node.prepares("remote").await? == layers,
        "first pull should assemble remotely"
    );

    let damaged = damage_raw_chunks(node.chunksnap.root())?;
    ensure!(damaged > 0, "no raw chunk to damage");
    ensure!(
        fsck_corrupt(&node.chunksnap)? == damaged,
        "fsck should see the damage"
    );
    cri.remove_image(&img.reference).await?;
    cri.pull_image(&img.reference).await?;
    let failures = node
        .chunksnap
        .metric("chunksnap_verify_failures_total")
        .await?;
    ensure!(failures >= 1.0, "the damaged layer should fail its check");
    ensure!(
        oracle_differences(&node.env.containerd, &oracle, &img).await? == 0,
        "the fallback pull differs from containerd's unpacking"
    );
    // The layer's chunks are checked in the background after the failure: poll fsck.
    let until = Instant::now() + Duration::from_secs(60);
    while fsck_corrupt(&node.chunksnap)? > 0 {
        ensure!(
            Instant::now() < until,
            "damaged chunks still stored after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        node.log().contains("removed damaged chunks"),
        "the removal should be logged"
    );

    cri.remove_image(&img.reference).await?;
    let remote = node.prepares("remote").await?;
    cri.pull_image(&img.reference).await?;
    ensure!(
        node.prepares("remote").await? - remote == layers,
        "after the removal, the layers should be assembled remotely again"
    );
    ensure!(
        oracle_differences(&node.env.containerd, &oracle, &img).await? == 0,
        "the image differs from containerd's unpacking"
    );
    eprintln!("damaged {damaged} chunks; {failures} layer(s) failed their check and fell back");
    Ok(())
}

/// Flips one byte in the middle of every chunk stored raw (header byte 0, the image's random
/// files) under `root`: the size stays, only the content is wrong. Returns how many.
fn damage_raw_chunks(root: &Path) -> Result<u64> {
    let mut n = 0;
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry?;
        let path = entry.path();
        let in_chunks = path.components().any(|c| c.as_os_str() == "chunks");
        if !in_chunks || !entry.file_type().is_file() {
            continue;
        }
        let mut bytes =
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if bytes.len() < 4096 || bytes[0] != 0 {
            continue;
        }
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(path, &bytes)?;
        n += 1;
    }
    Ok(n)
}
