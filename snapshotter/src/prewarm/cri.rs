//! containerd's CRI ImageService over its unix socket: what the kubelet calls to pull.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{AuthConfig, ImageSpec, ImageStatusRequest, PullImageRequest};
use oci_client::secrets::RegistryAuth;
use tonic::transport::{Channel, Endpoint};

/// Errors talking to the CRI socket.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connecting to CRI at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {op} {image}: {status}")]
    Call {
        op: &'static str,
        image: String,
        status: tonic::Status,
    },
}

/// A CRI image client; connects per call (pre-warms are rare, containerd may restart).
#[derive(Debug, Clone)]
pub struct CriImages {
    socket: PathBuf,
}

impl CriImages {
    /// A client for containerd's socket at `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    async fn client(&self) -> Result<ImageServiceClient<Channel>, CriError> {
        let channel = Endpoint::from_shared(format!("unix://{}", self.socket.display()))
            .map_err(|source| CriError::Connect {
                path: self.socket.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|source| CriError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        Ok(ImageServiceClient::new(channel))
    }

    /// containerd's image id when it holds `image`, else `None`.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, CriError> {
        let status = self
            .client()
            .await?
            .image_status(ImageStatusRequest {
                image: Some(spec(image)),
                verbose: false,
            })
            .await
            .map_err(|status| CriError::Call {
                op: "ImageStatus",
                image: image.to_owned(),
                status,
            })?
            .into_inner();
        Ok(status.image.map(|i| i.id))
    }

    /// Pulls `image` as the kubelet would, with `auth` as its pull secret; returns the image id.
    pub async fn pull(&self, image: &str, auth: Option<AuthConfig>) -> Result<String, CriError> {
        let response = self
            .client()
            .await?
            .pull_image(PullImageRequest {
                image: Some(spec(image)),
                auth,
                sandbox_config: None,
            })
            .await
            .map_err(|status| CriError::Call {
                op: "PullImage",
                image: image.to_owned(),
                status,
            })?;
        Ok(response.into_inner().image_ref)
    }
}

/// The CRI form of registry credentials (`None` for anonymous access). `server_address` stays
/// empty: containerd parses it as a URL and silently drops the credentials unless its host is
/// the one it resolves (`127.0.0.1:5000` does not even parse, `docker.io` resolves to
/// `registry-1.docker.io`); empty, they apply to the pull of this one image.
pub fn auth_config(auth: &RegistryAuth) -> Option<AuthConfig> {
    match auth {
        RegistryAuth::Basic(username, password) => Some(AuthConfig {
            username: username.clone(),
            password: password.clone(),
            ..Default::default()
        }),
        RegistryAuth::Bearer(token) => Some(AuthConfig {
            registry_token: token.clone(),
            ..Default::default()
        }),
        RegistryAuth::Anonymous => None,
    }
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}
