//! Setup shared by the reliability tests: a node whose registry traffic passes a fault proxy,
//! small generated images, the overlayfs oracle, and checks for damage a failure may leave
//! (corrupt chunks, temp chunk files, half-made snapshot directories).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::chunksnap::Chunksnap;
use chunksnap_e2e::faults::FaultProxy;
use chunksnap_e2e::registry::Placement;
use chunksnap_e2e::treecmp::{CompareOptions, compare_trees};
use chunksnap_e2e::util::NodeDir;
use chunksnap_e2e::util::free_port;
use chunksnap_e2e::{
    BuiltImage, Containerd, ContainerdConfig, ContainerdVersion, Env, ImageSpec, Registry,
    Snapshotter, TestImages,
};
use chunksnap_testkit::noise;

/// A node (containerd + chunksnap) on a registry reached through a [`FaultProxy`]:
/// clients → counting proxy → fault proxy → docker-registry.
pub struct FaultyNode {
    pub env: Env,
    pub chunksnap: Chunksnap,
    pub faults: FaultProxy,
    /// `host:port` of the registry itself, bypassing both proxies: a second, healthy registry
    /// host (plain HTTP for containerd and chunksnap) serving the same repositories.
    pub direct_host: String,
    /// Held for its drop: removed (or kept) after the daemons above have stopped.
    _dir: NodeDir,
}

impl FaultyNode {
    /// Starts everything; `config` is chunksnap's `config.toml` text.
    pub async fn start(config: &str) -> Result<Self> {
        Self::start_with(config, None).await
    }

    /// Like [`start`](Self::start), with chunksnap's state root at `root`.
    pub async fn start_with(config: &str, root: Option<&Path>) -> Result<Self> {
        Self::start_opts(config, root, &[]).await
    }

    /// Like [`start_with`](Self::start_with); `extra_hosts` are more plain-HTTP registries
    /// for containerd and chunksnap.
    pub async fn start_opts(
        config: &str,
        root: Option<&Path>,
        extra_hosts: &[String],
    ) -> Result<Self> {
        Self::start_versioned(ContainerdVersion::from_env()?, config, root, extra_hosts).await
    }

    /// [`start`](Self::start) on containerd `version`.
    pub async fn start_on(version: ContainerdVersion, config: &str) -> Result<Self> {
        Self::start_versioned(version, config, None, &[]).await
    }

    /// [`start_on`](Self::start_on) with CRI's `image_pull_progress_timeout` set.
    pub async fn start_with_progress_timeout(
        version: ContainerdVersion,
        config: &str,
        timeout: Duration,
    ) -> Result<Self> {
        Self::start_full(version, config, None, &[], Some(timeout)).await
    }

    async fn start_versioned(
        version: ContainerdVersion,
        config: &str,
        root: Option<&Path>,
        extra_hosts: &[String],
    ) -> Result<Self> {
        Self::start_full(version, config, root, extra_hosts, None).await
    }

    async fn start_full(
        version: ContainerdVersion,
        config: &str,
        root: Option<&Path>,
        extra_hosts: &[String],
        pull_progress_timeout: Option<Duration>,
    ) -> Result<Self> {
        let dir = NodeDir::new("chunksnap-e2e-rel-")?;
        let upstream: std::net::SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let faults = FaultProxy::start(upstream)?;
        let registry = Registry::start_placed(Placement {
            prefix: Vec::new(),
            listen: upstream,
            via: faults.addr(),
        })
        .await?;
        let images = TestImages::new(&registry)?;
        let pause = images.pause().await?;
        let socket = dir.path().join("cs.sock");
        let direct_host = upstream.to_string();
        let mut hosts = vec![registry.host(), direct_host.clone()];
        hosts.extend_from_slice(extra_hosts);
        let containerd = Containerd::start(&ContainerdConfig {
            snapshotter: Snapshotter::chunksnap(&socket),
            plain_http_registries: hosts.clone(),
            sandbox_image: pause.reference.clone(),
            version,
            pull_progress_timeout,
        })
        .await?;
        std::fs::write(dir.path().join("config.toml"), config)?;
        let mut chunksnap = Chunksnap::new(dir.path(), hosts)?;
        if let Some(root) = root {
            chunksnap = chunksnap.with_root(root);
        }
        chunksnap.start().await?;
        ensure!(chunksnap.socket() == socket, "socket path mismatch");
        registry.reset_counters();
        let env = Env {
            containerd,
            images,
            pause,
            registry,
        };
        Ok(Self {
            env,
            chunksnap,
            faults,
            direct_host,
            _dir: dir,
        })
    }

    /// The `outcome` counter of chunksnap's prepares.
    pub async fn prepares(&self, outcome: &str) -> Result<f64> {
        self.chunksnap
            .metric(&format!(
                "chunksnap_prepares_total{{outcome=\"{outcome}\"}}"
            ))
            .await
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.chunksnap.log_path()).unwrap_or_default()
    }
}

/// An uncompressed tar of `files` (path, bytes), regular files 0644 with fixed times, each
/// preceded by entries for its parent directories (an implicit directory's mtime would be the
/// moment of unpacking, which no oracle can match).
pub fn tar_of(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, data) in files {
        let parents: Vec<&Path> = Path::new(path).ancestors().skip(1).collect();
        for parent in parents.into_iter().rev() {
            let p = parent.to_string_lossy().into_owned();
            if p.is_empty() || dirs.contains(&p) {
                continue;
            }
            dirs.insert(p.clone());
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o755);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, format!("{p}/"), std::io::empty())?;
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

