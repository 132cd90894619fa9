//! Setup shared by the scenarios: a registry + a containerd wired to a chunksnap daemon, and an
//! oracle containerd on the overlayfs snapshotter pulling from the same registry.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::chunksnap::Chunksnap;
use chunksnap_e2e::treecmp::{CompareOptions, compare_trees};
use chunksnap_e2e::util::NodeDir;
use chunksnap_e2e::{BuiltImage, Containerd, ContainerdVersion, Env, Snapshotter};

/// A node: containerd whose CRI uses the chunksnap proxy snapshotter.
pub struct Node {
    pub env: Env,
    pub chunksnap: Chunksnap,
    /// Held for its drop: removed (or kept) after the daemons above have stopped.
    _dir: NodeDir,
}

impl Node {
    /// Starts registry, containerd (CRI snapshotter = chunksnap) and the chunksnap daemon.
    pub async fn start() -> Result<Self> {
        Self::start_on(ContainerdVersion::from_env()?).await
    }

    /// [`Node::start`] on containerd `version`.
    pub async fn start_on(version: ContainerdVersion) -> Result<Self> {
        let dir = NodeDir::new("chunksnap-e2e-node-")?;
        let socket = dir.path().join("cs.sock");
        let env = Env::start_on(version, Snapshotter::chunksnap(&socket)).await?;
        let mut chunksnap = Chunksnap::new(dir.path(), vec![env.registry.host()])?;
        chunksnap.start().await?;
        ensure!(chunksnap.socket() == socket, "socket path mismatch");
        env.registry.reset_counters();
        Ok(Self {
            env,
            chunksnap,
            _dir: dir,
        })
    }

    /// Layer directories (bottom first) of `image` on this node.
    pub async fn layer_dirs(&self, image: &BuiltImage) -> Result<Vec<std::path::PathBuf>> {
        let native = self.env.containerd.native().await?;
        native.layer_dirs("chunksnap", &image.reference).await
    }
}

/// The oracle: containerd's own overlayfs snapshotter on the same registry.
pub async fn oracle(env: &Env) -> Result<Containerd> {
    Containerd::start(&env.containerd_config(Snapshotter::Overlayfs)).await
}

/// Pulls `image` on the oracle and asserts every layer chunksnap assembled on `node` equals
/// containerd's own unpacking, file by file.
pub async fn assert_layers_match_oracle(
    node: &Node,
    oracle: &Containerd,
    image: &BuiltImage,
) -> Result<()> {
    oracle.cri().await?.pull_image(&image.reference).await?;
    let want = oracle
        .native()
        .await?
        .layer_dirs("overlayfs", &image.reference)
        .await?;
    let got = node.layer_dirs(image).await?;
    ensure!(want.len() == got.len(), "layer count differs");
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        // The layer root is the snapshot directory itself, made when the snapshot was
        // created, and whiteouts get no times from containerd's applier: those mtimes are
        // moments of unpacking on both sides, not layer content.
        let opts = CompareOptions {
            ignore_root_mtime: true,
            ignore_whiteout_mtime: true,
            ..CompareOptions::default()
        };
        let diffs = compare_trees(w, g, &opts).with_context(|| format!("comparing layer {i}"))?;
        ensure!(
            diffs.is_empty(),
            "layer {i} of {} differs from containerd's overlayfs unpack ({} differences), first: {:#?}",
            image.reference,
            diffs.len(),
            &diffs[..diffs.len().min(10)]
        );
    }
    Ok(())
}

/// Digests of `image`'s layer blobs the registry was asked for (with or without Range).
pub fn layer_blob_gets(env: &Env, image: &BuiltImage) -> BTreeSet<String> {
    let layers: BTreeSet<String> = image.layer_digests().into_iter().collect();
    env.registry
        .requests()
        .into_iter()
        .filter(|r| r.is_blob_get())
        .filter_map(|r| r.path.rsplit('/').next().map(str::to_owned))
        .filter(|d| layers.contains(d))
        .collect()
}

/// The `outcome` counter of chunksnap's prepares.
pub async fn prepares(node: &Node, outcome: &str) -> Result<f64> {
    node.chunksnap
        .metric(&format!(
            "chunksnap_prepares_total{{outcome=\"{outcome}\"}}"
        ))
        .await
}
