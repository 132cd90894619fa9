//! containerd's native API (containerd-client) in CRI's namespace `k8s.io`: images, content,
//! snapshots, leases, and where the overlayfs snapshotter keeps an image's layer directories.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use containerd_client::services::v1::snapshots::{
    Info as SnapshotInfo, ListSnapshotsRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
    snapshots_client::SnapshotsClient,
};
use containerd_client::services::v1::{
    GetImageRequest, Image, Info as ContentInfo, Lease, ListContentRequest, ListImagesRequest,
    ListRequest as ListLeasesRequest, ReadContentRequest, content_client::ContentClient,
    images_client::ImagesClient, leases_client::LeasesClient, version_client::VersionClient,
};
use sha2::{Digest, Sha256};
use tonic::Request;
use tonic::transport::Channel;

/// CRI's containerd namespace.
pub const NAMESPACE: &str = "k8s.io";

fn ns<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(NAMESPACE),
    );
    req
}

/// Native API client bound to namespace `k8s.io`.
#[derive(Debug, Clone)]
pub struct Native {
    channel: Channel,
}

impl Native {
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String> {
        let v = VersionClient::new(self.channel())
            .version(())
            .await
            .context("Version")?;
        Ok(v.into_inner().version)
    }

    pub async fn images(&self) -> Result<Vec<Image>> {
        let r = ImagesClient::new(self.channel())
            .list(ns(ListImagesRequest { filters: vec![] }))
            .await
            .context("Images.List")?;
        Ok(r.into_inner().images)
    }

    pub async fn image(&self, name: &str) -> Result<Image> {
        ImagesClient::new(self.channel())
            .get(ns(GetImageRequest { name: name.into() }))
            .await
            .with_context(|| format!("Images.Get {name}"))?
            .into_inner()
            .image
            .context("Images.Get without image")
    }

    /// Every blob in the content store.
    pub async fn contents(&self) -> Result<Vec<ContentInfo>> {
        let mut stream = ContentClient::new(self.channel())
            .list(ns(ListContentRequest { filters: vec![] }))
            .await
            .context("Content.List")?
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream.message().await? {
            out.extend(msg.info);
        }
        Ok(out)
    }

    /// A whole blob from the content store.
    pub async fn read_content(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel())
            .read(ns(ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size: 0,
            }))
            .await
            .with_context(|| format!("Content.Read {digest}"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream.message().await? {
            out.extend_from_slice(&msg.data);
        }
        Ok(out)
    }

    /// Snapshots of `snapshotter`, optionally filtered (containerd filter syntax).
    pub async fn snapshots(
        &self,
        snapshotter: &str,
        filters: Vec<String>,
    ) -> Result<Vec<SnapshotInfo>> {
        let mut stream = SnapshotsClient::new(self.channel())
            .list(ns(ListSnapshotsRequest {
                snapshotter: snapshotter.into(),
                filters,
            }))
            .await
            .context("Snapshots.List")?
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream.message().await? {
            out.extend(msg.info);
        }
        Ok(out)
    }

    pub async fn leases(&self) -> Result<Vec<Lease>> {
        let r = LeasesClient::new(self.channel())
            .list(ns(ListLeasesRequest { filters: vec![] }))
            .await
            .context("Leases.List")?;
        Ok(r.into_inner().leases)
    }

    /// The layer diff ids of image `name` (as stored by containerd), bottom layer first.
    pub async fn diff_ids(&self, name: &str) -> Result<Vec<String>> {
        let target = self
            .image(name)
            .await?
            .target
            .context("image without target")?;
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&self.read_content(&target.digest).await?)?;
        if manifest.get("manifests").is_some() {
            let digest = manifest["manifests"]
                .as_array()
                .and_then(|ms| {
                    ms.iter().find(|m| {
                        m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                    })
                })
                .and_then(|m| m["digest"].as_str())
                .context("index without linux/amd64 manifest")?
                .to_owned();
            manifest = serde_json::from_slice(&self.read_content(&digest).await?)?;
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .context("manifest without config")?;
        let config: serde_json::Value =
            serde_json::from_slice(&self.read_content(config_digest).await?)?;
        config["rootfs"]["diff_ids"]
            .as_array()
            .context("config without rootfs.diff_ids")?
            .iter()
            .map(|d| {
                d.as_str()
                    .map(str::to_owned)
                    .context("diff id not a string")
            })
            .collect()
    }

    /// Chain ids of image `name`'s layers, bottom first: the names of committed layer snapshots.
    pub async fn chain_ids(&self, name: &str) -> Result<Vec<String>> {
        Ok(chain_ids(&self.diff_ids(name).await?))
    }

    /// The overlayfs snapshotter's `snapshots/<id>/fs` directory of each layer of image `name`,
    /// bottom first.
    pub async fn overlay_layer_dirs(&self, name: &str) -> Result<Vec<PathBuf>> {
        self.layer_dirs("overlayfs", name).await
    }

    /// The directory of each layer of image `name` in `snapshotter`, bottom first, for any
    /// snapshotter that mounts like overlayfs (chunksnap does). Committed snapshots have no
    /// mounts, so this takes a view of the top layer, reads its lowerdirs (or the bind source for
    /// a single layer) and removes the view.
    pub async fn layer_dirs(&self, snapshotter: &str, name: &str) -> Result<Vec<PathBuf>> {
        let chain = self.chain_ids(name).await?;
        let top = chain.last().context("image without layers")?;
        let key = format!("e2e-view-{}-{}", std::process::id(), &top[7..19]);
        let mut client = SnapshotsClient::new(self.channel());
        let labels = HashMap::from([("containerd.io/gc.root".to_owned(), "e2e".to_owned())]);
        let mounts = client
            .view(ns(ViewSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.clone(),
                parent: top.clone(),
                labels,
            }))
            .await
            .with_context(|| format!("Snapshots.View of {top}"))?
            .into_inner()
            .mounts;
        let removed = client
            .remove(ns(RemoveSnapshotRequest {
                snapshotter: snapshotter.into(),
                key,
            }))
            .await;
        let mount = mounts.first().context("view without mounts")?;
        let mut dirs: Vec<PathBuf> = match mount.r#type.as_str() {
            "bind" => vec![PathBuf::from(&mount.source)],
            "overlay" => mount
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .context("overlay mount without lowerdir")?
                .split(':')
                .map(PathBuf::from)
                .collect(),
            other => bail!("unexpected mount type {other}"),
        };
        removed.context("Snapshots.Remove of the view")?;
        // lowerdir lists the top layer first.
        if mount.r#type == "overlay" {
            dirs.reverse();
        }
        if dirs.len() != chain.len() {
            bail!("{} layer dirs for {} layers", dirs.len(), chain.len());
        }
        Ok(dirs)
    }
}

/// OCI chain ids from diff ids: `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}
