//! The credentials this client uses for an image, for callers that hand them on to another
//! puller (the node's pre-warm passes them to containerd's CRI `PullImage`, as the kubelet
//! passes a pod's pull secrets).

use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

use super::{RegistryClient, RegistryError};

impl RegistryClient {
    /// The credentials the client itself uses for `image` (docker config, then kubelet
    /// credential-provider plugins; anonymous when none), cached as for its own requests.
    pub async fn credentials_for_image(
        &self,
        image: &Reference,
    ) -> Result<RegistryAuth, RegistryError> {
        self.credentials_for(image).await
    }
}
