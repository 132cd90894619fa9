//! A private containerd for tests (1.6, 1.7 or 2.1: [`ContainerdVersion`]): its own root, state, sockets and config in a temp dir, so
//! several can run at once. CRI is set up for host-network pods without CNI, plain-HTTP pulls
//! from the test registry, a sandbox image from that registry, and the chosen snapshotter
//! (optionally the chunksnap proxy plugin). Stopped with SIGTERM on drop; the shims it started are
//! killed and mounts left under its root are detached before the temp dir is removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tonic::transport::Channel;

use crate::containerd_toml::{ContainerdConfig, ContainerdVersion, write_config};
use crate::cri::Cri;
use crate::native::Native;
use crate::util::{Poller, keep_temp_dirs, unmount_below};

/// A running containerd.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    snapshotter: String,
    version: ContainerdVersion,
}

impl Containerd {
    /// Starts containerd and waits until both the native API (Version) and CRI (Version) answer.
    pub async fn start(cfg: &ContainerdConfig) -> Result<Self> {
        Self::start_in(cfg, Path::new("/tmp")).await
    }

    /// [`Containerd::start`] with its temp dir (root, state, config, log) under `parent`.
    pub async fn start_in(cfg: &ContainerdConfig, parent: &Path) -> Result<Self> {
        let write = |dir: &Path| write_config(dir, cfg);
        Self::start_custom(cfg.version, cfg.snapshotter.name(), parent, write).await
    }

    /// containerd `version` with a config `write` puts at `<dir>/config.toml`, where `dir` is
    /// the new temp dir; the config must use the same layout as [`write_config`]: `root`,
    /// `state`, `state/containerd.sock`, `cni/{bin,conf}`. `snapshotter` is CRI's.
    pub async fn start_custom(
        version: ContainerdVersion,
        snapshotter: &str,
        parent: &Path,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Self> {
        let mut dir = tempfile::Builder::new()
            .prefix("chunksnap-e2e-ctd.")
            .tempdir_in(parent)?;
        dir.disable_cleanup(keep_temp_dirs());
        for sub in ["root", "state", "cni/bin", "cni/conf", "pods"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        write(dir.path())?;
        let child = spawn(dir.path(), version)?;
        let mut ctd = Self {
            child: Some(child),
            dir,
            snapshotter: snapshotter.to_owned(),
            version,
        };
        ctd.wait_ready()
            .await
            .with_context(|| format!("containerd log: {}", ctd.log_path().display()))?;
        Ok(ctd)
    }

    /// Restarts containerd on the same root, state and config (a node's containerd restarting):
    /// SIGKILL when `crash`, else a clean stop; then waits until it answers again.
    pub async fn restart(&mut self, crash: bool) -> Result<()> {
        if crash && let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        self.stop();
        self.child = Some(spawn(self.dir.path(), self.version)?);
        self.wait_ready()
            .await
            .with_context(|| format!("containerd log: {}", self.log_path().display()))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let mut poll = Poller::new("containerd native + CRI API", Duration::from_secs(60));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("containerd exited: {status}");
            }
            if self.socket().exists() && self.probe().await.is_ok() {
                return Ok(());
            }
            poll.tick().await?;
        }
    }

    async fn probe(&self) -> Result<()> {
        self.native().await?.version().await?;
        self.cri().await?.version().await?;
        Ok(())
    }

    /// The gRPC socket (native API and CRI).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("state/containerd.sock")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// Which containerd this is.
    pub fn version(&self) -> ContainerdVersion {
        self.version
    }

    /// The snapshotter CRI is configured with.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// Where the overlayfs snapshotter keeps `snapshots/<id>/fs`.
    pub fn overlayfs_root(&self) -> PathBuf {
        self.root().join("io.containerd.snapshotter.v1.overlayfs")
    }

    /// A fresh channel to the gRPC socket.
    pub async fn channel(&self) -> Result<Channel> {
        containerd_client::connect(self.socket())
            .await
            .with_context(|| format!("connect {}", self.socket().display()))
    }

    /// CRI client (runtime + image services).
    pub async fn cri(&self) -> Result<Cri> {
        Ok(Cri::new(
            self.channel().await?,
            self.dir.path().join("pods"),
        ))
    }

    /// Native API client in namespace `k8s.io` (where CRI keeps everything).
    pub async fn native(&self) -> Result<Native> {
        Ok(Native::new(self.channel().await?))
    }

    /// Stops containerd now (SIGTERM, then SIGKILL after 10 s) and cleans up; also done on drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        // Shutdown, not readiness: a bounded wait for the exit, then force.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        kill_task_inits(&self.state());
        kill_shims(&self.socket());
        unmount_below(self.dir.path());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs containerd `version` with `dir/config.toml`, appending to `dir/containerd.log`. Its own
/// bin dir goes first in `PATH`, so it starts the shim of its own release.
fn spawn(dir: &Path, version: ContainerdVersion) -> Result<Child> {
    let bin = version.binary()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))?;
    let mut path = std::ffi::OsString::from(version.bin_dir());
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    Command::new(&bin)
        .env("PATH", path)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))
}

/// Kills the init process of every task still running (pods a failed test left behind): its
/// pid is in `<state>/io.containerd.runtime.v2.task/<ns>/<id>/init.pid`.
fn kill_task_inits(state: &Path) {
    let tasks = state.join("io.containerd.runtime.v2.task");
    let Ok(namespaces) = std::fs::read_dir(&tasks) else {
        return;
    };
    for ns in namespaces.flatten() {
        let Ok(ids) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for id in ids.flatten() {
            let pid = std::fs::read_to_string(id.path().join("init.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| *p > 1) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Kills the runc shims started by the containerd listening on `socket` (found by their
/// `-address <socket>` argument), so their containers' mounts can go.
fn kill_shims(socket: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let want = socket.as_os_str().as_encoded_bytes();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        let ours = args.windows(2).any(|w| w[0] == b"-address" && w[1] == want);
        if is_shim && ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
