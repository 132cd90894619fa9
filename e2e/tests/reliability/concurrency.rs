//! Concurrency: 16 CRI pulls at once of 4 images that share most of their chunks. Every layer
//! must equal containerd's own unpacking, and no byte of a pack may be fetched twice: chunks
//! that several prepares need at the same time travel once.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::{BuiltImage, ImageSpec};
use chunksnap_testkit::noise;

use super::common::{FaultyNode, convert, oracle, oracle_differences, tar_of};

/// No coalescing across gaps: a request then holds only chunks its fetch claimed, so an
/// overlap between two requests can only mean a chunk fetched twice.
const CONFIG: &str = "fetch_max_gap_bytes = 0\nfetch_max_request_bytes = 1048576\n";
const IMAGES: usize = 4;
const PULLS: usize = 16;

async fn shared_images(node: &FaultyNode) -> Result<Vec<BuiltImage>> {
    let common: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("common/lib{i}.so"), noise(5000 + i, 1 << 20)))
        .collect();
    let mut out = Vec::new();
    for n in 0..IMAGES as u64 {
        let mut files = common.clone();
        for u in 0..2 {
            files.push((
                format!("app/unique{u}.bin"),
                noise(6000 + n * 10 + u, 300 << 10),
            ));
        }
        let img = node
            .env
            .images
            .push_tars(
                "rel-shared",
                &format!("v{n}"),
                vec![tar_of(&files)?],
                ImageSpec::default(),
            )
            .await?;
        convert(&img.reference).await?;
        out.push(img);
    }
    Ok(out)
}

/// `bytes=a-b` → (a, b) inclusive.
fn parse_range(h: &str) -> Option<(u64, u64)> {
    let (a, b) = h.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_of_overlapping_images_fetch_each_chunk_once() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = FaultyNode::start(CONFIG).await?;
    let images = shared_images(&node).await?;
    let cri = node.env.containerd.cri().await?;
    node.env.registry.reset_counters();
    let mut tasks = Vec::new();
    for i in 0..PULLS {
        let (c, r) = (cri.clone(), images[i % IMAGES].reference.clone());
        tasks.push(tokio::spawn(async move { c.pull_image(&r).await }));
    }
    for t in tasks {
        t.await?.context("concurrent pull")?;
    }
    let (remote, fallback) = (
        node.prepares("remote").await?,
        node.prepares("fallback").await?,
    );
    let requests = node.env.registry.requests();
    let layers: BTreeSet<String> = images.iter().flat_map(|i| i.layer_digests()).collect();
    let layer_gets = requests
        .iter()
        .filter(|r| r.is_blob_get())
        .filter(|r| {
            r.path
                .rsplit('/')
                .next()
                .is_some_and(|d| layers.contains(d))
        })
        .count();
    let mut per_pack: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for r in requests.iter().filter(|r| r.is_blob_get()) {
        if let Some(range) = r.range.as_deref() {
            let digest = r.path.rsplit('/').next().unwrap_or_default().to_owned();
            let span = parse_range(range).with_context(|| format!("odd Range {range}"))?;
            ensure!(r.status == 206, "Range read answered {}", r.status);
            per_pack.entry(digest).or_default().push(span);
        }
    }
    let mut overlaps = Vec::new();
    let (mut reads, mut bytes) = (0, 0);
    for (pack, spans) in &mut per_pack {
        spans.sort();
        reads += spans.len();
        bytes += spans.iter().map(|(a, b)| b - a + 1).sum::<u64>();
        for w in spans.windows(2) {
            if w[1].0 <= w[0].1 {
                overlaps.push(format!("{pack}: {:?} and {:?}", w[0], w[1]));
            }
        }
    }
    eprintln!(
        "concurrency: {PULLS} pulls of {IMAGES} images: {remote} remote, {fallback} fallback \
         prepares; {reads} Range reads of {} packs, {bytes} bytes; overlapping reads: {}",
        per_pack.len(),
        overlaps.len()
    );
    ensure!(fallback == 0.0, "{fallback} layers fell back");
    ensure!(
        remote >= IMAGES as f64,
        "only {remote} layers assembled remotely"
    );
    ensure!(layer_gets == 0, "{layer_gets} layer blob downloads");
    ensure!(
        overlaps.is_empty(),
        "pack bytes fetched twice: {overlaps:#?}"
    );
    // The common files once, each image's unique files once, plus boundary chunks.
    let distinct = (8u64 << 20) + IMAGES as u64 * 2 * (300 << 10);
    ensure!(
        bytes <= distinct + distinct / 10,
        "{bytes} pack bytes read for {distinct} bytes of distinct content"
    );
    let oracle = oracle(&node.env).await?;
    for img in &images {
        ensure!(
            oracle_differences(&node.env.containerd, &oracle, img).await? == 0,
            "{} differs from the oracle",
            img.reference
        );
    }
    Ok(())
}
