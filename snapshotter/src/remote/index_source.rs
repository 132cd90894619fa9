//! Where a layer's index comes from, cheapest first: memory, the node's index files, a rebuild
//! from the artifact's index delta (when the node holds the delta's base, the previous
//! version's index), the artifact itself (small indexes are embedded), the registry.
//!
//! The image's chunksnap artifact is found once per manifest digest (mirrors first, then the
//! origin) and remembered, "no artifact" for [`NEGATIVE_TTL`] only. Every index is checked to
//! describe the layer it is asked for before it is used or kept.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chunksnap_core::registry::RegistryClient;
use chunksnap_format::artifact::Artifact;
use chunksnap_format::delta::decompress_index_delta;
use chunksnap_format::digest::Digest;
use chunksnap_format::index::{self, MAX_INDEX_SIZE};
use chunksnap_format::pb::LayerIndex;
use oci_client::Reference;

use super::chunk_remote::{RemoteError, lock};
use super::index_files;
use crate::metrics::Metrics;

/// How long "this image has no artifact" is remembered, so the layers of one unconverted
/// image do not each ask the registry again.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Layer indexes kept in memory.
const INDEX_CACHE_ENTRIES: usize = 64;
/// Layer indexes kept on disk (for seeding after a restart); the least recently used go.
const INDEX_FILES: usize = 256;

/// A found artifact and the repository (origin or mirror) it was found in.
pub(super) type Found = (Reference, Arc<Artifact>);
type ArtifactEntry = (Instant, Option<Found>);

/// The artifacts and layer indexes of the images this node pulls, with their caches.
pub struct IndexSource {
    client: RegistryClient,
    metrics: Metrics,
    artifacts: Mutex<HashMap<Digest, ArtifactEntry>>,
    indexes: Mutex<HashMap<Digest, Arc<LayerIndex>>>,
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
            artifacts: Mutex::new(HashMap::new()),
            indexes: Mutex::new(HashMap::new()),
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

    /// The index of `layer` from the cheapest source that has it (see the module docs).
    pub(super) async fn layer_index(
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
    pub(super) async fn cached_index(&self, layer: &Digest) -> Option<Arc<LayerIndex>> {
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
