//! Clean fallback: images chunksnap cannot serve are pulled by containerd itself.

use anyhow::{Result, ensure};
use chunksnap_e2e::ContainerdVersion;
use chunksnap_e2e::chunksnap::convert;

use super::common::{Node, assert_layers_match_oracle, layer_blob_gets, oracle, prepares};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unconverted_image_falls_back_and_runs() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    unconverted_falls_back(ContainerdVersion::from_env()?).await
}

/// An unconverted image on containerd `version`: containerd pulls it itself. Also run by the
/// containerd matrix.
pub async fn unconverted_falls_back(version: ContainerdVersion) -> Result<()> {
    let node = Node::start_on(version).await?;
    let img = node.env.images.debian_v1().await?;
    let cri = node.env.containerd.cri().await?;
    cri.pull_image(&img.reference).await?;
    ensure!(
        prepares(&node, "fallback").await? == 1.0,
        "expected a fallback"
    );
    ensure!(
        prepares(&node, "remote").await? == 0.0,
        "nothing to assemble remotely"
    );
    ensure!(
        !layer_blob_gets(&node.env, &img).is_empty(),
        "containerd should have downloaded the layer"
    );
    let out = cri
        .run_and_read(&img.reference, "/etc/debian_version")
        .await?;
    ensure!(out.starts_with(b"12."), "unexpected {out:?}");
    let oracle = oracle(&node.env).await?;
    assert_layers_match_oracle(&node, &oracle, &img).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn converted_image_with_deleted_packs_falls_back() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = Node::start().await?;
    let img = node.env.images.features().await?;
    convert(&img.reference)?;
    // Delete every pack blob from the registry's storage: the artifact still points at them.
    let blobs = node
        .env
        .registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256");
    let mut deleted = 0;
    for pack in pack_digests(&img.reference).await? {
        let hex = pack.trim_start_matches("sha256:");
        let dir = blobs.join(&hex[..2]).join(hex);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
            deleted += 1;
        }
    }
    ensure!(deleted > 0, "no pack blob found to delete");
    let cri = node.env.containerd.cri().await?;
    cri.pull_image(&img.reference).await?;
    ensure!(
        prepares(&node, "remote").await? == 0.0,
        "nothing can be assembled"
    );
    ensure!(
        prepares(&node, "fallback").await? >= 1.0,
        "expected fallbacks"
    );
    let oracle = oracle(&node.env).await?;
    assert_layers_match_oracle(&node, &oracle, &img).await
}

/// Pack digests of `reference`'s chunksnap artifact, read through the registry API.
async fn pack_digests(reference: &str) -> Result<Vec<String>> {
    use chunksnap_core::registry::{RegistryClient, RegistryConfig};
    let client = RegistryClient::new(RegistryConfig {
        plain_http_all: true,
        docker_config: None,
        ..Default::default()
    })?;
    let image = RegistryClient::parse_reference(reference)?;
    let manifest = client.resolve(&image).await?;
    let (_, artifact) = client
        .find_artifact(&image, &manifest.digest)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no artifact for {reference}"))?;
    Ok(artifact.packs.keys().map(|d| d.to_string()).collect())
}
