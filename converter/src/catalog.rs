//! The dedup catalog: which chunks (and whole layers) the repository already stores, gathered
//! from chunksnap artifacts — the same image manifest's first, then `--base` images, then the
//! repository's other tags (sorted). The first place a chunk is seen wins, so the catalog, and
//! therefore the conversion, depends only on what is in the registry, not on timing.

use std::collections::{BTreeMap, HashMap};

use chunksnap_core::digest::Digest;
use chunksnap_core::format::artifact::{Artifact, Descriptor};
use chunksnap_core::format::index::{self, MAX_INDEX_SIZE};
use chunksnap_core::registry::{Reference, RegistryClient};
use chunksnap_proto::index::LayerIndex;

use crate::ConvertError;
use crate::layer::{ChunkCatalog, ExistingChunk};

/// A converted layer found in an artifact: its index blob and what the index says.
#[derive(Debug, Clone)]
pub struct KnownLayer {
    /// The layer index blob.
    pub index: Descriptor,
    /// Packs the index uses (digest, size).
    pub packs: Vec<(Digest, u64)>,
    /// Entries in the layer.
    pub entries: u64,
    /// Chunks in the layer's content stream.
    pub chunks: u64,
    /// Compressed source layer size.
    pub bytes: u64,
    /// The repository the index blob was found in.
    pub home: Reference,
}

/// Chunks and layers already stored, with the repository each pack lives in.
#[derive(Debug, Default)]
pub struct Catalog {
    chunks: HashMap<Digest, ExistingChunk>,
    layers: HashMap<Digest, KnownLayer>,
    pack_home: BTreeMap<Digest, Reference>,
    artifacts: usize,
}

impl ChunkCatalog for Catalog {
    fn lookup(&self, digest: &Digest) -> Option<ExistingChunk> {
        self.chunks.get(digest).cloned()
    }
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Distinct chunks known.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Artifacts loaded.
    pub fn artifact_count(&self) -> usize {
        self.artifacts
    }

    /// Whether the chunk is known.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.chunks.contains_key(digest)
    }

    /// A layer converted before (same source layer digest).
    pub fn layer(&self, layer_digest: &Digest) -> Option<&KnownLayer> {
        self.layers.get(layer_digest)
    }

    /// The repository a known pack was found in.
    pub fn pack_home(&self, pack: &Digest) -> Option<&Reference> {
        self.pack_home.get(pack)
    }

    /// Adds the chunks of `index` (found in `repo`) not already known.
    pub fn add_index(
        &mut self,
        repo: &Reference,
        layer_digest: Digest,
        desc: &Descriptor,
        idx: &LayerIndex,
    ) -> Result<(), ConvertError> {
        let mut packs = Vec::with_capacity(idx.packs.len());
        for p in &idx.packs {
            let d = Digest::parse(&p.digest)?;
            packs.push((d, p.size));
            self.pack_home.entry(d).or_insert_with(|| repo.clone());
        }
        for c in &idx.chunks {
            let digest = Digest::from_slice(&c.digest)?;
            let Some(&(pack, pack_size)) = packs.get(c.pack as usize) else {
                return Err(ConvertError::BadIndex(format!(
                    "{layer_digest}: chunk refers to pack {} of {}",
                    c.pack,
                    packs.len()
                )));
            };
            self.chunks.entry(digest).or_insert(ExistingChunk {
                pack,
                pack_size,
                offset: c.pack_offset,
                stored_size: c.stored_size,
                compression: c.compression(),
            });
        }
        self.layers
            .entry(layer_digest)
            .or_insert_with(|| KnownLayer {
                index: desc.clone(),
                packs,
                entries: idx.entries.len() as u64,
                chunks: idx.chunks.len() as u64,
                bytes: idx.source.as_ref().map_or(0, |s| s.compressed_size),
                home: repo.clone(),
            });
        Ok(())
    }

    /// Loads every layer index of `artifact` (stored in `repo`) into the catalog.
    pub async fn add_artifact(
        &mut self,
        client: &RegistryClient,
        repo: &Reference,
        artifact: &Artifact,
    ) -> Result<(), ConvertError> {
        for (layer, desc) in &artifact.indexes {
            if self.layers.contains_key(layer) {
                continue;
            }
            let idx = load_index(client, repo, desc).await?;
            self.add_index(repo, *layer, desc, &idx)?;
        }
        self.artifacts += 1;
        Ok(())
    }

    /// Adds the artifacts of every platform manifest of `image` (those that have one).
    pub async fn add_image(
        &mut self,
        client: &RegistryClient,
        image: &Reference,
    ) -> Result<(), ConvertError> {
        for pm in client.platform_manifests(image).await? {
            if let Some((_, artifact)) = client.find_artifact(image, &pm.raw.digest).await? {
                self.add_artifact(client, image, &artifact).await?;
            }
        }
        Ok(())
    }

    /// Adds the artifacts of the repository's tags (sorted), skipping referrers tags
    /// (`sha256-…`) and tags that do not resolve to images.
    pub async fn add_repository_tags(
        &mut self,
        client: &RegistryClient,
        image: &Reference,
    ) -> Result<(), ConvertError> {
        let mut tags = match client.list_tags(image).await {
            Ok(t) => t,
            Err(chunksnap_core::registry::RegistryError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        tags.sort();
        for tag in tags.iter().filter(|t| !t.starts_with("sha256-")) {
            let r = client.with_tag(image, tag);
            match self.add_image(client, &r).await {
                Ok(()) => {}
                // A tag may point at something that is not an image (or vanish meanwhile).
                Err(e) => tracing::debug!(tag, error = %e, "skipping tag for dedup"),
            }
        }
        Ok(())
    }
}

/// Fetches and decodes a layer index blob (decoding on a blocking thread).
pub async fn load_index(
    client: &RegistryClient,
    repo: &Reference,
    desc: &Descriptor,
) -> Result<LayerIndex, ConvertError> {
    let digest = desc.sha256()?;
    let bytes = client
        .read_blob(repo, &digest, MAX_INDEX_SIZE as u64)
        .await?;
    let idx = tokio::task::spawn_blocking(move || index::decode(&bytes)).await??;
    Ok(idx)
}
