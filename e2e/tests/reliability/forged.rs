//! Forged artifacts: anyone who can push to a repository holding a copy of an image (same
//! manifest digest) can link a chunksnap artifact to it. Each forgery here names the image's
//! real layer digests and diffIDs but describes other files, one changed header, or entries in
//! another order. The node must notice before committing (`chunksnap_verify_failures_total`),
//! fall back to containerd's own pull, and end with exactly the image's files; the genuine
//! image pulled afterwards on the same node is still assembled remotely and correct.

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use chunksnap_core::registry::{RegistryClient, RegistryConfig};
use chunksnap_e2e::BuiltImage;
use chunksnap_format::artifact::{self, Descriptor, LayerEntry, OCI_MANIFEST_MEDIA_TYPE};
use chunksnap_format::digest::Digest;
use chunksnap_format::index::{self, ARTIFACT_TYPE, MAX_INDEX_SIZE};
use chunksnap_format::pb::{EntryType, LayerIndex, Xattr};

use super::common::{FaultyNode, convert, oracle, oracle_differences, unique_image};

/// The image's seed: every copy is pushed from the same tars, so has the same manifest digest.
const SEED: u64 = 4242;
const FILES: usize = 3;
const FILE_SIZE: usize = 96 << 10;

type Forge = fn(&mut LayerIndex);

