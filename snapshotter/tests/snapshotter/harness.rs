//! Starts the daemon in-process and offers gRPC helpers and a mount helper.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chunksnap::metrics::Metrics;
use chunksnap::remote::{NoRemote, RemoteLayers};
use chunksnap::server::{bind_socket, serve};
use chunksnap::snapshots::local::Local;
use chunksnap::snapshots::service::Service;
use chunksnap::snapshots::snapshotter::Snapshotter;
use chunksnap_proto::snapshots::snapshots_client::SnapshotsClient;
use chunksnap_proto::snapshots::*;
use nix::mount::{MntFlags, MsFlags};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

pub struct Daemon {
    pub root: PathBuf,
    pub sock: PathBuf,
    pub client: SnapshotsClient<Channel>,
    pub metrics: Metrics,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Daemon {
    pub async fn start(root: &Path) -> Self {
        Self::start_with(root, Arc::new(NoRemote)).await
    }

    pub async fn start_with(root: &Path, remote: Arc<dyn RemoteLayers>) -> Self {
        let sock = root.join("run").join("chunksnap.sock");
        let state = root.join("state");
        let local = tokio::task::spawn_blocking(move || Local::open(&state))
            .await
            .unwrap()
            .unwrap();
        let metrics = Metrics::new();
        let service = Service::new(Snapshotter::new(Arc::new(local), remote, metrics.clone()));
        let listener = bind_socket(&sock).unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { serve(listener, service, token).await.unwrap() });
        let channel = Endpoint::from_shared(format!("unix://{}", sock.display()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            root: root.join("state"),
            sock,
            client: SnapshotsClient::new(channel),
            metrics,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        drop(self.client);
        self.shutdown.cancel();
        self.task.await.unwrap();
    }

    pub async fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, Code> {
        self.prepare_labels(key, parent, &[]).await
    }

    pub async fn prepare_labels(
        &mut self,
        key: &str,
        parent: &str,
        labels: &[(&str, &str)],
    ) -> Result<Vec<Mount>, Code> {
        self.client
            .prepare(PrepareSnapshotRequest {
                snapshotter: "chunksnap".into(),
                key: key.into(),
                parent: parent.into(),
                labels: labels_map(labels),
            })
            .await
            .map(|r| r.into_inner().mounts)
            .map_err(|s| s.code())
    }

    pub async fn view(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, Code> {
        self.client
            .view(ViewSnapshotRequest {
                snapshotter: "chunksnap".into(),
                key: key.into(),
                parent: parent.into(),
                labels: HashMap::new(),
            })
            .await
            .map(|r| r.into_inner().mounts)
            .map_err(|s| s.code())
    }

    pub async fn mounts(&mut self, key: &str) -> Result<Vec<Mount>, Code> {
        self.client
            .mounts(MountsRequest {
                snapshotter: "chunksnap".into(),
                key: key.into(),
            })
            .await
            .map(|r| r.into_inner().mounts)
            .map_err(|s| s.code())
    }

    pub async fn commit(&mut self, name: &str, key: &str) -> Result<(), Code> {
        self.commit_labels(name, key, &[]).await
    }

    pub async fn commit_labels(
        &mut self,
        name: &str,
        key: &str,
        labels: &[(&str, &str)],
    ) -> Result<(), Code> {
        self.client
            .commit(CommitSnapshotRequest {
                snapshotter: "chunksnap".into(),
                name: name.into(),
                key: key.into(),
                labels: labels_map(labels),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }

    pub async fn remove(&mut self, key: &str) -> Result<(), Code> {
        self.client
            .remove(RemoveSnapshotRequest {
                snapshotter: "chunksnap".into(),
                key: key.into(),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }

    pub async fn stat(&mut self, key: &str) -> Result<Info, Code> {
        self.client
            .stat(StatSnapshotRequest {
                snapshotter: "chunksnap".into(),
                key: key.into(),
            })
            .await
            .map(|r| r.into_inner().info.unwrap())
            .map_err(|s| s.code())
    }

    pub async fn usage(&mut self, key: &str) -> Result<(i64, i64), Code> {
        self.client
            .usage(UsageRequest {
                snapshotter: "chunksnap".into(),
                key: key.into(),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.size, r.inodes)
            })
            .map_err(|s| s.code())
    }

    pub async fn cleanup(&mut self) -> Result<(), Code> {
        self.client
            .cleanup(CleanupRequest {
                snapshotter: "chunksnap".into(),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }

    /// Names matched by `filters`, sorted, plus how many stream messages carried them.
    pub async fn list(&mut self, filters: &[&str]) -> Result<(Vec<String>, usize), Code> {
        let mut stream = self
            .client
            .list(ListSnapshotsRequest {
                snapshotter: "chunksnap".into(),
                filters: filters.iter().map(|s| s.to_string()).collect(),
            })
            .await
            .map_err(|s| s.code())?
            .into_inner();
        let mut names = Vec::new();
        let mut messages = 0;
        while let Some(msg) = stream.message().await.map_err(|s| s.code())? {
            messages += 1;
            names.extend(msg.info.into_iter().map(|i| i.name));
        }
        names.sort();
        Ok((names, messages))
    }

    /// `snapshots/<id>` directory names on disk, sorted.
    pub fn dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

pub fn labels_map(labels: &[(&str, &str)]) -> HashMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The directory a bind mount exposes (the snapshot's `fs` for writable single layers).
pub fn bind_source(mounts: &[Mount]) -> PathBuf {
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].r#type, "bind", "{mounts:?}");
    PathBuf::from(&mounts[0].source)
}

/// Mounts `mounts` (containerd form) on `target` like containerd's mount package would.
pub struct Mounted(PathBuf);

impl Mounted {
    pub fn new(mounts: &[Mount], target: &Path) -> Self {
        assert_eq!(mounts.len(), 1);
        let m = &mounts[0];
        if m.r#type == "bind" {
            let ro = m.options.iter().any(|o| o == "ro");
            nix::mount::mount(
                Some(Path::new(&m.source)),
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .unwrap();
            if ro {
                nix::mount::mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .unwrap();
            }
        } else {
            assert_eq!(m.r#type, "overlay");
            let data = m.options.join(",");
            nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(data.as_str()),
            )
            .unwrap_or_else(|e| panic!("mount overlay {data}: {e}"));
        }
        Self(target.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
    }
}
