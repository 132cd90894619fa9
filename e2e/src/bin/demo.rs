//! `make demo`: a local registry, two containerd "nodes" (plain overlayfs, and chunksnap) and a
//! real Debian v1 → v2 security update. Converts both images, pulls them through CRI on each
//! node, runs a container, and prints what each node downloaded. Everything lives in temp dirs
//! on 127.0.0.1 and is removed at the end.

use std::time::Instant;

use anyhow::{Context, Result};
use chunksnap_e2e::chunksnap::{Chunksnap, convert};
use chunksnap_e2e::{BuiltImage, Containerd, Env, Snapshotter};

struct Pull {
    bytes: u64,
    seconds: f64,
}

async fn pull(node: &Containerd, env: &Env, image: &BuiltImage) -> Result<Pull> {
    env.registry.reset_counters();
    let started = Instant::now();
    node.cri().await?.pull_image(&image.reference).await?;
    Ok(Pull {
        bytes: env.registry.bytes_served(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn mb(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("chunksnap-demo-")
        .tempdir()?;
    let result = demo(dir.path()).await;
    if result.is_err() {
        // Show the daemon's side of the story before the temp dir goes away.
        let log = std::fs::read_to_string(dir.path().join("chunksnap.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        eprintln!("--- last lines of the chunksnap log ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    result
}

async fn demo(dir: &std::path::Path) -> Result<()> {
    let socket = dir.join("cs.sock"); // where Chunksnap::new puts it
    println!("==> starting a registry on 127.0.0.1 and containerd with the chunksnap snapshotter");
    let env = Env::start(Snapshotter::chunksnap(&socket)).await?;
    let mut chunksnap = Chunksnap::new(dir, vec![env.registry.host()])?;
    chunksnap
        .start()
        .await
        .context("starting chunksnap serve")?;
    println!("==> starting a second containerd with the plain overlayfs snapshotter");
    let plain = Containerd::start(&env.containerd_config(Snapshotter::Overlayfs)).await?;

    println!(
        "==> building debian:v1 (debootstrap minbase bookworm) and debian:v2 (+ bookworm-security upgrades)"
    );
    let v1 = env.images.debian_v1().await?;
    let v2 = env.images.debian_v2().await?;
    for img in [&v1, &v2] {
        let t = Instant::now();
        let report = convert(&img.reference)?;
        let totals = &report["totals"];
        println!(
            "    chunkconv convert {}: {} chunks, {} new, {} pushed in {:.1}s",
            img.reference,
            totals["chunks"],
            totals["new_chunks"],
            mb(totals["bytes_pushed"].as_u64().unwrap_or(0)),
            t.elapsed().as_secs_f64()
        );
    }

    println!("==> pulling v1, then v2, through CRI on both nodes");
    let plain_v1 = pull(&plain, &env, &v1).await?;
    let plain_v2 = pull(&plain, &env, &v2).await?;
    let cs_v1 = pull(&env.containerd, &env, &v1).await?;
    let cs_v2 = pull(&env.containerd, &env, &v2).await?;
    let out = env
        .containerd
        .cri()
        .await?
        .run_and_read(&v2.reference, "/etc/debian_version")
        .await?;
    println!(
        "    container from v2 on the chunksnap node reads /etc/debian_version = {}",
        String::from_utf8_lossy(&out).trim()
    );

    println!();
    println!("| pull            | plain overlayfs        | chunksnap              | ratio |");
    println!("|-----------------|------------------------|------------------------|-------|");
    for (what, p, c) in [
        ("v1 (cold)", &plain_v1, &cs_v1),
        ("v2 (v1 on node)", &plain_v2, &cs_v2),
    ] {
        println!(
            "| {what:<15} | {:>10} {:>8.2}s   | {:>10} {:>8.2}s   | {:.2}x |",
            mb(p.bytes),
            p.seconds,
            mb(c.bytes),
            c.seconds,
            c.bytes as f64 / p.bytes.max(1) as f64
        );
    }
    println!();
    println!(
        "chunksnap fetched only the chunks v1 did not already bring: {} for v2 instead of {}.",
        mb(cs_v2.bytes),
        mb(plain_v2.bytes)
    );
    let seeded = chunksnap.metric("chunksnap_seeded_files_total").await?;
    let seeded_bytes = chunksnap.metric("chunksnap_seeded_bytes_total").await?;
    println!(
        "v2 files identical to v1's were hardlinked from v1's layer, not written: {seeded} files, {}.",
        mb(seeded_bytes as u64)
    );
    chunksnap.stop()?;
    Ok(())
}
