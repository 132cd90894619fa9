//! A real registry for tests: Debian's `docker-registry` (distribution 2.8) on a free 127.0.0.1
//! port, filesystem storage in a temp dir, deletes enabled, behind a [`CountingProxy`] so tests
//! can assert what was served. Killed on drop; its log goes to `registry.log` in its temp dir.
//! [`Registry::start_placed`] runs it elsewhere (e.g. inside a network namespace, for benchmarks).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::proxy::{CountingProxy, RequestRecord};
use crate::util::{Poller, free_port, http_get_status, keep_temp_dirs};

pub(crate) const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry. Clients must use [`Registry::host`] (the proxy), never the upstream.
#[derive(Debug)]
pub struct Registry {
    proxy: CountingProxy,
    child: Child,
    upstream: SocketAddr,
    dir: tempfile::TempDir,
}

/// Where the registry process runs and how the counting proxy reaches it.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Command that runs a program elsewhere (e.g. `ip netns exec NS`); empty: run directly.
    pub prefix: Vec<String>,
    /// The address the registry listens on.
    pub listen: SocketAddr,
    /// The address the counting proxy forwards to: `listen`, or something in front of it (a
    /// delay proxy).
    pub via: SocketAddr,
}

impl Registry {
    /// Starts the registry and the proxy, and waits until `GET /v2/` answers 200 through both.
    pub async fn start() -> Result<Self> {
        let upstream: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        Self::start_placed(Placement {
            prefix: Vec::new(),
            listen: upstream,
            via: upstream,
        })
        .await
    }

    /// [`start`](Self::start) with the registry run as `placement` says. [`upstream`]
    /// (Self::upstream) is then `placement.listen`.
    pub async fn start_placed(placement: Placement) -> Result<Self> {
        let mut dir = tempfile::Builder::new()
            .prefix("chunksnap-e2e-registry.")
            .tempdir()?;
        dir.disable_cleanup(keep_temp_dirs());
        let upstream = placement.listen;
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yaml(&dir.path().join("storage"), upstream))?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let mut cmd = match placement.prefix.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(REGISTRY_BIN);
                c
            }
            None => Command::new(REGISTRY_BIN),
        };
        let child = cmd
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {REGISTRY_BIN}"))?;
        let proxy = CountingProxy::start(placement.via)?;
        let mut reg = Self {
            proxy,
            child,
            upstream,
            dir,
        };
        let url = format!("http://{}/v2/", reg.proxy.addr());
        let mut poll = Poller::new("registry GET /v2/", Duration::from_secs(30));
        loop {
            if let Some(status) = reg.child.try_wait()? {
                bail!(
                    "docker-registry exited: {status}; log: {}",
                    reg.log_path().display()
                );
            }
            if http_get_status(&url).await.ok() == Some(200) {
                break;
            }
            poll.tick().await?;
        }
        reg.reset_counters();
        Ok(reg)
    }

    /// `127.0.0.1:PORT` of the proxy: the registry host for image references.
    pub fn host(&self) -> String {
        self.proxy.addr().to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    /// The registry itself, bypassing the counters (for setup traffic that must not be counted).
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// All requests served since start or the last [`reset_counters`](Self::reset_counters).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.proxy.requests()
    }

    /// Response body bytes sent for all requests.
    pub fn bytes_served(&self) -> u64 {
        self.requests().iter().map(|r| r.bytes).sum()
    }

    /// Response body bytes sent for blob GETs (layers, configs, packs, indexes).
    pub fn blob_bytes_served(&self) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.is_blob_get())
            .map(|r| r.bytes)
            .sum()
    }

    pub fn reset_counters(&self) {
        self.proxy.reset();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_yaml(storage: &Path, addr: SocketAddr) -> String {
    format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
",
        storage = storage.display()
    )
}
