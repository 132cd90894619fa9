//! Running the project's own binaries from tests: a `chunksnap serve` daemon process (so tests
//! can restart or kill it like a real node would) and `chunkconv` invocations.
//!
//! Binaries are looked up in `$CHUNKSNAP_BIN_DIR`, else next to the test executable's
//! target directory (`target/<profile>/`); `make e2e` builds them first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::util::{Poller, free_port, http_get_status};

/// Directory holding the `chunksnap` and `chunkconv` binaries.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CHUNKSNAP_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for name in ["chunksnap", "chunkconv"] {
        ensure!(
            dir.join(name).is_file(),
            "{} not found in {}: run `cargo build -p chunksnap -p chunkconv` first (make e2e does)",
            name,
            dir.display()
        );
    }
    Ok(dir)
}

/// A `chunksnap serve` process with its own root, socket and metrics port.
#[derive(Debug)]
pub struct Chunksnap {
    dir: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    metrics: String,
    plain_http: Vec<String>,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl Chunksnap {
    /// Prepares (does not start) a daemon under `dir`: root `dir/root`, socket `dir/cs.sock`.
    pub fn new(dir: &Path, plain_http: Vec<String>) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            root: dir.join("root"),
            socket: dir.join("cs.sock"),
            metrics: format!("127.0.0.1:{}", free_port()?),
            plain_http,
            extra_args: Vec::new(),
            child: None,
        })
    }

    /// Uses `root` as the state root instead of `dir/root`.
    pub fn with_root(mut self, root: &Path) -> Self {
        self.root = root.to_owned();
        self
    }

    /// Extra `serve` arguments (e.g. `--config FILE`).
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The gRPC socket containerd connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The log file (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("chunksnap.log")
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the daemon and waits until `/healthz` answers and the socket exists.
    pub async fn start(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "chunksnap already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(bin_dir()?.join("chunksnap"));
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .arg("--root")
            .arg(&self.root)
            .arg("--address")
            .arg(&self.socket)
            .arg("--log-level")
            .arg("info,chunksnap=debug,chunksnap_core=debug")
            .arg("serve")
            .arg("--metrics-address")
            .arg(&self.metrics);
        for h in &self.plain_http {
            cmd.arg("--plain-http").arg(h);
        }
        if !self.dir.join("config.toml").exists() {
            std::fs::write(self.dir.join("config.toml"), "")?;
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("starting chunksnap serve")?;
        self.child = Some(child);
        let url = format!("http://{}/healthz", self.metrics);
        let mut poll = Poller::new("chunksnap /healthz", Duration::from_secs(30));
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "chunksnap exited with {status} during start; log {}",
                    self.log_path().display()
                );
            }
            if http_get_status(&url).await.ok() == Some(200) && self.socket.exists() {
                return Ok(());
            }
            poll.tick().await?;
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) =
            crate::util::http_get(&format!("http://{}/metrics", self.metrics)).await?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// One counter or gauge value from `/metrics` (`name` with its label set, as printed).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let text = self.metrics().await?;
        text.lines()
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == name).then(|| v.parse().ok())?
            })
            .with_context(|| format!("metric {name} not in /metrics"))
    }

    /// Stops with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(&child, nix::sys::signal::Signal::SIGTERM);
            let status = child.wait()?;
            ensure!(
                status.success(),
                "chunksnap exited with {status} on SIGTERM"
            );
        }
        Ok(())
    }

    /// Kills with SIGKILL (a crash).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(&child, nix::sys::signal::Signal::SIGKILL);
            child.wait()?;
        }
        Ok(())
    }

    /// Runs a node subcommand (`status`, `fsck`, …) against this daemon's root.
    pub fn node_command(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(bin_dir()?.join("chunksnap"))
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .context("running chunksnap")
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, sig);
}

impl Drop for Chunksnap {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Runs `chunkconv ARGS --json` and returns its JSON summary.
pub fn chunkconv_json(args: &[&str]) -> Result<Value> {
    let out = Command::new(bin_dir()?.join("chunkconv"))
        .args(args)
        .arg("--json")
        .output()
        .context("running chunkconv")?;
    ensure!(
        out.status.success(),
        "chunkconv {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("parsing chunkconv --json output")
}

/// `chunkconv convert --plain-http REF` and its summary.
pub fn convert(reference: &str) -> Result<Value> {
    chunkconv_json(&["convert", "--plain-http", reference])
}
