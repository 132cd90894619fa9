//! Which containerd a test runs ([`ContainerdVersion`]: the system's 1.6, or 1.7 / 2.1 that
//! `make deps` unpacks under `/opt/chunksnap-test`) and the config file each one expects:
//! `version = 2` with CRI under `io.containerd.grpc.v1.cri` and registry `mirrors` on 1.x;
//! `version = 3` with CRI split into `io.containerd.cri.v1.images` / `.runtime` and registry
//! hosts in `config_path` hosts.toml files on 2.x; and what a test configures
//! ([`ContainerdConfig`], [`Snapshotter`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

/// Environment variable choosing the containerd of tests that do not pick one: `1.6` (default),
/// `1.7` or `2.1`.
pub const VERSION_ENV: &str = "CHUNKSNAP_E2E_CONTAINERD";
/// Where `scripts/install-containerd.sh` puts `containerd-<minor>/usr/bin/containerd`.
const PREFIX_ENV: &str = "CHUNKSNAP_CONTAINERD_PREFIX";
const DEFAULT_PREFIX: &str = "/opt/chunksnap-test";

/// Which snapshotter CRI uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshotter {
    /// containerd's built-in overlayfs snapshotter (the reference).
    Overlayfs,
    /// A proxy snapshotter plugin named `name` served on `socket` (chunksnap).
    Proxy { name: String, socket: PathBuf },
}

impl Snapshotter {
    /// The chunksnap proxy plugin at `socket`.
    pub fn chunksnap(socket: impl Into<PathBuf>) -> Self {
        Self::Proxy {
            name: "chunksnap".into(),
            socket: socket.into(),
        }
    }

    /// The name CRI and the snapshots API know it by.
    pub fn name(&self) -> &str {
        match self {
            Self::Overlayfs => "overlayfs",
            Self::Proxy { name, .. } => name,
        }
    }
}

/// How to configure a [`Containerd`].
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    pub snapshotter: Snapshotter,
    /// Registry hosts (`127.0.0.1:PORT`) to pull from over plain HTTP.
    pub plain_http_registries: Vec<String>,
    /// CRI's pod sandbox ("pause") image, e.g. from [`crate::images::TestImages::pause`].
    pub sandbox_image: String,
    /// Which containerd runs, and so which config style it gets.
    pub version: ContainerdVersion,
    /// CRI's `image_pull_progress_timeout` (1.7+; ignored on 1.6); containerd's default when `None`.
    pub pull_progress_timeout: Option<Duration>,
}

/// A containerd release line the e2e matrix runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerdVersion {
    /// Debian 12's `containerd` package (`/usr/bin`), end of life upstream.
    V1_6,
    /// Debian 13 (trixie).
    V1_7,
    /// Debian unstable (sid): config version 3, transfer service, parallel unpack.
    V2_1,
}

impl ContainerdVersion {
    pub const ALL: [Self; 3] = [Self::V1_6, Self::V1_7, Self::V2_1];

    /// The version named by `CHUNKSNAP_E2E_CONTAINERD`, 1.6 when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var(VERSION_ENV) {
            Ok(v) if !v.is_empty() => Self::parse(&v),
            _ => Ok(Self::V1_6),
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "1.6" => Ok(Self::V1_6),
            "1.7" => Ok(Self::V1_7),
            "2.1" => Ok(Self::V2_1),
            other => bail!("{VERSION_ENV}={other}: expected 1.6, 1.7 or 2.1"),
        }
    }

    /// `major.minor`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V1_6 => "1.6",
            Self::V1_7 => "1.7",
            Self::V2_1 => "2.1",
        }
    }

    /// The directory holding this version's `containerd`, `containerd-shim-runc-v2` and `ctr`.
    /// containerd finds its shim through `PATH`, so this directory goes first there.
    pub fn bin_dir(self) -> PathBuf {
        match self {
            Self::V1_6 => PathBuf::from("/usr/bin"),
            _ => {
                let prefix = std::env::var_os(PREFIX_ENV)
                    .map_or_else(|| PathBuf::from(DEFAULT_PREFIX), PathBuf::from);
                prefix.join(format!("containerd-{}/usr/bin", self.name()))
            }
        }
    }

    /// The `containerd` binary; an error naming `make deps` when it is not installed.
    pub fn binary(self) -> Result<PathBuf> {
        let bin = self.bin_dir().join("containerd");
        if !bin.is_file() {
            bail!(
                "containerd {} not found at {} (run `make deps`)",
                self.name(),
                bin.display()
            );
        }
        Ok(bin)
    }

    /// Whether the config file is `version = 3` (containerd 2.x).
    pub fn config_v3(self) -> bool {
        self == Self::V2_1
    }

    /// Whether CRI has `image_pull_progress_timeout` (1.7+).
    pub fn has_pull_progress_timeout(self) -> bool {
        self != Self::V1_6
    }
}

