//! One benchmark "node": a fresh containerd (overlayfs, or the chunksnap proxy plugin with a
//! fresh `chunksnap serve` and an empty chunk store), and the timed pull runs on it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bench::case::{Case, Mode};
use crate::bench::profile::Network;
use crate::bench::tools::du;
use crate::chunksnap::Chunksnap;
use crate::oci::BuiltImage;
use crate::{Containerd, ContainerdConfig, ContainerdVersion, Snapshotter};

/// Which snapshotter a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// containerd's overlayfs snapshotter: the plain pull.
    Plain,
    Chunksnap,
    /// chunksnap with `insecure_skip_layer_verification = ["*"]`: what verification costs.
    Unverified,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Chunksnap => "chunksnap",
            Self::Unverified => "unverified",
        }
    }
}

/// A node; on drop containerd stops before chunksnap, then mounts left under the node's dir are
/// detached and the dir removed.
struct Node {
    containerd: Containerd,
    chunksnap: Option<Chunksnap>,
    dir: tempfile::TempDir,
}

impl Node {
    /// A node running containerd `version` whose state (chunksnap's dir, containerd's root and
    /// state) lives under `base`.
    async fn start(
        kind: Kind,
        version: ContainerdVersion,
        net: &Network,
        base: &Path,
    ) -> Result<Self> {
        let mut dir = tempfile::Builder::new()
            .prefix("chunksnap-bench-node.")
            .tempdir_in(base)?;
        dir.disable_cleanup(crate::util::keep_temp_dirs());
        let (snapshotter, chunksnap) = match kind {
            Kind::Plain => (Snapshotter::Overlayfs, None),
            Kind::Chunksnap | Kind::Unverified => {
                if kind == Kind::Unverified {
                    std::fs::write(
                        dir.path().join("config.toml"),
                        "insecure_skip_layer_verification = [\"*\"]\n",
                    )?;
                }
                let mut cs = Chunksnap::new(dir.path(), vec![net.registry.host()])?;
                cs.start().await?;
                (Snapshotter::chunksnap(cs.socket()), Some(cs))
            }
        };
        let containerd = Containerd::start_in(
            &ContainerdConfig {
                snapshotter,
                plain_http_registries: vec![net.registry.host()],
                sandbox_image: net.pause.reference.clone(),
                version,
                pull_progress_timeout: None,
            },
            base,
        )
        .await?;
        Ok(Self {
            containerd,
            chunksnap,
            dir,
        })
    }

    /// Disk used on the node by images: containerd's root (content store + snapshots) plus
    /// chunksnap's root (chunk store + snapshot dirs + DB).
    fn disk(&self) -> Result<u64> {
        let cs = match &self.chunksnap {
            Some(c) => du(c.root())?,
            None => 0,
        };
        Ok(du(&self.containerd.root())? + cs)
    }

    /// `VmHWM` of the chunksnap daemon, bytes.
    fn chunksnap_peak_rss(&self) -> Option<u64> {
        let pid = self.chunksnap.as_ref()?.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Total seconds of remote Prepares so far (`None` without chunksnap or the metric).
    async fn prepare_seconds(&self) -> Option<f64> {
        let cs = self.chunksnap.as_ref()?;
        // No Prepare yet: the histogram may not be printed at all.
        Some(
            cs.metric("chunksnap_prepare_seconds_sum")
                .await
                .unwrap_or(0.0),
        )
    }

    fn log_hint(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.containerd.stop();
        if let Some(cs) = self.chunksnap.as_mut()
            && let Err(e) = cs.stop()
        {
            eprintln!("bench: stopping chunksnap: {e:#}");
        }
        crate::util::unmount_below(self.dir.path());
    }
}

/// What one timed pull run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub kind: Kind,
    /// containerd `major.minor` the node ran.
    pub containerd: String,
    /// A plain pull on another containerd than the bench's own (`BENCH_BASELINES`): shown as
    /// a baseline, left out of every other figure.
    pub baseline: bool,
    /// CRI PullImage(v2) until a container of v2 has read the case's file.
    pub seconds: f64,
    /// Of `seconds`, the CRI `PullImage` (the rest is sandbox, container start and exec, a cost
    /// both sides pay alike).
    pub pull_seconds: f64,
    /// Response body bytes the registry served for that (manifests, configs, blobs, ranges).
    pub bytes_served: u64,
    pub blob_bytes_served: u64,
    pub requests: usize,
    /// Whether any full v2 layer blob was downloaded (chunksnap fell back to a plain pull).
    pub layer_blob_fetched: bool,
    /// Node disk used after the run (v1 + v2, or v2 alone when cold).
    pub disk_bytes: u64,
    /// Peak RSS of `chunksnap serve` over the node's life.
    pub chunksnap_peak_rss: Option<u64>,
    /// Seconds chunksnap spent in remote Prepares (fetch + assemble) during the timed pull,
    /// from its `chunksnap_prepare_seconds` histogram.
    pub chunksnap_prepare_seconds: Option<f64>,
    /// Seconds containerd spent applying v2's layers (plain pulls; shared layers were applied
    /// during the v1 pull), from its own `diff applied d=…` debug log lines.
    pub containerd_apply_seconds: Option<f64>,
}

