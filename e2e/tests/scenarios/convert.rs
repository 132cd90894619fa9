//! The converter on real content: a Debian minbase rootfs (v1) and its bookworm-security
//! upgrade (v2). Converting v2 after v1 uploads only v2's new chunks, and `chunkconv extract`
//! rebuilds v2's filesystem exactly as GNU tar unpacks the original layer.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::chunksnap::{bin_dir, convert};
use chunksnap_e2e::treecmp::{CompareOptions, compare_trees};
use chunksnap_e2e::{Registry, TestImages};

/// Digests of the blobs uploaded since the counters were reset (the `digest=` of each final PUT).
fn uploaded_blobs(registry: &Registry) -> BTreeSet<String> {
    registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/"))
        .filter_map(|r| {
            let q = r.path.split_once("digest=")?.1;
            Some(q.split('&').next()?.replace("%3A", ":"))
        })
        .collect()
}

fn blob_size(registry: &Registry, digest: &str) -> Result<u64> {
    let hex = digest.trim_start_matches("sha256:");
    let p = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    Ok(std::fs::metadata(&p)
        .with_context(|| p.display().to_string())?
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debian_v2_after_v1_pushes_only_new_chunks_and_extracts_exactly() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let registry = Registry::start().await?;
    let images = TestImages::new(&registry)?;
    let v1 = images.debian_v1().await?;
    let v2 = images.debian_v2().await?;

    convert(&v1.reference)?;
    registry.reset_counters();
    let report = convert(&v2.reference)?;
    let uploaded = uploaded_blobs(&registry);
    let mut uploaded_bytes = 0;
    for d in &uploaded {
        uploaded_bytes += blob_size(&registry, d)?;
    }
    let pushed = report["totals"]["bytes_pushed"].as_u64().unwrap_or(0);
    let new_chunks = report["totals"]["new_chunks"].as_u64().unwrap_or(0);
    let chunks = report["totals"]["chunks"].as_u64().unwrap_or(0);
    let layer = v2.layers[0].size;
    eprintln!(
        "v2 after v1: {new_chunks}/{chunks} new chunks, {} blobs uploaded, {uploaded_bytes} B \
         (converter says {pushed} B) for a {layer} B layer",
        uploaded.len()
    );
    ensure!(!uploaded.is_empty(), "nothing uploaded for v2");
    ensure!(
        uploaded_bytes * 4 < layer,
        "v2 uploaded {uploaded_bytes} B, not far below its {layer} B layer"
    );
    ensure!(
        new_chunks * 4 < chunks,
        "most of v2's chunks should be v1's"
    );
    // What the registry received is what the converter reports having pushed.
    ensure!(
        uploaded_bytes <= pushed + 4096,
        "registry received {uploaded_bytes} B but the converter reports {pushed} B"
    );

    // Reconverting pushes nothing.
    registry.reset_counters();
    let again = convert(&v2.reference)?;
    ensure!(
        uploaded_blobs(&registry).is_empty(),
        "reconversion uploaded blobs"
    );
    ensure!(
        again["manifests"][0]["artifact"] == report["manifests"][0]["artifact"],
        "reconversion changed the artifact digest"
    );

    // extract v2 from chunks vs GNU tar on the original layer.
    let work = tempfile::Builder::new()
        .prefix("chunksnap-e2e-extract-")
        .tempdir()?;
    let ours = work.path().join("ours");
    let theirs = work.path().join("gnutar");
    std::fs::create_dir_all(&theirs)?;
    let out = Command::new(bin_dir()?.join("chunkconv"))
        .args(["extract", "--plain-http", "--store"])
        .arg(work.path().join("store"))
        .arg(&v2.reference)
        .arg(&ours)
        .output()?;
    ensure!(
        out.status.success(),
        "chunkconv extract: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpzf"])
        .arg(&v2.layers[0].path)
        .arg("-C")
        .arg(&theirs)
        .status()?;
    ensure!(status.success(), "GNU tar failed");
    let diffs = tokio::task::spawn_blocking(move || {
        compare_trees(
            &theirs,
            &ours,
            &CompareOptions {
                ignore_root_mtime: true,
                ..CompareOptions::default()
            },
        )
    })
    .await??;
    ensure!(
        diffs.is_empty(),
        "{} differences from GNU tar, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
    Ok(())
}