impl std::fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Writes `dir/config.toml` (and on 2.x the hosts.toml files under `dir/certs.d`).
pub fn write_config(dir: &Path, cfg: &ContainerdConfig) -> Result<()> {
    let version = if cfg.version.config_v3() { 3 } else { 2 };
    let mut s = format!("version = {version}\n{}", header(dir));
    if cfg.version.config_v3() {
        let certs = write_hosts(dir, &cfg.plain_http_registries)?;
        s.push_str(&cri_v3(dir, cfg, &certs));
    } else {
        s.push_str(&cri_v2(dir, cfg));
    }
    if let Snapshotter::Proxy { name, socket } = &cfg.snapshotter {
        s.push_str(&format!(
            "\n[proxy_plugins.{name}]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            socket.display()
        ));
    }
    std::fs::write(dir.join("config.toml"), s)?;
    Ok(())
}

/// Writes a hosts.toml for each plain-HTTP registry `host:port` under `dir/certs.d` (the
/// directory CRI's `registry.config_path` names) and returns that directory.
pub fn write_hosts(dir: &Path, hosts: &[String]) -> Result<PathBuf> {
    let certs = dir.join("certs.d");
    for host in hosts {
        // Host dirs are named `host:port`; `server` is the plain-HTTP endpoint.
        let hd = certs.join(host);
        std::fs::create_dir_all(&hd)?;
        std::fs::write(
            hd.join("hosts.toml"),
            format!(
                "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
    }
    Ok(certs)
}

/// Top-level settings, the same in both config versions. Snapshotters that cannot work here only slow startup and fill the log.
fn header(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing", "io.containerd.nri.v1.nri"]

[grpc]
  address = "{d}/state/containerd.sock"

[ttrpc]
  address = "{d}/state/containerd.sock.ttrpc"

[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/root/opt"
"#
    )
}

fn progress_timeout(t: Option<Duration>) -> String {
    t.map(|t| format!("  image_pull_progress_timeout = \"{}ms\"\n", t.as_millis()))
        .unwrap_or_default()
}

/// containerd 1.x (`version = 2`): one CRI plugin; plain-HTTP registries as `mirrors`.
fn cri_v2(dir: &Path, cfg: &ContainerdConfig) -> String {
    let d = dir.display();
    let timeout = if cfg.version.has_pull_progress_timeout() {
        progress_timeout(cfg.pull_progress_timeout)
    } else {
        String::new()
    };
    let mut s = format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this test machine does not grant.
  restrict_oom_score_adj = true
{timeout}  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    disable_snapshot_annotations = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state stays in the temp dir too (default: /run/containerd/runc).
        Root = "{d}/state/runc"
  # Pods use the host network; CNI is pointed at empty dirs.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#,
        sandbox = cfg.sandbox_image,
        snapshotter = cfg.snapshotter.name(),
    );
    for host in &cfg.plain_http_registries {
        s.push_str(&format!(
            "  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n    endpoint = [\"http://{host}\"]\n"
        ));
    }
    s
}

/// containerd 2.x (`version = 3`): CRI's image and runtime halves are separate plugins; the
/// registry is configured by hosts.toml files under `config_path`.
///
/// `disable_snapshot_annotations = false` is what a remote snapshotter needs: without it CRI
/// passes no image reference / layer digest labels to Prepare, and on 2.1 it also makes CRI pull
/// locally (client-side unpack that asks the snapshotter first) instead of through the transfer
/// service.
fn cri_v3(dir: &Path, cfg: &ContainerdConfig, certs: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "{snapshotter}"
  disable_snapshot_annotations = false
{timeout}  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{certs}"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this test machine does not grant.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state stays in the temp dir too (default: /run/containerd/runc).
        Root = "{d}/state/runc"
  # Pods use the host network; CNI is pointed at empty dirs.
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{d}/cni/bin"]
    conf_dir = "{d}/cni/conf"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        sandbox = cfg.sandbox_image,
        snapshotter = cfg.snapshotter.name(),
        timeout = progress_timeout(cfg.pull_progress_timeout),
        certs = certs.display(),
    )
}
