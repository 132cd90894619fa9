//! The remote data path: fills a snapshot's `fs` directory from the node chunk store.
//!
//! For one CRI layer Prepare it finds the image's chunksnap artifact (cached per manifest
//! digest), loads the layer index (cached per layer digest), fetches the chunks the store lacks
//! from the registry's packs, and assembles the layer in overlay form. Any failure is turned
//! into [`RemoteOutcome::Fallback`], so containerd pulls the layer itself.
//!
//! Files identical to ones in layers already on the node (the request's seed candidates, whose
//! indexes are kept on disk under `indexes/`) are hardlinked from there, and only the chunks of
//! the other files are fetched; should a seed file fail its check, its chunks are fetched on
//! demand while assembling.
//!
//! A layer index is rebuilt from the artifact's index delta when the node holds the delta's
//! base (the previous version's index, kept on disk), else fetched whole.
//!
//! The other layers of the image (label `cri.image-layers`) are fetched in the background as
//! soon as the first layer is seen: containerd prepares layers one by one (each needs its
//! parent), but their chunks can travel in parallel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chunksnap_core::assemble::{
    AssembleOptions, ChunkReader, Seed, Seeding, WhiteoutMode, assemble_layer_with,
};
use chunksnap_core::digest::Digest;
use chunksnap_core::fetch::{FetchOptions, FetchStats, Inflight, fetch_needed};
use chunksnap_core::format::artifact::Artifact;
use chunksnap_core::format::delta::decompress_index_delta;
use chunksnap_core::format::index::{self, MAX_INDEX_SIZE};
use chunksnap_core::registry::{RegistryClient, RegistryError, RepoRangeSource};
use chunksnap_core::store::{ChunkStore, StoreError};
use chunksnap_proto::index::{EntryType, LayerIndex};
use oci_client::Reference;

use crate::artifact_cache::BoundedMap;
use crate::cancel::unless_cancelled;
use crate::claims::DirClaim;
use crate::index_files;
use crate::metrics::Metrics;
use crate::remote::{
    LABEL_CRI_IMAGE_LAYERS, RemoteFuture, RemoteLayers, RemoteOutcome, RemoteRequest, SeedCandidate,
};

/// How long "this image has no artifact" is remembered, so the layers of one unconverted
/// image do not each ask the registry again.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Layer indexes kept in memory.
const INDEX_CACHE_ENTRIES: usize = 64;
/// Layer indexes kept on disk (for seeding after a restart); the least recently used go.
const INDEX_FILES: usize = 256;
/// Artifact lookups kept (per manifest digest), and for how long.
const ARTIFACT_ENTRIES: usize = 256;
const ARTIFACT_TTL: Duration = Duration::from_secs(3600);

