//! Whether an image has a chunksnap artifact (for this node's platform): asked before a
//! pre-warm, which pulls only converted images unless told otherwise.

use chunksnap_core::registry::{Platform, RegistryClient, choose_platform};

use super::chunk_remote::{ChunkRemote, RemoteError};

impl ChunkRemote {
    /// True when `image_ref`'s manifest for this node's platform has a chunksnap artifact
    /// (origin or mirror), by the same lookup a remote Prepare makes (and caches).
    pub async fn is_converted(&self, image_ref: &str) -> Result<bool, RemoteError> {
        let image = RegistryClient::parse_reference(image_ref)?;
        let manifests = self.client.platform_manifests(&image).await?;
        let want = Platform::host();
        let chosen = choose_platform(&manifests, &want)
            .ok_or_else(|| RemoteError::NoPlatform(want.to_string()))?;
        match self.source.artifact(&image, &chosen.raw.digest).await {
            Ok(_) => Ok(true),
            Err(RemoteError::NoArtifact) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The registry client (credentials for a pre-warm's CRI pull come from its config).
    pub fn registry(&self) -> &RegistryClient {
        &self.client
    }
}
