//! CRI client (k8s-cri v1 over containerd's unix socket): pull and remove images, run
//! host-network pod sandboxes, containers, and `exec_sync` — what kubelet would do, minus CNI.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::Channel;

/// Files read through `exec_sync` can be large; CRI replies carry them whole.
const MAX_MESSAGE: usize = 512 << 20;
/// Seconds an `exec_sync` may run.
const EXEC_TIMEOUT_S: i64 = 60;

static POD_SEQ: AtomicU64 = AtomicU64::new(0);

/// The output of `exec_sync`.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// CRI runtime + image service clients on one channel.
#[derive(Debug, Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    log_dir: PathBuf,
}

impl Cri {
    /// `log_dir` is where pod log directories go (CRI requires absolute paths).
    pub fn new(channel: Channel, log_dir: PathBuf) -> Self {
        Self {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE),
            images: ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE),
            log_dir,
        }
    }

    /// The runtime's name and version (`containerd`, `v1.6.20`).
    pub async fn version(&self) -> Result<(String, String)> {
        let v = self
            .runtime
            .clone()
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .context("CRI Version")?
            .into_inner();
        Ok((v.runtime_name, v.runtime_version))
    }

    /// Pulls `image` (e.g. `127.0.0.1:PORT/repo:tag`); returns the image id (`sha256:<config>`).
    pub async fn pull_image(&self, image: &str) -> Result<String> {
        let r = self
            .images
            .clone()
            .pull_image(PullImageRequest {
                image: Some(spec(image)),
                auth: None,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("CRI PullImage {image}"))?;
        Ok(r.into_inner().image_ref)
    }

    /// Every tag containerd's CRI lists (`ListImages`), e.g. `127.0.0.1:PORT/repo:tag`.
    pub async fn list_image_tags(&self) -> Result<Vec<String>> {
        let r = self
            .images
            .clone()
            .list_images(k8s_cri::v1::ListImagesRequest { filter: None })
            .await
            .context("CRI ListImages")?;
        Ok(r.into_inner()
            .images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect())
    }

    /// Removes an image by reference or id.
    pub async fn remove_image(&self, image: &str) -> Result<()> {
        self.images
            .clone()
            .remove_image(RemoveImageRequest {
                image: Some(spec(image)),
            })
            .await
            .with_context(|| format!("CRI RemoveImage {image}"))?;
        Ok(())
    }

    /// Runs a host-network pod sandbox (no CNI involved); returns its id.
    pub async fn run_pod_sandbox(&self, name: &str) -> Result<String> {
        let config = self.pod_config(name)?;
        std::fs::create_dir_all(&config.log_directory)?;
        let r = self
            .runtime
            .clone()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("CRI RunPodSandbox {name}"))?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    fn pod_config(&self, name: &str) -> Result<PodSandboxConfig> {
        let seq = POD_SEQ.fetch_add(1, Ordering::Relaxed);
        let uid = format!("{name}-{}-{seq}", std::process::id());
        Ok(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: "e2e".into(),
                attempt: 0,
            }),
            // Host-network pods share the host UTS namespace: no hostname (runc refuses it).
            log_directory: self.log_dir.join(&uid).to_str().context("log dir")?.into(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Creates and starts a container running `command` from `image` in pod `pod_id`.
    pub async fn start_container(
        &self,
        pod_id: &str,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        // CRI re-reads the sandbox config for container creation; metadata must match the pod's.
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: false,
            })
            .await
            .context("CRI PodSandboxStatus")?
            .into_inner();
        let meta = status
            .status
            .and_then(|s| s.metadata)
            .context("pod without metadata")?;
        let mut sandbox_config = self.pod_config(&meta.name)?;
        sandbox_config.metadata = Some(meta.clone());
        sandbox_config.log_directory = self
            .log_dir
            .join(&meta.uid)
            .to_str()
            .context("log dir")?
            .into();
        let id = self
            .runtime
            .clone()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(spec(image)),
                    command: command.iter().map(|s| (*s).to_owned()).collect(),
                    log_path: format!("{name}.log"),
                    linux: Some(LinuxContainerConfig {
                        security_context: Some(LinuxContainerSecurityContext {
                            namespace_options: Some(host_network()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .with_context(|| format!("CRI CreateContainer {name} from {image}"))?
            .into_inner()
            .container_id;
        self.runtime
            .clone()
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("CRI StartContainer {name}"))?;
        Ok(id)
    }

    /// Runs `cmd` in a running container and returns its output (any exit code).
    pub async fn exec_sync(&self, container_id: &str, cmd: &[&str]) -> Result<ExecOutput> {
        let r = self
            .runtime
            .clone()
            .exec_sync(ExecSyncRequest {
                container_id: container_id.into(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                timeout: EXEC_TIMEOUT_S,
            })
            .await
            .with_context(|| format!("CRI ExecSync {cmd:?}"))?
            .into_inner();
        Ok(ExecOutput {
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
        })
    }

    pub async fn stop_and_remove_container(&self, container_id: &str) -> Result<()> {
        let mut rt = self.runtime.clone();
        rt.stop_container(StopContainerRequest {
            container_id: container_id.into(),
            timeout: 0,
        })
        .await
        .context("CRI StopContainer")?;
        rt.remove_container(RemoveContainerRequest {
            container_id: container_id.into(),
        })
        .await
        .context("CRI RemoveContainer")?;
        Ok(())
    }

    /// Stops and removes a pod sandbox and its containers.
    pub async fn stop_and_remove_pod(&self, pod_id: &str) -> Result<()> {
        let mut rt = self.runtime.clone();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .context("CRI StopPodSandbox")?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .context("CRI RemovePodSandbox")?;
        Ok(())
    }

    /// Runs `image` (`sleep infinity`, so it needs coreutils or busybox) in a fresh pod, reads
    /// `path` with `cat` through `exec_sync`, and removes the pod again.
    pub async fn run_and_read(&self, image: &str, path: &str) -> Result<Vec<u8>> {
        Ok(self.run_and_read_timed(image, path).await?.0)
    }

    /// [`Cri::run_and_read`], also returning when the read finished: the pod's teardown after
    /// it is no part of a time to a running container.
    pub async fn run_and_read_timed(
        &self,
        image: &str,
        path: &str,
    ) -> Result<(Vec<u8>, std::time::Instant)> {
        let pod = self.run_pod_sandbox("read").await?;
        let result = async {
            let ctr = self
                .start_container(&pod, "reader", image, &["sleep", "infinity"])
                .await?;
            let out = self.exec_sync(&ctr, &["cat", path]).await?;
            let read_at = std::time::Instant::now();
            if out.exit_code != 0 {
                bail!(
                    "cat {path} in {image}: exit {}: {}",
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok((out.stdout, read_at))
        }
        .await;
        let cleanup = self.stop_and_remove_pod(&pod).await;
        let read = result?;
        cleanup?;
        Ok(read)
    }
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