/// One run: fresh node (its state under `base`), pause (and v1 for updates) pulled untimed,
/// then v2 timed.
#[allow(clippy::too_many_arguments)]
pub async fn run_once(
    kind: Kind,
    version: ContainerdVersion,
    net: &Network,
    case: &Case,
    v1: &BuiltImage,
    v2: &BuiltImage,
    base: &Path,
    keep_log: &Path,
) -> Result<RunResult> {
    let node = Node::start(kind, version, net, base).await?;
    let hint = node.log_hint();
    let result = async {
        let cri = node.containerd.cri().await?;
        cri.pull_image(&net.pause.reference).await?;
        if case.mode == Mode::Update {
            cri.pull_image(&v1.reference).await?;
        }
        let prepare_before = node.prepare_seconds().await;
        net.registry.reset_counters();
        let start = Instant::now();
        cri.pull_image(&v2.reference).await?;
        let pull_seconds = start.elapsed().as_secs_f64();
        // Up to the read: the pod's teardown after it is not part of the time to running.
        let (_, read_at) = cri.run_and_read_timed(&v2.reference, &case.read).await?;
        let seconds = read_at.duration_since(start).as_secs_f64();
        let prepare_seconds = match (prepare_before, node.prepare_seconds().await) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let requests = net.registry.requests();
        write_requests(&requests_log(keep_log, version), start, &requests);
        let new_layers: Vec<&str> = v2
            .layers
            .iter()
            .map(|l| l.digest.as_str())
            .filter(|d| !v1.layers.iter().any(|b| b.digest == *d) || case.mode == Mode::Cold)
            .collect();
        let layer_blob_fetched = requests.iter().any(|r| {
            r.is_blob_get() && r.range.is_none() && new_layers.iter().any(|d| r.path.ends_with(d))
        });
        Ok::<_, anyhow::Error>(RunResult {
            kind,
            containerd: version.name().to_owned(),
            baseline: false,
            seconds,
            pull_seconds,
            bytes_served: requests.iter().map(|r| r.bytes).sum(),
            blob_bytes_served: requests
                .iter()
                .filter(|r| r.is_blob_get())
                .map(|r| r.bytes)
                .sum(),
            requests: requests.len(),
            layer_blob_fetched,
            disk_bytes: node.disk()?,
            chunksnap_peak_rss: node.chunksnap_peak_rss(),
            chunksnap_prepare_seconds: prepare_seconds,
            containerd_apply_seconds: match kind {
                // Every v2 layer, shared ones applied during the v1 pull included, so it
                // compares with assembling the whole image (`chunkconv extract`).
                Kind::Plain => apply_seconds(
                    &node.containerd.log_path(),
                    &v2.layers
                        .iter()
                        .map(|l| l.digest.as_str())
                        .collect::<Vec<_>>(),
                ),
                Kind::Chunksnap | Kind::Unverified => None,
            },
        })
    }
    .await
    .with_context(|| {
        format!(
            "{} run of {} (node dir {}; set CHUNKSNAP_E2E_KEEP=1 to keep logs)",
            kind.name(),
            case.name,
            hint.display()
        )
    });
    // The node's state goes with it: keep chunksnap's log (per-layer timings, fallbacks).
    if let Some(cs) = &node.chunksnap {
        let copied = keep_log
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::copy(cs.log_path(), keep_log));
        if let Err(e) = copied {
            eprintln!("bench: keeping {}: {e}", cs.log_path().display());
        }
    }
    drop(node);
    result
}

/// Keeps what the registry served during the timed part of a run, one request a line
/// (ms from the start of the pull to its arrival and to its last byte, method, status, body
/// bytes, path, range), beside the run's chunksnap log: where the bytes and the time of an
/// update go.
fn write_requests(path: &Path, start: Instant, requests: &[crate::proxy::RequestRecord]) {
    let ms = |at: Instant| at.saturating_duration_since(start).as_secs_f64() * 1e3;
    let mut text = String::from("arrived_ms\tdone_ms\tmethod\tstatus\tbytes\tpath\trange\n");
    for r in requests {
        text.push_str(&format!(
            "{:.1}\t{:.1}\t{}\t{}\t{}\t{}\t{}\n",
            ms(r.arrived),
            ms(r.arrived + r.took),
            r.method,
            r.status,
            r.bytes,
            r.path,
            r.range.as_deref().unwrap_or("-")
        ));
    }
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, text));
    if let Err(e) = written {
        eprintln!("bench: writing {}: {e}", path.display());
    }
}

/// `<run>.containerd<version>.requests.tsv` beside the run's `<run>.chunksnap.log`.
fn requests_log(keep_log: &Path, version: ContainerdVersion) -> PathBuf {
    let name = keep_log
        .file_name()
        .and_then(|n| n.to_str())
        .map_or("run", |n| n.trim_end_matches(".chunksnap.log"));
    keep_log.with_file_name(format!("{name}.containerd{}.requests.tsv", version.name()))
}

/// Sum of containerd's `msg="diff applied" d=<duration> digest="<layer>"` log lines for
/// `layers`; `None` if any of them is missing.
fn apply_seconds(log: &Path, layers: &[&str]) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut total = 0.0;
    for layer in layers {
        let line = text
            .lines()
            .rfind(|l| l.contains("msg=\"diff applied\"") && l.contains(layer))?;
        let d = line.split(' ').find_map(|f| f.strip_prefix("d="))?;
        total += go_duration(d)?;
    }
    Some(total)
}

/// Parses a Go `time.Duration` string (`1.5s`, `834.2ms`, `1m2.5s`, `950µs`) into seconds.
fn go_duration(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::go_duration;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1.5s"), Some(1.5));
        assert_eq!(go_duration("80.607943ms"), Some(0.080607943));
        assert_eq!(go_duration("1m2.5s"), Some(62.5));
        assert_eq!(go_duration("950µs"), Some(0.00095));
        assert_eq!(go_duration("3x"), None);
    }
}