fn first_file(ix: &mut LayerIndex) -> &mut chunksnap_format::pb::Entry {
    ix.entries
        .iter_mut()
        .find(|e| e.r#type == EntryType::File as i32)
        .expect("the test image has files")
}

/// Forgeries of the genuine index (the source of the other-files forgery is another image).
const HEADER_FORGERIES: &[(&str, Forge)] = &[
    ("mode", |ix| first_file(ix).mode ^= 0o4000),
    ("owner", |ix| first_file(ix).uid += 1),
    ("mtime", |ix| first_file(ix).mtime_sec += 1),
    ("xattr", |ix| {
        first_file(ix).xattrs.push(Xattr {
            name: "user.forged".into(),
            value: b"1".to_vec(),
        })
    }),
    // A directory and the file after it swapped: content stays in stream order, so the index
    // is valid; only the order differs from the tar.
    ("reordered", |ix| {
        let i = ix
            .entries
            .iter()
            .position(|e| e.r#type == EntryType::Dir as i32 && e.path.ends_with(b"etc"))
            .expect("the test image has an etc directory");
        ix.entries.swap(i, i + 1);
    }),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_artifacts_fall_back_and_the_genuine_image_still_assembles() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = FaultyNode::start("").await?;
    let oracle = oracle(&node.env).await?;
    let cri = node.env.containerd.cri().await?;
    let real = unique_image(&node.env, "forge-real", SEED, FILES, FILE_SIZE).await?;
    let other = unique_image(&node.env, "forge-other", SEED + 1, FILES, FILE_SIZE).await?;
    convert(&real.reference).await?;
    convert(&other.reference).await?;

    let mut cases: Vec<(&str, &BuiltImage, Option<Forge>)> = vec![("other-files", &other, None)];
    cases.extend(HEADER_FORGERIES.iter().map(|(n, f)| (*n, &real, Some(*f))));
    let mut failures = 0.0;
    for (name, source, forge) in cases {
        let copy = unique_image(
            &node.env,
            &format!("forge-copy-{name}"),
            SEED,
            FILES,
            FILE_SIZE,
        )
        .await?;
        ensure!(
            copy.manifest_digest == real.manifest_digest,
            "the copy must be the same image"
        );
        push_forged(&copy, source, forge).await?;
        cri.pull_image(&copy.reference)
            .await
            .with_context(|| format!("{name}: pull"))?;
        failures += copy.layers.len() as f64;
        let seen = node
            .chunksnap
            .metric("chunksnap_verify_failures_total")
            .await?;
        ensure!(
            seen == failures,
            "{name}: {seen} verification failures, expected {failures}"
        );
        ensure!(
            node.prepares("remote").await? == 0.0,
            "{name}: a forged layer was committed"
        );
        let diffs = oracle_differences(&node.env.containerd, &oracle, &copy).await?;
        ensure!(
            diffs == 0,
            "{name}: {diffs} differences from the real image"
        );
        // Drop the layers (every reference of the image), so the next pull prepares them again.
        cri.remove_image(&copy.reference).await?;
    }

    cri.pull_image(&real.reference).await?;
    ensure!(
        node.prepares("remote").await? == real.layers.len() as f64,
        "the genuine image should be assembled remotely after the forgeries"
    );
    ensure!(
        oracle_differences(&node.env.containerd, &oracle, &real).await? == 0,
        "the genuine image differs from containerd's unpacking"
    );
    ensure!(
        node.log().contains("is NOT the image's layer"),
        "the failures should be logged"
    );
    Ok(())
}

/// Links to `copy`'s manifest (in `copy`'s repository) an artifact made of `source`'s layer
/// indexes, changed by `forge` and relabelled with `copy`'s real layer digests and diffIDs.
async fn push_forged(copy: &BuiltImage, source: &BuiltImage, forge: Option<Forge>) -> Result<()> {
    let client = RegistryClient::new(RegistryConfig {
        plain_http_all: true,
        docker_config: None,
        ..Default::default()
    })?;
    let from = RegistryClient::parse_reference(&source.reference)?;
    let to = RegistryClient::parse_reference(&copy.reference)?;
    let (_, art) = client
        .find_artifact(&from, &Digest::parse(&source.manifest_digest)?)
        .await?
        .context("source artifact")?;
    let mut entries = Vec::new();
    for (i, layer) in source.layers.iter().enumerate() {
        let desc = art
            .indexes
            .get(&Digest::parse(&layer.digest)?)
            .context("source index")?;
        let blob = client
            .read_described(&from, desc, MAX_INDEX_SIZE as u64)
            .await?;
        let mut ix = index::decode(&blob)?;
        if let Some(forge) = forge {
            forge(&mut ix);
        }
        let src = ix.source.as_mut().context("index source")?;
        src.digest = copy.layers[i].digest.clone();
        src.diff_id = copy.layers[i].diff_id.clone();
        let blob = index::encode(&ix);
        let digest = Digest::of(&blob);
        client
            .push_blob(&to, &digest, Bytes::from(blob.clone()))
            .await?;
        let mut packs = Vec::new();
        for p in &ix.packs {
            let d = Digest::parse(&p.digest)?;
            if !client.mount_blob(&to, &from, &d).await? {
                let data = client.read_blob(&from, &d, p.size).await?;
                client.push_blob(&to, &d, Bytes::from(data)).await?;
            }
            packs.push((d, p.size));
        }
        entries.push(LayerEntry {
            layer_digest: Digest::parse(&copy.layers[i].digest)?,
            index_digest: digest,
            index_size: blob.len() as u64,
            index_inline: None,
            packs,
            index_delta: None,
            sketch: None,
        });
    }
    // The artifact's empty config.
    let empty = Bytes::from_static(b"{}");
    client.push_blob(&to, &Digest::of(&empty), empty).await?;
    let manifest = client.resolve(&to).await?;
    let subject = Descriptor::new(
        OCI_MANIFEST_MEDIA_TYPE,
        &manifest.digest,
        manifest.bytes.len() as u64,
    );
    let built = artifact::build(&subject, &entries)?;
    client
        .publish_referrer(
            &to,
            &manifest.digest,
            Bytes::from(built.bytes),
            ARTIFACT_TYPE,
        )
        .await?;
    Ok(())
}

/// `insecure_skip_layer_verification` does what its warning says: with it, a forged header is
/// committed as the artifact describes it (no verification failure, no fallback). The opt-out is
/// for operators who trust every writer of a registry; this test keeps the documented danger
/// true, and shows that the default (above) is what stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_opt_out_commits_unverified_layers() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = FaultyNode::start("insecure_skip_layer_verification = [\"*\"]\n").await?;
    let oracle = oracle(&node.env).await?;
    let cri = node.env.containerd.cri().await?;
    let real = unique_image(&node.env, "optout-real", SEED + 7, FILES, FILE_SIZE).await?;
    convert(&real.reference).await?;
    let copy = unique_image(&node.env, "optout-copy", SEED + 7, FILES, FILE_SIZE).await?;
    let (_, mode) = HEADER_FORGERIES
        .iter()
        .find(|(n, _)| *n == "mode")
        .context("mode forgery")?;
    push_forged(&copy, &real, Some(*mode)).await?;
    cri.pull_image(&copy.reference).await?;
    ensure!(
        node.chunksnap
            .metric("chunksnap_verify_failures_total")
            .await
            .unwrap_or(0.0)
            == 0.0,
        "nothing is verified with the opt-out"
    );
    ensure!(
        node.prepares("remote").await? == copy.layers.len() as f64,
        "the unverified layers should be committed as assembled"
    );
    ensure!(
        oracle_differences(&node.env.containerd, &oracle, &copy).await? > 0,
        "the forged mode should be in the committed layer"
    );
    ensure!(
        node.log().contains("insecure_skip_layer_verification"),
        "the opt-out should be warned about at start"
    );
    Ok(())
}
