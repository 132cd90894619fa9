//! `chunkconv convert`: resolve the image (index → each platform manifest), convert every layer
//! (in parallel, bounded by `jobs`) while uploading its packs through a bounded queue, push the
//! layer indexes, then the artifact and its referrer link. One artifact per platform manifest.
//!
//! Dedup: chunks already in the catalog (see [`crate::catalog`]) are referenced, not stored
//! again; a layer already converted (same source digest) reuses its index; an image manifest that
//! already has a complete artifact is reported and nothing is pushed. Layers converted
//! concurrently do not dedup against each other, so the result never depends on timing.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chunksnap_core::registry::referrers::Link;
use chunksnap_core::registry::{PlatformManifest, Reference, RegistryClient};
use chunksnap_format::artifact::{self, ARTIFACT_TYPE, Descriptor, LayerEntry};
use chunksnap_format::digest::Digest;
use chunksnap_format::index::{LAYER_INDEX_MEDIA_TYPE, LAYER_SKETCH_MEDIA_TYPE};
use futures::{StreamExt, TryStreamExt};

use crate::ConvertError;
use crate::catalog::{Catalog, KnownLayer};
use crate::delta::{DeltaOptions, DeltaReport};
use crate::layer::{LayerInput, LayerOptions};
use crate::progress::{Progress, short};

mod layer_job;
mod report;

use layer_job::{LayerResult, convert_one, copy_if_foreign};
pub use report::{ConvertReport, LayerReport, ManifestReport, Totals};

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Images whose artifacts' chunks may be reused (`--base`).
    pub bases: Vec<Reference>,
    /// Also reuse chunks from the artifacts of the repository's other tags.
    pub dedup_tags: bool,
    /// Layers converted at once.
    pub jobs: usize,
    /// Chunking and packing parameters.
    pub layer: LayerOptions,
    /// Delta frames against each layer's closest earlier layer.
    pub deltas: DeltaOptions,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            bases: Vec::new(),
            dedup_tags: true,
            jobs: 2,
            layer: LayerOptions::default(),
            deltas: DeltaOptions::default(),
        }
    }
}

