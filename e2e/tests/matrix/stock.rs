//! `chunksnap containerd-config` on the stock config of containerd 1.6, 1.7 and 2.1
//! (`containerd config default`): it wires the plugin in, a second run changes nothing, and
//! containerd started with the result serves a CRI pull assembled by chunksnap.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::chunksnap::{Chunksnap, bin_dir, convert};
use chunksnap_e2e::stock_config::{default_config, localize};
use chunksnap_e2e::util::NodeDir;
use chunksnap_e2e::{Containerd, ContainerdVersion, Registry, TestImages};

/// `chunksnap --address SOCKET containerd-config --containerd-config PATH`: stdout.
fn containerd_config(socket: &Path, path: &Path) -> Result<String> {
    let out = Command::new(bin_dir()?.join("chunksnap"))
        .arg("--address")
        .arg(socket)
        .arg("containerd-config")
        .arg("--containerd-config")
        .arg(path)
        .output()
        .context("running chunksnap containerd-config")?;
    ensure!(
        out.status.success(),
        "chunksnap containerd-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn stock_config_is_wired_and_serves_a_pull(version: ContainerdVersion) -> Result<()> {
    let dir = NodeDir::new("chunksnap-e2e-stock-")?;
    let registry = Registry::start().await?;
    let images = TestImages::new(&registry)?;
    let pause = images.pause().await?;
    let img = images.features().await?;
    convert(&img.reference)?;
    let mut chunksnap = Chunksnap::new(dir.path(), vec![registry.host()])?;
    chunksnap.start().await?;
    let stock = default_config(version)?;
    let socket = chunksnap.socket().to_owned();
    let host = registry.host();
    let sandbox = pause.reference.clone();
    let containerd = Containerd::start_custom(version, "chunksnap", Path::new("/tmp"), |d| {
        let path = d.join("config.toml");
        std::fs::write(&path, &stock)?;
        let first = containerd_config(&socket, &path)?;
        ensure!(first.contains("updated"), "first run: {first}");
        let wired = std::fs::read_to_string(&path)?;
        let second = containerd_config(&socket, &path)?;
        ensure!(
            second.contains("already uses chunksnap"),
            "second run: {second}"
        );
        ensure!(
            std::fs::read_to_string(&path)? == wired,
            "second run changed the config"
        );
        std::fs::write(&path, localize(&wired, version, d, &sandbox, &[host])?)?;
        Ok(())
    })
    .await
    .with_context(|| format!("containerd {version} on its stock config + chunksnap"))?;
    registry.reset_counters();
    let cri = containerd.cri().await?;
    cri.pull_image(&img.reference).await?;
    let remote = chunksnap
        .metric("chunksnap_prepares_total{outcome=\"remote\"}")
        .await?;
    ensure!(
        remote == img.layers.len() as f64,
        "containerd {version}: {remote} remote prepares for {} layers",
        img.layers.len()
    );
    let layers: std::collections::BTreeSet<String> = img.layer_digests().into_iter().collect();
    let blob_gets = registry
        .requests()
        .into_iter()
        .filter(|r| r.is_blob_get())
        .filter(|r| {
            r.path
                .rsplit('/')
                .next()
                .is_some_and(|d| layers.contains(d))
        })
        .count();
    ensure!(
        blob_gets == 0,
        "containerd {version} downloaded {blob_gets} layer blobs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_config_1_6() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    stock_config_is_wired_and_serves_a_pull(ContainerdVersion::V1_6).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_config_1_7() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    stock_config_is_wired_and_serves_a_pull(ContainerdVersion::V1_7).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_config_2_1() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    stock_config_is_wired_and_serves_a_pull(ContainerdVersion::V2_1).await
}
