//! Shared setup for scenarios: a registry with the pause image pushed, the test image builder,
//! and a containerd pulling from that registry through CRI.

use anyhow::Result;

use crate::{
    BuiltImage, Containerd, ContainerdConfig, ContainerdVersion, Registry, Snapshotter, TestImages,
};

/// A registry + containerd pair. Drops containerd first, then the registry.
#[derive(Debug)]
pub struct Env {
    pub containerd: Containerd,
    pub images: TestImages,
    /// CRI's sandbox image, already in the registry.
    pub pause: BuiltImage,
    pub registry: Registry,
}

impl Env {
    /// Starts a registry, pushes the pause image, and starts containerd with `snapshotter`.
    /// Counters are reset afterwards, so they only show what the test itself causes.
    /// containerd is the one `CHUNKSNAP_E2E_CONTAINERD` names (1.6 by default).
    pub async fn start(snapshotter: Snapshotter) -> Result<Self> {
        Self::start_on(ContainerdVersion::from_env()?, snapshotter).await
    }

    /// [`Env::start`] with containerd `version`.
    pub async fn start_on(version: ContainerdVersion, snapshotter: Snapshotter) -> Result<Self> {
        let registry = Registry::start().await?;
        let images = TestImages::new(&registry)?;
        let pause = images.pause().await?;
        let containerd =
            Containerd::start(&containerd_config(&registry, &pause, snapshotter, version)).await?;
        registry.reset_counters();
        Ok(Self {
            containerd,
            images,
            pause,
            registry,
        })
    }

    /// The config for another containerd (another "node", same version) on the same registry.
    pub fn containerd_config(&self, snapshotter: Snapshotter) -> ContainerdConfig {
        containerd_config(
            &self.registry,
            &self.pause,
            snapshotter,
            self.containerd.version(),
        )
    }
}

fn containerd_config(
    registry: &Registry,
    pause: &BuiltImage,
    snapshotter: Snapshotter,
    version: ContainerdVersion,
) -> ContainerdConfig {
    ContainerdConfig {
        snapshotter,
        plain_http_registries: vec![registry.host()],
        sandbox_image: pause.reference.clone(),
        version,
        pull_progress_timeout: None,
    }
}