/// Why a remote prepare could not assemble the layer (logged, then falls back).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("bad label {label}: {why}")]
    Label { label: &'static str, why: String },
    #[error("no chunksnap artifact for this image")]
    NoArtifact,
    #[error("the artifact has no index for layer {0}")]
    NoIndex(Digest),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("layer index: {0}")]
    Index(#[from] chunksnap_core::format::index::FormatError),
    #[error("index describes layer {found}, expected {expected}")]
    WrongLayer { expected: Digest, found: String },
    #[error("fetch: {0}")]
    Fetch(#[from] chunksnap_core::fetch::FetchError),
    #[error("assemble: {0}")]
    Assemble(#[from] chunksnap_core::assemble::AssembleError),
    #[error("the image has no manifest for platform {0}")]
    NoPlatform(String),
    #[error("task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A found artifact and the repository (origin or mirror) it was found in.
type Found = (Reference, Arc<Artifact>);
type ArtifactEntry = (Instant, Option<Found>);

/// [`RemoteLayers`] backed by a registry client, a chunk store and the assembler.
pub struct ChunkRemote {
    client: RegistryClient,
    store: Arc<ChunkStore>,
    inflight: Inflight,
    fetch: FetchOptions,
    metrics: Metrics,
    artifacts: Mutex<BoundedMap<Digest, ArtifactEntry>>,
    indexes: Mutex<HashMap<Digest, Arc<LayerIndex>>>,
    /// Layers whose chunks are being fetched in the background.
    prefetching: Mutex<HashSet<Digest>>,
    /// Registry host -> mirror hosts tried first (in order) for artifacts, indexes and packs.
    mirrors: BTreeMap<String, Vec<String>>,
    /// Where layer indexes are kept across restarts (`None`: memory only).
    index_dir: Option<PathBuf>,
}

/// Node-specific settings of [`ChunkRemote`].
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Registry host -> mirror hosts, tried in order before the host itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Directory for layer indexes (seeding needs the index of a layer already on the node).
    pub index_dir: Option<PathBuf>,
}

impl ChunkRemote {
    /// A remote path over `store`, fetching with `client`.
    pub fn new(
        client: RegistryClient,
        store: Arc<ChunkStore>,
        fetch: FetchOptions,
        metrics: Metrics,
    ) -> Arc<Self> {
        Self::with_options(client, store, fetch, metrics, NodeOptions::default())
    }

    /// Like [`ChunkRemote::new`], with mirrors and an index directory.
    pub fn with_options(
        client: RegistryClient,
        store: Arc<ChunkStore>,
        fetch: FetchOptions,
        metrics: Metrics,
        node: NodeOptions,
    ) -> Arc<Self> {
        metrics.store_bytes.set(store.stats().bytes as i64);
        Arc::new(Self {
            client,
            store,
            inflight: Inflight::with_request_limit(fetch.parallelism),
            fetch,
            metrics,
            artifacts: Mutex::new(BoundedMap::new(ARTIFACT_ENTRIES, ARTIFACT_TTL)),
            indexes: Mutex::new(HashMap::new()),
            prefetching: Mutex::new(HashSet::new()),
            mirrors: node.mirrors,
            index_dir: node.index_dir,
        })
    }

    /// Where to look for `image`'s chunks: its mirrors, then the registry itself.
    fn candidates(&self, image: &Reference) -> Vec<Reference> {
        let mut out: Vec<Reference> = self
            .mirrors
            .get(image.registry())
            .into_iter()
            .flatten()
            .map(|m| {
                let mut r = image.clone();
                r.set_mirror_registry(m.clone());
                r
            })
            .collect();
        out.push(image.clone());
        out
    }

    /// The node store.
    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    /// The image's artifact and the repository (origin or mirror) that holds it.
    async fn artifact(&self, image: &Reference, manifest: &Digest) -> Result<Found, RemoteError> {
        if let Some((at, cached)) = lock(&self.artifacts).get(manifest).cloned() {
            match cached {
                Some(found) => return Ok(found),
                None if at.elapsed() < NEGATIVE_TTL => return Err(RemoteError::NoArtifact),
                None => {}
            }
        }
        let mut found = None;
        let mut last_err = None;
        for candidate in self.candidates(image) {
            match self.client.find_artifact(&candidate, manifest).await {
                Ok(Some((_, a))) => {
                    found = Some((candidate, Arc::new(a)));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(registry = candidate.resolve_registry(), cause = %e, "artifact lookup failed");
                    last_err = Some(e);
                }
            }
        }
        // A registry error is not "no artifact": do not cache it.
        if found.is_none()
            && let Some(e) = last_err
        {
            return Err(e.into());
        }
        lock(&self.artifacts).insert(*manifest, (Instant::now(), found.clone()));
        found.ok_or(RemoteError::NoArtifact)
    }

    async fn layer_index(
        &self,
        image: &Reference,
        artifact: &Artifact,
        layer: &Digest,
    ) -> Result<Arc<LayerIndex>, RemoteError> {
        if let Some(ix) = self.cached_index(layer).await {
            return Ok(ix);
        }
        let desc = artifact
            .indexes
            .get(layer)
            .ok_or(RemoteError::NoIndex(*layer))?;
        // A small index embedded in the artifact costs no request at all.
        let blob = match desc.embedded().filter(|b| b.len() <= MAX_INDEX_SIZE) {
            Some(blob) => blob,
            None => {
                if let Some(ix) = self.index_from_delta(image, artifact, layer).await {
                    return Ok(ix);
                }
                self.client
                    .read_described(image, desc, MAX_INDEX_SIZE as u64)
                    .await?
            }
        };
        let (dir, want) = (self.index_dir.clone(), *layer);
        let ix = tokio::task::spawn_blocking(move || {
            let ix = decode_for(&blob, &want, index::decode)?;
            if let Some(dir) = dir {
                index_files::save(&dir, &want, &blob, INDEX_FILES);
            }
            Ok::<_, RemoteError>(ix)
        })
        .await??;
        Ok(self.remember_index(*layer, ix))
    }

    /// The index of `layer` rebuilt from the artifact's index delta, when the node holds the
    /// delta's base index (its raw bytes must hash to what the artifact says). `None` on any
    /// miss or failure: the caller then fetches the full index.
    async fn index_from_delta(
        &self,
        image: &Reference,
        artifact: &Artifact,
        layer: &Digest,
    ) -> Option<Arc<LayerIndex>> {
        let d = artifact.index_deltas.get(layer)?.clone();
        let dir = self.index_dir.clone()?;
        if d.size > MAX_INDEX_SIZE as u64 {
            return None;
        }
        let base = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                let blob = index_files::load(&dir, &d.base_layer)?;
                let raw = index::decompress(&blob).ok()?;
                (Digest::of(&raw) == d.base_raw).then_some(raw)
            })
            .await
            .ok()??
        };
        let frame = match self.client.read_blob(image, &d.digest, d.size).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(%layer, cause = %e, "index delta unavailable; fetching the index");
                return None;
            }
        };
        let want = *layer;
        let rebuilt = tokio::task::spawn_blocking(move || {
            let raw = decompress_index_delta(&frame, &base, MAX_INDEX_SIZE as u64, &d.raw)
                .map_err(|e| e.to_string())?;
            let ix = decode_for(&raw, &want, index::decode_raw).map_err(|e| e.to_string())?;
            // Stored compressed fast: what matters is that it decompresses to these raw bytes,
            // the base of the next version's index delta.
            index_files::save(&dir, &want, &index::compress_raw_fast(&raw), INDEX_FILES);
            Ok::<_, String>(ix)
        })
        .await
        .ok()?;
        match rebuilt {
            Ok(ix) => {
                self.metrics.index_deltas.inc();
                Some(self.remember_index(*layer, ix))
            }
            Err(e) => {
                tracing::warn!(%layer, cause = %e, "index delta unusable; fetching the index");
                None
            }
        }
    }

    fn remember_index(&self, layer: Digest, ix: LayerIndex) -> Arc<LayerIndex> {
        let ix = Arc::new(ix);
        let mut cache = lock(&self.indexes);
        if cache.len() >= INDEX_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(layer, ix.clone());
        ix
    }

    /// The index of `layer` from memory or the index directory, never the registry.
    async fn cached_index(&self, layer: &Digest) -> Option<Arc<LayerIndex>> {
        if let Some(ix) = lock(&self.indexes).get(layer).cloned() {
            return Some(ix);
        }
        let dir = self.index_dir.clone()?;
        let want = *layer;
        let ix = tokio::task::spawn_blocking(move || {
            let blob = index_files::load(&dir, &want)?;
            match decode_for(&blob, &want, index::decode) {
                Ok(ix) => Some(ix),
                Err(e) => {
                    tracing::warn!(layer = %want, cause = %e, "dropping a bad stored index");
                    index_files::remove(&dir, &want);
                    None
                }
            }
        })
        .await
        .ok()??;
        Some(self.remember_index(*layer, ix))
    }

    /// The seed candidates whose index is on the node, as seeds.
    async fn seeds(&self, candidates: &[SeedCandidate]) -> Vec<Seed> {
        let mut seeds = Vec::new();
        for c in candidates {
            let Ok(layer) = Digest::parse(&c.layer_digest) else {
                continue;
            };
            if let Some(index) = self.cached_index(&layer).await {
                seeds.push(Seed {
                    index,
                    dir: c.fs_dir.clone(),
                });
            }
        }
        seeds
    }

    async fn fetch_chunks(
        &self,
        image: &Reference,
        ix: &LayerIndex,
        needed: Option<&[bool]>,
    ) -> Result<FetchStats, RemoteError> {
        let source = RepoRangeSource {
            client: self.client.clone(),
            repo: image.clone(),
        };
        let stats = fetch_needed(
            ix,
            needed,
            &self.store,
            &source,
            &self.fetch,
            &self.inflight,
        )
        .await?;
        self.metrics.chunks_fetched.inc_by(stats.chunks_fetched);
        self.metrics.bytes_fetched.inc_by(stats.bytes_fetched);
        self.metrics.chunks_reused.inc_by(stats.chunks_reused);
        self.metrics.delta_chunks.inc_by(stats.chunks_from_deltas);
        self.metrics.delta_fallbacks.inc_by(stats.delta_fallbacks);
        Ok(stats)
    }

    /// Starts background fetches for the image's other layers (best effort).
    fn prefetch_siblings(
        self: &Arc<Self>,
        image: &Reference,
        artifact: &Arc<Artifact>,
        req: &RemoteRequest,
    ) {
        let Some(layers) = req.labels.get(LABEL_CRI_IMAGE_LAYERS) else {
            return;
        };
        for layer in layers
            .split(',')
            .filter_map(|s| Digest::parse(s.trim()).ok())
        {
            if layer.to_string() == req.layer_digest || !artifact.indexes.contains_key(&layer) {
                continue;
            }
            if !lock(&self.prefetching).insert(layer) {
                continue;
            }
            let this = self.clone();
            let (image, artifact) = (image.clone(), artifact.clone());
            tokio::spawn(async move {
                let result = async {
                    let ix = this.layer_index(&image, &artifact, &layer).await?;
                    let _pin = this.store.pin(chunk_digests(&ix));
                    this.fetch_chunks(&image, &ix, None).await
                }
                .await;
                if let Err(e) = result {
                    tracing::debug!(%layer, cause = %e, "background prefetch failed");
                }
                lock(&this.prefetching).remove(&layer);
            });
        }
    }

    async fn assemble(self: &Arc<Self>, req: &RemoteRequest) -> Result<RemoteOutcome, RemoteError> {
        let t0 = Instant::now();
        let image = RegistryClient::parse_reference(&req.image_ref)?;
        let manifest = parse_label("cri.manifest-digest", &req.manifest_digest)?;
        let layer = parse_label("cri.layer-digest", &req.layer_digest)?;
        let (image, artifact) = self.artifact(&image, &manifest).await?;
        self.prefetch_siblings(&image, &artifact, req);
        let artifact_ms = t0.elapsed().as_millis() as u64;
        let ix = self.layer_index(&image, &artifact, &layer).await?;
        chunksnap_core::fetch::check_layer(
            &ix,
            self.store.stats().budget,
            self.fetch.max_layer_content,
        )?;
        let index_ms = t0.elapsed().as_millis() as u64 - artifact_ms;
        let seeds = self.seeds(&req.seeds).await;
        let ix2 = ix.clone();
        let (seeding, needed) = tokio::task::spawn_blocking(move || {
            let seeding = Seeding::plan(&ix2, seeds);
            let needed = seeding.needed_chunks(&ix2);
            (seeding, needed)
        })
        .await?;
        let pin = self.store.pin(chunk_digests(&ix));
        let started = Instant::now();
        let plan_ms = t0.elapsed().as_millis() as u64 - artifact_ms - index_ms;
        // Fetching and assembling overlap: the assembler writes what is local (and links seeds)
        // while the missing chunks arrive; a chunk it reaches first is waited for (or fetched)
        // by the reader.
        let fetch_failed = Arc::new(AtomicBool::new(false));
        let fetch = {
            let (this, image, ix, failed) = (
                self.clone(),
                image.clone(),
                ix.clone(),
                fetch_failed.clone(),
            );
            let token = req.claim.token();
            tokio::spawn(async move {
                let fetch = this.fetch_chunks(&image, &ix, Some(&needed));
                let result = unless_cancelled(&token, fetch).await;
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                (result, started.elapsed())
            })
        };
        let reader = FetchingReader {
            remote: self.clone(),
            image: image.clone(),
            index: ix.clone(),
            runtime: tokio::runtime::Handle::current(),
            give_up: fetch_failed,
            claim: req.claim.clone(),
        };
        let dest = req.fs_dir.clone();
        let parents: Vec<PathBuf> = req.parent_dirs.clone();
        let ix2 = ix.clone();
        // The thread holds the claim (in `reader`) until it returns: a Remove of an abandoned
        // prepare cancels it and waits for that.
        let assembled = tokio::task::spawn_blocking(move || {
            let opts = AssembleOptions {
                mode: WhiteoutMode::Overlay,
                parents: &parents,
                seeding: Some(&seeding),
                cancel: Some(reader.claim.flag()),
            };
            assemble_layer_with(&ix2, &reader, &dest, &opts)
        })
        .await;
        let assemble_ms = started.elapsed().as_millis() as u64;
        // The fetch's own error is the cause when both failed.
        let (stats, fetched_in) = fetch.await?;
        let stats = stats?;
        let assembled = assembled??;
        drop(pin);
        self.after_prepare();
        self.metrics.seeded_files.inc_by(assembled.seeded_files);
        self.metrics.seeded_bytes.inc_by(assembled.seeded_bytes);
        self.metrics.seeds_rejected.inc_by(assembled.seeds_rejected);
        tracing::info!(
            layer = %layer,
            chunks_fetched = stats.chunks_fetched,
            bytes_fetched = stats.bytes_fetched,
            chunks_reused = stats.chunks_reused,
            chunks_from_deltas = stats.chunks_from_deltas,
            requests = stats.requests,
            files = assembled.files,
            seeded_files = assembled.seeded_files,
            seeded_bytes = assembled.seeded_bytes,
            seeds_rejected = assembled.seeds_rejected,
            artifact_ms,
            index_ms,
            plan_ms,
            fetch_ms = fetched_in.as_millis() as u64,
            assemble_ms,
            total_ms = t0.elapsed().as_millis() as u64,
            "layer assembled from chunks"
        );
        Ok(RemoteOutcome::Assembled {
            size: (assembled.bytes_written + entry_overhead(&ix)) as i64,
            inodes: ix.entries.len() as i64,
        })
    }

    /// Fetches every chunk of `image_ref` (this node's platform) into the store, without
    /// assembling anything: `chunksnap prefetch`.
    pub async fn prefetch_image(&self, image_ref: &str) -> Result<FetchStats, RemoteError> {
        let image = RegistryClient::parse_reference(image_ref)?;
        let manifests = self.client.platform_manifests(&image).await?;
        let want = node_platform();
        let chosen = manifests
            .iter()
            .find(|m| m.platform.as_deref() == Some(want.as_str()))
            .or_else(|| manifests.iter().find(|m| m.platform.is_none()))
            .ok_or(RemoteError::NoPlatform(want))?;
        let (image, artifact) = self.artifact(&image, &chosen.raw.digest).await?;
        let mut total = FetchStats::default();
        for layer in &chosen.manifest.layers {
            let layer = parse_label("layer digest", &layer.digest)?;
            let ix = self.layer_index(&image, &artifact, &layer).await?;
            let _pin = self.store.pin(chunk_digests(&ix));
            let s = self.fetch_chunks(&image, &ix, None).await?;
            total.add(&s);
        }
        Ok(total)
    }

    /// Keeps the store within its budget and the gauge current (eviction never touches pinned
    /// chunks of in-flight prepares).
    fn after_prepare(self: &Arc<Self>) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.store.evict_to_budget() {
                tracing::warn!(cause = %e, "chunk store eviction failed");
            }
            this.metrics
                .store_bytes
                .set(this.store.stats().bytes as i64);
        });
    }
}

