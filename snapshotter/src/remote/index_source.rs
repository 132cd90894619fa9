//! Where a layer's index comes from, cheapest first: memory, the node's index files, a rebuild
//! from the artifact's index delta (when the node holds the delta's base, the previous
//! version's index), the artifact itself (small indexes are embedded), the registry.
//!
//! The image's chunksnap artifact is found once per repository and manifest digest (mirrors
//! first, then the origin) and remembered, "no artifact" for [`NEGATIVE_TTL`] only: an artifact
//! found for a copy of the image in another repository is never used for this one. Every index
//! is checked to describe the layer it is asked for before it is used; fetched indexes are
//! cached per layer and index content, and only the indexes of layers this node assembled and
//! verified become seed sources and index delta bases (memory and `indexes/` on disk). After a
//! failed verification the layer's indexes and the artifact are forgotten: a bad artifact costs
//! speed once, never correctness.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chunksnap_core::registry::RegistryClient;
use chunksnap_format::artifact::{Artifact, IndexDelta};
use chunksnap_format::budget::held_size;
use chunksnap_format::delta::decompress_index_delta;
use chunksnap_format::digest::Digest;
use chunksnap_format::index::{self, MAX_INDEX_SIZE};
use chunksnap_format::pb::LayerIndex;
use oci_client::Reference;

use super::artifact_cache::BoundedMap;
use super::error::{RemoteError, lock};
use super::index_cache::IndexCache;
use super::index_files;
use crate::metrics::Metrics;

/// How long "this image has no artifact" is remembered, so the layers of one unconverted
/// image do not each ask the registry again.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Layer indexes kept in memory, per cache (fetched, verified), and the bytes each cache's
/// indexes may hold together: one index of a large layer holds tens of MB (its tar-split
/// records), and the node's index files on disk remain behind both.
const INDEX_CACHE_ENTRIES: usize = 64;
const INDEX_CACHE_BYTES: u64 = 64 << 20;
/// Layer indexes kept on disk (for seeding after a restart); the least recently used go.
const INDEX_FILES: usize = 256;
/// Artifact lookups kept (per repository and manifest digest), and for how long.
const ARTIFACT_ENTRIES: usize = 256;
const ARTIFACT_TTL: Duration = Duration::from_secs(3600);

/// A found artifact and the repository (origin or mirror) it was found in.
pub(super) type Found = (Reference, Arc<Artifact>);
type ArtifactEntry = (Instant, Option<Found>);
/// Artifacts are cached per repository (`registry/name`) and manifest.
type ArtifactKey = (String, Digest);
/// Indexes are cached per layer and what fixes their content (the index blob's digest, or the
/// raw digest an index delta rebuilds).
type IndexKey = (Digest, String);

/// The artifacts and layer indexes of the images this node pulls, with their caches.
pub struct IndexSource {
    client: RegistryClient,
    metrics: Metrics,
    artifacts: Mutex<BoundedMap<ArtifactKey, ArtifactEntry>>,
    indexes: Mutex<IndexCache<IndexKey>>,
    /// Indexes of layers this node assembled and verified, per layer (seeds, delta bases).
    verified: Mutex<IndexCache<Digest>>,
    /// Registry host -> mirror hosts tried first (in order) for artifacts, indexes and packs.
    mirrors: BTreeMap<String, Vec<String>>,
    /// Where layer indexes are kept across restarts (`None`: memory only).
    index_dir: Option<PathBuf>,
}

impl IndexSource {
    /// Looks artifacts up with `client` (through `mirrors`), keeping indexes in `index_dir`.
    pub fn new(
        client: RegistryClient,
        metrics: Metrics,
        mirrors: BTreeMap<String, Vec<String>>,
        index_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            client,
            metrics,
            artifacts: Mutex::new(BoundedMap::new(ARTIFACT_ENTRIES, ARTIFACT_TTL)),
            indexes: Mutex::new(IndexCache::new(INDEX_CACHE_ENTRIES, INDEX_CACHE_BYTES)),
            verified: Mutex::new(IndexCache::new(INDEX_CACHE_ENTRIES, INDEX_CACHE_BYTES)),
            mirrors,
            index_dir,
        }
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

