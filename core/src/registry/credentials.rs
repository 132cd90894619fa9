//! The credentials this client uses for an image, for callers that hand them on to another
//! puller (the node's pre-warm passes them to containerd's CRI `PullImage`, as the kubelet
//! passes a pod's pull secrets).

use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

use super::{RegistryClient, RegistryError, auth};

impl RegistryClient {
    /// The credentials of the configured docker config for `image`'s registry (anonymous when
    /// none). Looked up afresh each call, on a blocking thread (it may run a credential helper).
    pub async fn credentials_for_image(
        &self,
        image: &Reference,
    ) -> Result<RegistryAuth, RegistryError> {
        let path = self.config().docker_config.clone();
        let host = image.resolve_registry().to_owned();
        tokio::task::spawn_blocking(move || auth::lookup(path.as_deref(), &host))
            .await
            .map_err(|e| RegistryError::Task(e.to_string()))?
    }
}