/// Converts `image` (tag or digest; an index converts every platform manifest).
pub async fn convert(
    client: &RegistryClient,
    image: &Reference,
    opts: &ConvertOptions,
    progress: &Progress,
) -> Result<ConvertReport, ConvertError> {
    let start = Instant::now();
    let platforms = client.platform_manifests(image).await?;
    let mut catalog: Option<Catalog> = None;
    let mut catalog_chunks = 0;
    let mut manifests = Vec::new();
    for pm in &platforms {
        if let Some(done) = already_converted(client, image, pm).await? {
            progress.println(&format!("{} already converted", short(&pm.raw.digest)));
            manifests.push(done);
            continue;
        }
        let cat = match catalog.take() {
            Some(c) => c,
            None => {
                let c = build_catalog(client, image, &platforms, opts).await?;
                catalog_chunks = c.chunk_count() as u64;
                c
            }
        };
        let (report, cat) = convert_manifest(client, image, pm, opts, cat, progress).await?;
        catalog = Some(cat);
        manifests.push(report);
    }
    let mut totals = Totals::default();
    for m in &manifests {
        totals.merge(&m.totals);
    }
    Ok(ConvertReport {
        image: image.whole(),
        manifests,
        totals,
        catalog_chunks,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The subject descriptor of a platform manifest.
fn subject_of(pm: &PlatformManifest) -> Descriptor {
    Descriptor::new(
        &pm.raw.media_type,
        &pm.raw.digest,
        pm.raw.bytes.len() as u64,
    )
}

fn layer_digests(
    pm: &PlatformManifest,
) -> Result<Vec<(Digest, &oci_client::manifest::OciDescriptor)>, ConvertError> {
    pm.manifest
        .layers
        .iter()
        .map(|l| Ok((Digest::parse(&l.digest)?, l)))
        .collect()
}

/// If `pm` already has an artifact covering every layer, the report for it (nothing pushed).
async fn already_converted(
    client: &RegistryClient,
    image: &Reference,
    pm: &PlatformManifest,
) -> Result<Option<ManifestReport>, ConvertError> {
    let Some((digest, art)) = client.find_artifact(image, &pm.raw.digest).await? else {
        return Ok(None);
    };
    let layers = layer_digests(pm)?;
    if !layers.iter().all(|(d, _)| art.indexes.contains_key(d)) {
        return Ok(None);
    }
    let mut cat = Catalog::new();
    cat.add_artifact(client, image, &art).await?;
    // An artifact nodes cannot verify (format 1) is made again.
    if !layers
        .iter()
        .all(|(d, _)| cat.layer(d).is_some_and(|k| k.verifiable))
    {
        return Ok(None);
    }
    let mut reports = Vec::new();
    let mut totals = Totals::default();
    for (d, _) in layers {
        let Some(k) = cat.layer(&d) else { continue };
        let r = reused_report(&d, k);
        totals.add(&r);
        reports.push(r);
    }
    Ok(Some(ManifestReport {
        manifest: pm.raw.digest.to_string(),
        platform: pm.platform.clone(),
        artifact: digest.to_string(),
        already_converted: true,
        layers: reports,
        totals,
    }))
}

fn reused_report(layer: &Digest, k: &KnownLayer) -> LayerReport {
    LayerReport {
        digest: layer.to_string(),
        index: k.index.digest.clone(),
        reused: true,
        entries: k.entries,
        chunks: k.chunks,
        new_chunks: 0,
        bytes_read: 0,
        bytes_pushed: 0,
        deltas: DeltaReport::default(),
    }
}

/// The catalog: the image's own (partial) artifacts first, then bases, then other tags.
async fn build_catalog(
    client: &RegistryClient,
    image: &Reference,
    platforms: &[PlatformManifest],
    opts: &ConvertOptions,
) -> Result<Catalog, ConvertError> {
    let mut cat = Catalog::new();
    for pm in platforms {
        if let Some((_, art)) = client.find_artifact(image, &pm.raw.digest).await? {
            cat.add_artifact(client, image, &art).await?;
        }
    }
    for base in &opts.bases {
        cat.add_image(client, base).await?;
    }
    if opts.dedup_tags {
        cat.add_repository_tags(client, image).await?;
    }
    tracing::info!(
        artifacts = cat.artifact_count(),
        chunks = cat.chunk_count(),
        "dedup catalog loaded"
    );
    Ok(cat)
}

/// Converts one platform manifest with `catalog`; returns the report and the catalog extended
/// with the new layers (for the next platform).
async fn convert_manifest(
    client: &RegistryClient,
    image: &Reference,
    pm: &PlatformManifest,
    opts: &ConvertOptions,
    catalog: Catalog,
    progress: &Progress,
) -> Result<(ManifestReport, Catalog), ConvertError> {
    let layers = layer_digests(pm)?;
    let mut unique: Vec<(Digest, &oci_client::manifest::OciDescriptor)> = Vec::new();
    for (d, l) in layers {
        if !unique.iter().any(|(u, _)| *u == d) {
            unique.push((d, l));
        }
    }
    let catalog = Arc::new(catalog);
    let results: Vec<LayerResult> = futures::stream::iter(unique.iter())
        .map(|(d, l)| {
            let catalog = catalog.clone();
            async move {
                if let Some(k) = catalog.layer(d) {
                    return Ok(LayerResult {
                        report: reused_report(d, k),
                        entry: LayerEntry {
                            layer_digest: *d,
                            index_digest: k.index.sha256()?,
                            index_size: k.index.size,
                            index_inline: k.index.embedded(),
                            packs: k.packs.clone(),
                            index_delta: None,
                            sketch: k
                                .sketch
                                .as_ref()
                                .map(|s| Ok::<_, ConvertError>((s.sha256()?, s.size)))
                                .transpose()?,
                        },
                        index: None,
                    });
                }
                let input = LayerInput {
                    digest: *d,
                    media_type: l.media_type.clone(),
                    size: u64::try_from(l.size).ok(),
                };
                convert_one(client, image, input, opts, catalog, progress).await
            }
        })
        .buffered(opts.jobs.max(1))
        .try_collect()
        .await?;
    let mut catalog = Arc::try_unwrap(catalog)
        .map_err(|_| ConvertError::BadIndex("catalog still shared after conversion".into()))?;

    // Blobs found in other repositories (a base elsewhere) must exist in this one.
    for r in &results {
        if let Some(k) = catalog
            .layer(&r.entry.layer_digest)
            .filter(|_| r.index.is_none())
        {
            copy_if_foreign(
                client,
                image,
                &k.home,
                &r.entry.index_digest,
                r.entry.index_size,
            )
            .await?;
            if let Some((digest, size)) = &r.entry.sketch {
                copy_if_foreign(client, image, &k.home, digest, *size).await?;
            }
        }
        for (pack, size) in &r.entry.packs {
            if let Some(home) = catalog.pack_home(pack) {
                copy_if_foreign(client, image, home, pack, *size).await?;
            }
        }
    }

    let empty = Digest::of(artifact::EMPTY_JSON);
    client
        .push_blob(image, &empty, Bytes::from_static(artifact::EMPTY_JSON))
        .await?;
    let subject = subject_of(pm);
    let entries: Vec<LayerEntry> = results.iter().map(|r| r.entry.clone()).collect();
    let built = artifact::build(&subject, &entries)?;
    let (art_digest, link) = client
        .publish_referrer(
            image,
            &pm.raw.digest,
            Bytes::from(built.bytes),
            ARTIFACT_TYPE,
        )
        .await?;
    if let Link::TagIndexUpdated(d) = link {
        tracing::debug!(index = %d, "referrers tag index updated");
    }

    let mut totals = Totals::default();
    let mut reports = Vec::new();
    for r in results {
        if let Some(idx) = &r.index {
            let desc = artifact::Descriptor::new(
                LAYER_INDEX_MEDIA_TYPE,
                &r.entry.index_digest,
                r.entry.index_size,
            );
            let sketch = r
                .entry
                .sketch
                .map(|(d, size)| artifact::Descriptor::new(LAYER_SKETCH_MEDIA_TYPE, &d, size));
            catalog.add_index(image, r.entry.layer_digest, &desc, idx, sketch.as_ref())?;
        }
        totals.add(&r.report);
        reports.push(r.report);
    }
    // Repeated layers appear once per occurrence in the manifest's order in the report.
    let reports = layer_digests(pm)?
        .iter()
        .filter_map(|(d, _)| reports.iter().find(|r| r.digest == d.to_string()).cloned())
        .collect();
    Ok((
        ManifestReport {
            manifest: pm.raw.digest.to_string(),
            platform: pm.platform.clone(),
            artifact: art_digest.to_string(),
            already_converted: false,
            layers: reports,
            totals,
        },
        catalog,
    ))
}
