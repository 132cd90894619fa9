//! Pre-warm against real containerd + CRI + docker-registry: `chunksnap prefetch --pull`
//! (`pull`), and the rollout watcher driven by a stub API server replaying a recorded rolling
//! update (`watch`).

mod auth;
mod figure;
mod pull;
mod watch;

use std::path::Path;

use anyhow::{Result, ensure};
use chunksnap_e2e::chunksnap::{Chunksnap, convert};
use chunksnap_e2e::oci::ImageSpec;
use chunksnap_e2e::util::NodeDir;
use chunksnap_e2e::{
    BuiltImage, Containerd, ContainerdConfig, ContainerdVersion, Env, Registry, Snapshotter,
    TestImages,
};
use chunksnap_testkit::noise;

use crate::reliability::common::tar_of;

/// A node whose chunksnap daemon pre-warms through this node's containerd.
pub struct PrewarmNode {
    pub env: Env,
    pub chunksnap: Chunksnap,
    dir: NodeDir,
}

impl PrewarmNode {
    pub async fn start() -> Result<Self> {
        Self::start_with(&[], "").await
    }

    /// [`PrewarmNode::start`] with more plain-HTTP registry hosts and config lines.
    pub async fn start_with(extra_hosts: &[String], extra_config: &str) -> Result<Self> {
        let dir = NodeDir::new("chunksnap-e2e-prewarm-")?;
        let socket = dir.path().join("cs.sock");
        let registry = Registry::start().await?;
        let images = TestImages::new(&registry)?;
        let pause = images.pause().await?;
        let mut hosts = vec![registry.host()];
        hosts.extend_from_slice(extra_hosts);
        let containerd = Containerd::start(&ContainerdConfig {
            snapshotter: Snapshotter::chunksnap(&socket),
            plain_http_registries: hosts.clone(),
            sandbox_image: pause.reference.clone(),
            version: ContainerdVersion::from_env()?,
            pull_progress_timeout: None,
        })
        .await?;
        let env = Env {
            containerd,
            images,
            pause,
            registry,
        };
        let prewarm_socket = dir.path().join("prewarm.sock");
        // No jitter: one node, and the test waits for the result.
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "cri_address = {:?}\nprewarm_address = {:?}\nprewarm_jitter_ms = 0\n{extra_config}",
                env.containerd.socket(),
                prewarm_socket
            ),
        )?;
        let mut chunksnap = Chunksnap::new(dir.path(), hosts)?;
        chunksnap.start().await?;
        ensure!(chunksnap.socket() == socket, "socket path mismatch");
        env.registry.reset_counters();
        Ok(Self {
            env,
            chunksnap,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A pre-warm counter of the daemon.
    pub async fn prewarms(&self, outcome: &str) -> Result<f64> {
        self.chunksnap
            .metric(&format!("chunksnap_prewarm_total{{outcome=\"{outcome}\"}}"))
            .await
    }

    /// Digests of `image`'s layer blobs the registry was asked for.
    pub fn layer_blob_gets(&self, image: &BuiltImage) -> Vec<String> {
        let layers = image.layer_digests();
        self.blob_gets()
            .into_iter()
            .filter_map(|path| path.rsplit('/').next().map(str::to_owned))
            .filter(|d| layers.contains(d))
            .collect()
    }

    /// Registry requests for blobs (layers, packs, indexes): what a present image must not cause.
    pub fn blob_gets(&self) -> Vec<String> {
        self.env
            .registry
            .requests()
            .into_iter()
            .filter(|r| r.is_blob_get())
            .map(|r| r.path)
            .collect()
    }
}

/// `repo:v1` and `repo:v2` (v2 changes two of v1's 24 files and adds one), converted, and
/// `repo-plain:v1`, not converted. Each has a busybox layer below (`sleep`, `cat`: containers
/// can run), then the app layer.
pub async fn app_images(
    images: &TestImages,
    repo: &str,
) -> Result<(BuiltImage, BuiltImage, BuiltImage)> {
    let files = |version: u64| {
        let mut entries: Vec<(String, Vec<u8>)> = (0..24u64)
            .map(|f| {
                let seed = if f < 2 {
                    9000 + version * 10 + f
                } else {
                    500 + f
                };
                (format!("app/lib{f}.so"), noise(seed, 256 << 10))
            })
            .collect();
        entries.push((
            "app/VERSION".to_owned(),
            format!("v{version}\n").into_bytes(),
        ));
        if version == 2 {
            entries.push(("app/new.bin".to_owned(), noise(7777, 64 << 10)));
        }
        tar_of(&entries)
    };
    let base = busybox_layer()?;
    let spec = || ImageSpec {
        cmd: vec!["/bin/sleep".into(), "infinity".into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    let v1 = images
        .push_tars(repo, "v1", vec![base.clone(), files(1)?], spec())
        .await?;
    let v2 = images
        .push_tars(repo, "v2", vec![base.clone(), files(2)?], spec())
        .await?;
    let plain = images
        .push_tars(
            &format!("{repo}-plain"),
            "v1",
            vec![base, files(3)?],
            spec(),
        )
        .await?;
    convert(&v1.reference)?;
    convert(&v2.reference)?;
    Ok((v1, v2, plain))
}

/// The host's static busybox as `bin/busybox`, with `sleep` and `cat` linked to it.
fn busybox_layer() -> Result<Vec<u8>> {
    let binary = std::fs::read("/usr/bin/busybox")?;
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_mtime(1_700_000_000);
    dir.set_size(0);
    b.append_data(&mut dir, "bin/", std::io::empty())?;
    let mut file = tar::Header::new_ustar();
    file.set_mode(0o755);
    file.set_mtime(1_700_000_000);
    file.set_size(binary.len() as u64);
    b.append_data(&mut file, "bin/busybox", binary.as_slice())?;
    for tool in ["sleep", "cat"] {
        let mut link = tar::Header::new_ustar();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_mtime(1_700_000_000);
        link.set_size(0);
        b.append_link(&mut link, format!("bin/{tool}"), "busybox")?;
    }
    Ok(b.into_inner()?)
}
