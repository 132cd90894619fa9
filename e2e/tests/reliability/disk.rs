//! A full disk: chunksnap's state root on a small tmpfs. A pull that does not fit falls back
//! or fails with a clear message, leaves no partial chunk or half-made directory, and the same
//! pull succeeds remotely once there is room.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use super::common::{
    FaultyNode, convert, fsck_corrupt, lasting_leftovers, oracle, oracle_differences, unique_image,
};

/// A tmpfs mounted for the test; lazily unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ],
            path,
        )?;
        Ok(Self(path.to_owned()))
    }

    fn resize(&self, size: &str) -> Result<()> {
        mount(&["-o", &format!("remount,size={size}")], &self.0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str], path: &Path) -> Result<()> {
    let st = Command::new("mount")
        .args(args)
        .arg(path)
        .status()
        .context("running mount")?;
    ensure!(
        st.success(),
        "mount {args:?} {} failed: {st}",
        path.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_falls_back_cleanly_then_succeeds() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let base = tempfile::Builder::new()
        .prefix("chunksnap-e2e-disk-")
        .tempdir()?;
    let root = base.path().join("root");
    let tmpfs = Tmpfs::mount(&root, "4m")?;
    let node = FaultyNode::start_with("", Some(&root)).await?;
    // Two layers of 6 MiB of incompressible files: neither the chunks nor a fallback unpack fit.
    let img = unique_image(&node.env, "disk", 1, 2, 3 << 20).await?;
    convert(&img.reference).await?;
    let cri = node.env.containerd.cri().await?;
    let first = cri.pull_image(&img.reference).await;
    let fallback = node.prepares("fallback").await?;
    eprintln!(
        "full disk: pull {} ({fallback} fallback prepares)",
        match &first {
            Ok(_) => "succeeded".to_owned(),
            Err(e) => format!("failed: {e:#}"),
        }
    );
    ensure!(
        fallback >= 1.0,
        "the layer that does not fit should fall back"
    );
    let log = node.log();
    let enospc = log
        .lines()
        .find(|l| l.contains("fell back") && l.contains("No space left on device"));
    ensure!(
        enospc.is_some(),
        "no fallback log line names the full disk; log: {}",
        node.chunksnap.log_path().display()
    );
    eprintln!("log: {}", enospc.unwrap_or_default());
    let left = lasting_leftovers(&node.chunksnap).await;
    ensure!(left.is_empty(), "leftovers on the full disk: {left:?}");
    ensure!(
        fsck_corrupt(&node.chunksnap)? == 0,
        "fsck found corrupt chunks"
    );

    tmpfs.resize("64m")?;
    let remote0 = node.prepares("remote").await?;
    cri.pull_image(&img.reference).await?;
    let remote = node.prepares("remote").await? - remote0;
    ensure!(
        remote >= 1.0,
        "with room again, the layer should be assembled remotely"
    );
    eprintln!(
        "after remount: {remote} layers assembled remotely; metadata database reopened: {}",
        node.log().contains("metadata database reopened")
    );
    let oracle = oracle(&node.env).await?;
    ensure!(
        oracle_differences(&node.env.containerd, &oracle, &img).await? == 0,
        "layers differ from the oracle"
    );
    let left = lasting_leftovers(&node.chunksnap).await;
    ensure!(left.is_empty(), "leftovers after the second pull: {left:?}");
    ensure!(
        fsck_corrupt(&node.chunksnap)? == 0,
        "fsck found corrupt chunks"
    );
    drop(node);
    drop(tmpfs);
    Ok(())
}