/// The store as the assembler's chunk source; a chunk it lacks (a seed file that failed its
/// check, or an eviction race) is fetched from the registry there and then. Used on blocking
/// threads only.
struct FetchingReader {
    remote: Arc<ChunkRemote>,
    image: Reference,
    index: Arc<LayerIndex>,
    runtime: tokio::runtime::Handle,
    /// Set when the layer's fetch failed: the prepare falls back, so do not fetch chunk by chunk.
    give_up: Arc<AtomicBool>,
    /// The prepare's claim: once cancelled, nothing more is fetched for it.
    claim: DirClaim,
}

impl ChunkReader for FetchingReader {
    fn read_chunk(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        match self.remote.store.get(digest, size) {
            Err(StoreError::Missing(_))
                if !self.give_up.load(Ordering::Relaxed) && !self.claim.is_cancelled() => {}
            other => return other,
        }
        let needed: Vec<bool> = self
            .index
            .chunks
            .iter()
            .map(|c| c.digest.as_slice() == digest.as_bytes().as_slice())
            .collect();
        let _pin = self.remote.store.pin([*digest]);
        let fetch = self
            .remote
            .fetch_chunks(&self.image, &self.index, Some(&needed));
        let fetched = self
            .runtime
            .block_on(unless_cancelled(&self.claim.token(), fetch));
        if let Err(e) = fetched {
            tracing::warn!(%digest, cause = %e, "fetching a chunk while assembling failed");
            return Err(StoreError::Missing(*digest));
        }
        self.remote.store.get(digest, size)
    }
}

