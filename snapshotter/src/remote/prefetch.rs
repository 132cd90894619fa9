//! Fetching chunks ahead of their Prepare: the other layers of an image as soon as its first
//! layer is prepared (containerd prepares layers one by one, each needs its parent, but their
//! chunks can travel in parallel), and a whole image for `chunksnap prefetch`.

use std::sync::Arc;

use chunksnap_core::fetch::{EarlyPacks, FetchStats};
use chunksnap_core::registry::{Platform, RegistryClient, choose_platform};
use chunksnap_format::artifact::Artifact;
use chunksnap_format::digest::Digest;
use oci_client::Reference;

use super::chunk_remote::ChunkRemote;
use super::error::{RemoteError, chunk_digests, lock, parse_label};
use crate::labels::LABEL_CRI_IMAGE_LAYERS;
use crate::remote::RemoteRequest;

impl ChunkRemote {
    /// Starts background fetches for the image's other layers (best effort).
    pub(super) fn prefetch_siblings(
        self: &Arc<Self>,
        image: &Reference,
        artifact: &Arc<Artifact>,
        req: &RemoteRequest,
    ) {
        let Some(layers) = req.labels.get(LABEL_CRI_IMAGE_LAYERS) else {
            return;
        };
        for layer in layers
            .split(',')
            .filter_map(|s| Digest::parse(s.trim()).ok())
        {
            if layer.to_string() == req.layer_digest || !artifact.indexes.contains_key(&layer) {
                continue;
            }
            if !lock(&self.prefetching).insert(layer) {
                continue;
            }
            let this = self.clone();
            let (image, artifact) = (image.clone(), artifact.clone());
            tokio::spawn(async move {
                let result = async {
                    let early = this.early_delta_packs(&image, &artifact, &layer).await;
                    let ix = this.source.layer_index(&image, &artifact, &layer).await?;
                    let _pin = this.store.pin(chunk_digests(&ix));
                    this.fetch_chunks(&image, &ix, None, early).await
                }
                .await;
                if let Err(e) = result {
                    tracing::debug!(%layer, cause = %e, "background prefetch failed");
                }
                lock(&this.prefetching).remove(&layer);
            });
        }
    }

    /// Fetches every chunk of `image_ref` (this node's platform) into the store, without
    /// assembling anything: `chunksnap prefetch`.
    pub async fn prefetch_image(&self, image_ref: &str) -> Result<FetchStats, RemoteError> {
        let image = RegistryClient::parse_reference(image_ref)?;
        let manifests = self.client.platform_manifests(&image).await?;
        let want = Platform::host();
        let chosen = choose_platform(&manifests, &want)
            .ok_or_else(|| RemoteError::NoPlatform(want.to_string()))?;
        let (image, artifact) = self.source.artifact(&image, &chosen.raw.digest).await?;
        let mut total = FetchStats::default();
        for layer in &chosen.manifest.layers {
            let layer = parse_label("layer digest", &layer.digest)?;
            let ix = self.source.layer_index(&image, &artifact, &layer).await?;
            let _pin = self.store.pin(chunk_digests(&ix));
            let s = self
                .fetch_chunks(&image, &ix, None, EarlyPacks::default())
                .await?;
            total.add(&s);
        }
        Ok(total)
    }
}
