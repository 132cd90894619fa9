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
use chunksnap_core::registry::{PlatformManifest, Reference, RegistryClient, RegistryError};
use chunksnap_format::artifact::{self, ARTIFACT_TYPE, Descriptor, IndexDelta, LayerEntry};
use chunksnap_format::digest::Digest;
use chunksnap_format::index::{self, LAYER_INDEX_MEDIA_TYPE, LAYER_SKETCH_MEDIA_TYPE};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::ConvertError;
use crate::catalog::{Catalog, KnownLayer};
use crate::delta::{self, DeltaOptions, DeltaReport, add_deltas};
use crate::layer::{self, LayerInput, LayerOptions, PackSink, SinkError};
use crate::progress::{Progress, short};

/// Packs waiting for upload per layer; with packs of at most 32 MiB this bounds memory.
const UPLOAD_QUEUE: usize = 2;

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

/// Counters summed over layers.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Layers.
    pub layers: u64,
    /// Tar entries.
    pub entries: u64,
    /// Chunks in the content streams.
    pub chunks: u64,
    /// Chunks newly stored.
    pub new_chunks: u64,
    /// Compressed layer bytes read from the registry.
    pub bytes_read: u64,
    /// Bytes uploaded (packs and indexes; zero when everything existed).
    pub bytes_pushed: u64,
    /// Delta frames added (new chunks compressed against an earlier layer's).
    pub delta_chunks: u64,
    /// Their stored bytes.
    pub delta_bytes: u64,
}

/// One layer's result.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Source layer digest.
    pub digest: String,
    /// Layer index blob digest.
    pub index: String,
    /// Whether an existing index was reused (the layer was not read).
    pub reused: bool,
    /// Tar entries.
    pub entries: u64,
    /// Chunks.
    pub chunks: u64,
    /// Chunks newly stored.
    pub new_chunks: u64,
    /// Compressed bytes read.
    pub bytes_read: u64,
    /// Bytes uploaded.
    pub bytes_pushed: u64,
    /// The delta pass (empty when the layer was reused or nothing earlier resembles it).
    pub deltas: DeltaReport,
}

/// One platform manifest's result.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestReport {
    /// The image manifest digest (the artifact's subject).
    pub manifest: String,
    /// `os/arch[/variant]` from the index, if any.
    pub platform: Option<String>,
    /// The artifact manifest digest.
    pub artifact: String,
    /// The manifest already had a complete artifact: nothing was pushed.
    pub already_converted: bool,
    /// Per layer, in image order.
    pub layers: Vec<LayerReport>,
    /// Sums over `layers`.
    pub totals: Totals,
}