    /// The image's artifact and the repository (origin or mirror) that holds it.
    pub(super) async fn artifact(
        &self,
        image: &Reference,
        manifest: &Digest,
    ) -> Result<Found, RemoteError> {
        let key = artifact_key(image, manifest);
        if let Some((at, cached)) = lock(&self.artifacts).get(&key).cloned() {
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
        lock(&self.artifacts).insert(key, (Instant::now(), found.clone()));
        found.ok_or(RemoteError::NoArtifact)
    }

    /// The index of `layer` from the cheapest source that has it (see the module docs).
    pub(super) async fn layer_index(
        &self,
        image: &Reference,
        artifact: &Artifact,
        layer: &Digest,
    ) -> Result<Arc<LayerIndex>, RemoteError> {
        let desc = artifact
            .indexes
            .get(layer)
            .ok_or(RemoteError::NoIndex(*layer))?;
        let by_delta = artifact.index_deltas.get(layer).map(|d| d.raw.to_string());
        for content in std::iter::once(&desc.digest).chain(by_delta.as_ref()) {
            if let Some(ix) = lock(&self.indexes).get(&(*layer, content.clone())) {
                return Ok(ix);
            }
        }
        if let Some(ix) = self.cached_index(layer).await {
            return Ok(ix);
        }
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
        let want = *layer;
        let permit = decode_permit().await;
        let ix = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            decode_for(&blob, &want, index::decode)
        })
        .await??;
        Ok(self.remember_index((*layer, desc.digest.clone()), ix))
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
        let (base_layer, base_raw) = (d.base_layer, d.base_raw);
        // The verified index in memory first: its file is written in the background after
        // verification, so a prepare right after the base's may not find it on disk yet.
        let in_memory = lock(&self.verified).get(&base_layer);
        // Without the base the delta is of no use: not fetched.
        if in_memory.is_none() && !self.on_disk(&base_layer).await {
            return None;
        }
        // The base is read from disk while the delta is on the wire.
        let base = tokio::task::spawn_blocking(move || {
            if let Some(ix) = in_memory {
                let raw = index::encode_raw(&ix);
                if Digest::of(&raw) == base_raw {
                    return Some(raw);
                }
            }
            let blob = index_files::load(&dir, &base_layer)?;
            let raw = index::decompress(&blob).ok()?;
            (Digest::of(&raw) == base_raw).then_some(raw)
        });
        let key = (*layer, d.raw.to_string());
        let (base, frame) = tokio::join!(base, self.client.read_blob(image, &d.digest, d.size));
        let base = base.ok()??;
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(%layer, cause = %e, "index delta unavailable; fetching the index");
                return None;
            }
        };
        let want = *layer;
        let permit = decode_permit().await;
        let rebuilt = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let raw = decompress_index_delta(&frame, &base, MAX_INDEX_SIZE as u64, &d.raw)
                .map_err(|e| e.to_string())?;
            // The base's raw bytes are as large as the index: not held through the decode.
            drop((base, frame));
            decode_for(&raw, &want, index::decode_raw).map_err(|e| e.to_string())
        })
        .await
        .ok()?;
        match rebuilt {
            Ok(ix) => {
                self.metrics.index_deltas.inc();
                Some(self.remember_index(key, ix))
            }
            Err(e) => {
                tracing::warn!(%layer, cause = %e, "index delta unusable; fetching the index");
                None
            }
        }
    }

    /// The index delta `layer`'s index will be rebuilt from: the artifact has one, this node
    /// holds its base, and it holds no index of `layer` yet (a layer whose index was fetched or
    /// verified before has its chunks fetched already, or on their way).
    pub(super) async fn usable_index_delta(
        &self,
        artifact: &Artifact,
        layer: &Digest,
    ) -> Option<IndexDelta> {
        let d = artifact.index_deltas.get(layer)?;
        self.index_dir.as_ref()?;
        let fetched = lock(&self.indexes)
            .get(&(*layer, d.raw.to_string()))
            .is_some()
            || artifact.indexes.get(layer).is_some_and(|desc| {
                lock(&self.indexes)
                    .get(&(*layer, desc.digest.clone()))
                    .is_some()
            });
        let held = |l: &Digest| lock(&self.verified).get(l).is_some();
        if fetched || held(layer) || self.on_disk(layer).await {
            return None;
        }
        (held(&d.base_layer) || self.on_disk(&d.base_layer).await).then(|| d.clone())
    }

    /// Whether the index directory holds `layer`'s index.
    async fn on_disk(&self, layer: &Digest) -> bool {
        match &self.index_dir {
            Some(dir) => tokio::fs::try_exists(index_files::path(dir, layer))
                .await
                .unwrap_or(false),
            None => false,
        }
    }

    fn remember_index(&self, key: IndexKey, ix: LayerIndex) -> Arc<LayerIndex> {
        let ix = Arc::new(ix);
        let size = held_size(&ix);
        lock(&self.indexes).insert(key, ix.clone(), size);
        ix
    }

    /// `ix` described the layer this node assembled and verified: keep it as a seed source and
    /// index delta base (in memory and on disk; stored compressed fast: what matters is that it
    /// decompresses to the raw bytes the next version's index delta is made against).
    pub(super) fn remember_verified(&self, layer: Digest, ix: &Arc<LayerIndex>) {
        let size = held_size(ix);
        lock(&self.verified).insert(layer, ix.clone(), size);
        if let Some(dir) = self.index_dir.clone() {
            let ix = ix.clone();
            tokio::task::spawn_blocking(move || {
                let blob = index::compress_raw_fast(&index::encode_raw(&ix));
                index_files::save(&dir, &layer, &blob, INDEX_FILES);
            });
        }
    }

    /// Forgets every cached index of `layer` and the artifact itself after the layer failed
    /// verification.
    pub(super) fn forget_unverified(&self, image: &Reference, manifest: &Digest, layer: &Digest) {
        lock(&self.indexes).retain(|(l, _)| l != layer);
        lock(&self.artifacts).remove(&artifact_key(image, manifest));
    }

    /// The index of a layer this node verified, from memory or the index directory.
    pub(super) async fn cached_index(&self, layer: &Digest) -> Option<Arc<LayerIndex>> {
        if let Some(ix) = lock(&self.verified).get(layer) {
            return Some(ix);
        }
        let dir = self.index_dir.clone()?;
        let want = *layer;
        let permit = decode_permit().await;
        let ix = tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
        let ix = Arc::new(ix);
        let size = held_size(&ix);
        lock(&self.verified).insert(*layer, ix.clone(), size);
        Some(ix)
    }
}

fn artifact_key(image: &Reference, manifest: &Digest) -> ArtifactKey {
    (
        format!("{}/{}", image.registry(), image.repository()),
        *manifest,
    )
}

/// Index decodes running at once. Each may hold up to `chunksnap_format::budget::MAX_INDEX_MEMORY`,
/// and sibling prefetch asks for every layer of an image together.
static INDEX_DECODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A turn to decode an index (held by the blocking task that decodes). The semaphore is never
/// closed, so `None` cannot happen in practice; it would only lift the limit.
async fn decode_permit() -> Option<tokio::sync::SemaphorePermit<'static>> {
    INDEX_DECODES.acquire().await.ok()
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