/// Decodes a stored or fetched index (with `decode`: a blob, or raw bytes) and checks that it
/// describes `layer`.
fn decode_for(
    bytes: &[u8],
    layer: &Digest,
    decode: fn(&[u8]) -> Result<LayerIndex, index::FormatError>,
) -> Result<LayerIndex, RemoteError> {
    let ix = decode(bytes)?;
    if ix.source.as_ref().map(|s| s.digest.as_str()) != Some(layer.to_string().as_str()) {
        return Err(RemoteError::WrongLayer {
            expected: *layer,
            found: ix
                .source
                .as_ref()
                .map(|s| s.digest.clone())
                .unwrap_or_default(),
        });
    }
    Ok(ix)
}

/// `os/arch` of this node in OCI terms.
fn node_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// Disk blocks a layer's non-file entries take, roughly (directories, links), for Usage.
fn entry_overhead(ix: &LayerIndex) -> u64 {
    ix.entries
        .iter()
        .filter(|e| e.r#type == EntryType::Dir as i32)
        .count() as u64
        * 4096
}

fn chunk_digests(ix: &LayerIndex) -> Vec<Digest> {
    ix.chunks
        .iter()
        .filter_map(|c| Digest::from_slice(&c.digest).ok())
        .collect()
}

fn parse_label(label: &'static str, value: &str) -> Result<Digest, RemoteError> {
    Digest::parse(value).map_err(|e| RemoteError::Label {
        label,
        why: e.to_string(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Newtype so the service can hold the remote path as `Arc<dyn RemoteLayers>`.
pub struct ChunkRemoteLayers(pub Arc<ChunkRemote>);

impl RemoteLayers for ChunkRemoteLayers {
    fn prepare_remote(&self, req: RemoteRequest) -> RemoteFuture<'_> {
        Box::pin(async move {
            match self.0.assemble(&req).await {
                Ok(outcome) => outcome,
                Err(e) => RemoteOutcome::Fallback(e.to_string()),
            }
        })
    }
}