/// The whole conversion's result (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// The reference converted.
    pub image: String,
    /// Per platform manifest.
    pub manifests: Vec<ManifestReport>,
    /// Sums over all manifests.
    pub totals: Totals,
    /// Chunks known to the dedup catalog before converting.
    pub catalog_chunks: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Totals {
    fn add(&mut self, l: &LayerReport) {
        self.layers += 1;
        self.entries += l.entries;
        self.chunks += l.chunks;
        self.new_chunks += l.new_chunks;
        self.bytes_read += l.bytes_read;
        self.bytes_pushed += l.bytes_pushed;
        self.delta_chunks += l.deltas.deltas;
        self.delta_bytes += l.deltas.delta_bytes;
    }
    fn merge(&mut self, o: &Totals) {
        self.layers += o.layers;
        self.entries += o.entries;
        self.chunks += o.chunks;
        self.new_chunks += o.new_chunks;
        self.bytes_read += o.bytes_read;
        self.bytes_pushed += o.bytes_pushed;
        self.delta_chunks += o.delta_chunks;
        self.delta_bytes += o.delta_bytes;
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

/// Hands finished packs to the uploader task; blocks (on the conversion thread) when the queue
/// is full, which is what bounds memory.
struct UploadSink {
    tx: mpsc::Sender<(Digest, Vec<u8>)>,
}

impl PackSink for UploadSink {
    fn put_pack(&mut self, digest: &Digest, data: Vec<u8>) -> Result<(), SinkError> {
        self.tx
            .blocking_send((*digest, data))
            .map_err(|_| "the pack uploader stopped".into())
    }
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

struct LayerResult {
    report: LayerReport,
    entry: LayerEntry,
    /// The new index, to extend the catalog (None when reused).
    index: Option<chunksnap_format::pb::LayerIndex>,
}

/// Streams one layer through `layer::convert_layer` on a blocking thread while a task uploads
/// its packs, then pushes its index blob.
#[tracing::instrument(skip_all, fields(layer = %input.digest))]
async fn convert_one(
    client: &RegistryClient,
    image: &Reference,
    input: LayerInput,
    opts: &ConvertOptions,
    catalog: Arc<Catalog>,
    progress: &Progress,
) -> Result<LayerResult, ConvertError> {
    let layer_name = input.digest.to_string();
    let bar = progress.layer(&short(&input.digest), input.size);
    let (_, stream) = client.blob_stream(image, &input.digest).await?;
    let counted = {
        let bar = bar.clone();
        stream.inspect_ok(move |b| bar.inc(b.len() as u64))
    };
    let reader = SyncIoBridge::new(StreamReader::new(counted));

    let (tx, mut rx) = mpsc::channel::<(Digest, Vec<u8>)>(UPLOAD_QUEUE);
    let uploader = {
        let client = client.clone();
        let image = image.clone();
        tokio::spawn(async move {
            let mut pushed = 0u64;
            while let Some((digest, data)) = rx.recv().await {
                let n = data.len() as u64;
                if client.push_blob(&image, &digest, Bytes::from(data)).await? {
                    pushed += n;
                }
            }
            Ok::<u64, RegistryError>(pushed)
        })
    };

    let layer_opts = opts.layer.clone();
    let input2 = input.clone();
    let cat = catalog.clone();
    let converted = tokio::task::spawn_blocking(move || {
        let mut sink = UploadSink { tx };
        layer::convert_layer(reader, &input2, &layer_opts, &*cat, &mut sink)
    })
    .await?;
    // The sink is gone now, so the uploader drains and ends; its error explains a failed sink.
    let pushed = uploader.await?.map_err(|source| ConvertError::Upload {
        layer: layer_name.clone(),
        source,
    })?;
    let mut outcome = converted.map_err(|source| ConvertError::Layer {
        layer: layer_name.clone(),
        source,
    })?;
    // The new packs are in the registry now: the delta pass reads its chunks back from there.
    bar.set_message("deltas");
    let (mut deltas, base) = add_deltas(
        client,
        image,
        &catalog,
        &mut outcome.index,
        &outcome.stats.packs,
        &outcome.sketches,
        &opts.deltas,
    )
    .await?;
    let ix = outcome.index.clone();
    let (encoded, raw_digest, idelta) = tokio::task::spawn_blocking(move || {
        let raw = index::encode_raw(&ix);
        let blob = index::compress_raw(&raw);
        let idelta = match &base {
            Some(b) => delta::index_delta(b, &raw, blob.len())?
                .map(|f| (f, b.layer, Digest::of(&b.raw_index))),
            None => None,
        };
        Ok::<_, delta::DeltaError>((blob, Digest::of(&raw), idelta))
    })
    .await??;
    deltas.index_bytes = encoded.len() as u64;
    let index_delta = match idelta {
        Some((frame, base_layer, base_raw)) => {
            let digest = Digest::of(&frame);
            let size = frame.len() as u64;
            deltas.index_delta_bytes = size;
            if client.push_blob(image, &digest, Bytes::from(frame)).await? {
                deltas.bytes_pushed += size;
            }
            Some(IndexDelta {
                digest,
                size,
                base_layer,
                base_raw,
                raw: raw_digest,
            })
        }
        None => None,
    };

    let index_digest = Digest::of(&encoded);
    let index_size = encoded.len() as u64;
    let index_inline = (encoded.len() <= artifact::MAX_EMBEDDED).then(|| encoded.clone());
    let index_pushed = client
        .push_blob(image, &index_digest, Bytes::from(encoded))
        .await?;
    let sketch_blob = crate::sketch::encode(&outcome.sketches);
    let sketch = (Digest::of(&sketch_blob), sketch_blob.len() as u64);
    if client
        .push_blob(image, &sketch.0, Bytes::from(sketch_blob))
        .await?
    {
        deltas.bytes_pushed += sketch.1;
    }
    bar.finish_with_message(format!(
        "{} chunks, {} new, {} deltas",
        outcome.stats.chunks, outcome.stats.new_chunks, deltas.deltas
    ));

    let packs = outcome
        .index
        .packs
        .iter()
        .map(|p| Ok((Digest::parse(&p.digest)?, p.size)))
        .collect::<Result<Vec<_>, ConvertError>>()?;
    let s = &outcome.stats;
    Ok(LayerResult {
        report: LayerReport {
            digest: layer_name,
            index: index_digest.to_string(),
            reused: false,
            entries: s.entries,
            chunks: s.chunks,
            new_chunks: s.new_chunks,
            bytes_read: s.bytes_read,
            bytes_pushed: pushed + deltas.bytes_pushed + if index_pushed { index_size } else { 0 },
            deltas,
        },
        entry: LayerEntry {
            layer_digest: input.digest,
            index_digest,
            index_size,
            index_inline,
            packs,
            index_delta,
            sketch: Some(sketch),
        },
        index: Some(outcome.index),
    })
}

/// Copies the blob `digest` into `image`'s repository when it was found in another repository
/// (`home`) and this one lacks it: nodes read indexes and packs from the image's own repository.
async fn copy_if_foreign(
    client: &RegistryClient,
    image: &Reference,
    home: &Reference,
    digest: &Digest,
    size: u64,
) -> Result<(), ConvertError> {
    if home.resolve_registry() == image.resolve_registry()
        && home.repository() == image.repository()
    {
        return Ok(());
    }
    if client.blob_exists(image, digest).await? {
        return Ok(());
    }
    if client.mount_blob(image, home, digest).await? && client.blob_exists(image, digest).await? {
        return Ok(());
    }
    // Another registry, or the mount was declined: copy (blobs are at most one pack, 32 MiB).
    let data = client.read_blob(home, digest, size).await?;
    client.push_blob(image, digest, Bytes::from(data)).await?;
    Ok(())
}