/// A two-layer image unique to `seed`: per layer `files` random files of `file_size` bytes and
/// a few small text files. Pushed as `rel-<name>:<seed>`.
pub async fn unique_image(
    env: &Env,
    name: &str,
    seed: u64,
    files: usize,
    file_size: usize,
) -> Result<BuiltImage> {
    let mut tars = Vec::new();
    for layer in 0..2u64 {
        let mut entries = Vec::new();
        for f in 0..files as u64 {
            let s = seed * 1000 + layer * 100 + f;
            entries.push((format!("l{layer}/blob{f}.bin"), noise(s, file_size)));
        }
        for f in 0..8 {
            entries.push((
                format!("l{layer}/etc/small{f}.txt"),
                format!("seed {seed} layer {layer} file {f}\n").into_bytes(),
            ));
        }
        tars.push(tar_of(&entries)?);
    }
    env.images
        .push_tars(
            &format!("rel-{name}"),
            &seed.to_string(),
            tars,
            ImageSpec::default(),
        )
        .await
}

/// Pulls `image` on `oracle` (containerd's overlayfs) and checks that every layer `node`'s
/// chunksnap holds equals it. Returns the number of differences found (0 = equal).
pub async fn oracle_differences(
    node: &Containerd,
    oracle: &Containerd,
    image: &BuiltImage,
) -> Result<usize> {
    oracle.cri().await?.pull_image(&image.reference).await?;
    let want = oracle
        .native()
        .await?
        .layer_dirs("overlayfs", &image.reference)
        .await?;
    let got = node
        .native()
        .await?
        .layer_dirs("chunksnap", &image.reference)
        .await?;
    ensure!(want.len() == got.len(), "layer count differs");
    let opts = CompareOptions {
        ignore_root_mtime: true,
        ignore_whiteout_mtime: true,
        ..CompareOptions::default()
    };
    let mut n = 0;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let diffs = compare_trees(w, g, &opts).with_context(|| format!("comparing layer {i}"))?;
        if !diffs.is_empty() {
            eprintln!(
                "{} layer {i} differs from the oracle: {:#?}",
                image.reference,
                &diffs[..diffs.len().min(5)]
            );
        }
        n += diffs.len();
    }
    Ok(n)
}

/// `chunksnap fsck`'s corrupt-chunk count (fails if fsck cannot run).
pub fn fsck_corrupt(chunksnap: &Chunksnap) -> Result<u64> {
    let out = chunksnap.node_command(&["fsck"])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("chunks:"))
        .with_context(|| format!("unexpected fsck output: {text}"))?;
    // "chunks: N ok, M corrupt, T temp files"
    let corrupt = line
        .split(',')
        .find(|p| p.trim_end().ends_with("corrupt"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected fsck line: {line}"))?;
    Ok(corrupt)
}

/// What a crash or failure may leave under a state root: `snapshots/new-*`, `snapshots/rm-*`
/// and `.tmp-*` files below `chunks/`.
pub fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir(root.join("snapshots")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("new-") || name.starts_with("rm-") {
                found.push(e.path());
            }
        }
    }
    // Wherever the store keeps its shards below `chunks/`.
    for e in walkdir::WalkDir::new(root.join("chunks"))
        .into_iter()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            found.push(e.into_path());
        }
    }
    found
}

/// [`leftovers`] that are still there once no removal is in progress and 60 s have passed: a
/// removal containerd's garbage collector started (`rm-*` while its commit and delete run)
/// passes; a real leftover never goes. A removal's commit waits for the disk (fsync), which on
/// a loaded 2-core VM can take long, so the wait follows the daemon's
/// `chunksnap_removals_in_progress` gauge (for at most 10 minutes) rather than a fixed window.
pub async fn lasting_leftovers(chunksnap: &Chunksnap) -> Vec<PathBuf> {
    let root = chunksnap.root();
    let started = std::time::Instant::now();
    let window = std::time::Duration::from_secs(60);
    let limit = std::time::Duration::from_secs(600);
    loop {
        // One look decides: containerd's collector may start a removal (`rm-*`) at any moment,
        // so an empty look followed by a second one could report a removal just begun.
        let left = leftovers(root);
        if left.is_empty() {
            return left;
        }
        let removing = chunksnap
            .metric("chunksnap_removals_in_progress")
            .await
            .unwrap_or(0.0);
        let waited = started.elapsed();
        if waited >= limit || (waited >= window && removing == 0.0) {
            for path in &left {
                describe_leftover(path);
            }
            return left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Prints what a leftover holds (paths and ages), so a failure in CI says what was left.
fn describe_leftover(path: &Path) {
    eprintln!("leftover {}:", path.display());
    for e in walkdir::WalkDir::new(path).into_iter().flatten().take(20) {
        let age = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .map_or_else(|| "?".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()));
        eprintln!("  {} (modified {age} ago)", e.path().display());
    }
}

/// The oracle: containerd's own overlayfs snapshotter on the same registry.
pub async fn oracle(env: &Env) -> Result<Containerd> {
    Containerd::start(&env.containerd_config(Snapshotter::Overlayfs)).await
}

/// Converts `reference` (blocking; `chunkconv` is a separate process).
pub async fn convert(reference: &str) -> Result<()> {
    let r = reference.to_owned();
    tokio::task::spawn_blocking(move || chunksnap_e2e::chunksnap::convert(&r)).await??;
    Ok(())
}
