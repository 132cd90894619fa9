//! The dedup catalog: which chunks (and whole layers) the repository already stores, gathered
//! from chunksnap artifacts — the same image manifest's first, then `--base` images, then the
//! repository's other tags (sorted). The first place a chunk is seen wins, so the catalog, and
//! therefore the conversion, depends only on what is in the registry, not on timing.
//!
//! It also picks each new layer's delta reference ([`Catalog::reference_for`]): the known layer
//! sharing the most chunks with it (else the most file paths), i.e. usually the same layer of
//! the previous version, whose chunks the nodes being updated hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use chunksnap_core::registry::{Reference, RegistryClient, RegistryError};
use chunksnap_format::FormatError;
use chunksnap_format::artifact::{Artifact, ArtifactError, Descriptor};
use chunksnap_format::digest::{Digest, DigestError};
use chunksnap_format::index::{self, MAX_INDEX_SIZE};
use chunksnap_format::pb::{EntryType, LayerIndex};

use crate::layer::{ChunkCatalog, ExistingChunk};

/// Errors from gathering the catalog or loading a layer index; the crate's error wraps them
/// transparently, so the messages are the same as before.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Registry access failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// An artifact manifest is unusable.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// A layer index blob is unusable.
    #[error("layer index: {0}")]
    Format(#[from] FormatError),
    /// A malformed digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A layer index that contradicts itself.
    #[error("bad layer index: {0}")]
    BadIndex(String),
    /// Decoding an index on a blocking thread panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

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
    /// Its chunk sketches blob, when the artifact has one (in `home`).
    pub sketch: Option<Descriptor>,
    /// The index has tar-split data (format 2): nodes can verify the layer.
    pub verifiable: bool,
}

/// Chunks and layers already stored, with the repository each pack lives in.
#[derive(Debug, Default)]
pub struct Catalog {
    chunks: HashMap<Digest, ExistingChunk>,
    layers: HashMap<Digest, KnownLayer>,
    pack_home: BTreeMap<Digest, Reference>,
    artifacts: usize,
    /// Known layers in the order added (a layer's number is its position here).
    order: Vec<Digest>,
    /// Chunk -> numbers of the layers whose streams contain it.
    holders: HashMap<Digest, Vec<u32>>,
    /// Per layer number: hashes of its regular files' paths.
    paths: Vec<HashSet<u64>>,
}

fn path_hash(path: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

fn file_paths(idx: &LayerIndex) -> impl Iterator<Item = &[u8]> {
    idx.entries
        .iter()
        .filter(|e| e.r#type == EntryType::File as i32 && e.size > 0)
        .map(|e| e.path.as_slice())
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
        sketch: Option<&Descriptor>,
    ) -> Result<(), CatalogError> {
        let mut packs = Vec::with_capacity(idx.packs.len());
        for p in &idx.packs {
            let d = Digest::parse(&p.digest)?;
            packs.push((d, p.size));
            self.pack_home.entry(d).or_insert_with(|| repo.clone());
        }
        for c in &idx.chunks {
            let digest = Digest::from_slice(&c.digest)?;
            let Some(&(pack, pack_size)) = packs.get(c.pack as usize) else {
                return Err(CatalogError::BadIndex(format!(
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
        if !self.layers.contains_key(&layer_digest) {
            let number = self.order.len() as u32;
            self.order.push(layer_digest);
            let mut seen = HashSet::new();
            for c in &idx.chunks {
                let digest = Digest::from_slice(&c.digest)?;
                if seen.insert(digest) {
                    self.holders.entry(digest).or_default().push(number);
                }
            }
            self.paths.push(file_paths(idx).map(path_hash).collect());
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
                sketch: sketch.cloned(),
                verifiable: idx.tar_split.is_some(),
            });
        Ok(())
    }

    /// The known layer to compute `index`'s deltas against: the one sharing the most distinct
    /// chunks with it, or, when none shares a chunk, the most file paths (a rebuild that
    /// changed every chunk). Ties go to the layer added last (the newest tag in sorted order).
    /// `None` when nothing is shared at all, or the best is the layer itself.
    pub fn reference_for(&self, index: &LayerIndex) -> Option<(Digest, &KnownLayer)> {
        let mut score = vec![0u64; self.order.len()];
        let mut seen = HashSet::new();
        for c in &index.chunks {
            let Ok(d) = Digest::from_slice(&c.digest) else {
                continue;
            };
            if seen.insert(d) {
                for &n in self.holders.get(&d).into_iter().flatten() {
                    score[n as usize] += 1;
                }
            }
        }
        if score.iter().all(|&s| s == 0) {
            let paths: HashSet<u64> = file_paths(index).map(path_hash).collect();
            for (n, known) in self.paths.iter().enumerate() {
                score[n] = known.intersection(&paths).count() as u64;
            }
        }
        let own = index
            .source
            .as_ref()
            .and_then(|s| Digest::parse(&s.digest).ok());
        let (best, _) = score
            .iter()
            .enumerate()
            .filter(|&(n, &s)| s > 0 && Some(self.order[n]) != own)
            .max_by_key(|&(n, &s)| (s, n))?;
        let digest = self.order[best];
        Some((digest, self.layers.get(&digest)?))
    }

    /// Loads every layer index of `artifact` (stored in `repo`) into the catalog.
    pub async fn add_artifact(
        &mut self,
        client: &RegistryClient,
        repo: &Reference,
        artifact: &Artifact,
    ) -> Result<(), CatalogError> {
        for (layer, desc) in &artifact.indexes {
            if self.layers.contains_key(layer) {
                continue;
            }
            let idx = load_index(client, repo, desc).await?;
            self.add_index(repo, *layer, desc, &idx, artifact.sketches.get(layer))?;
        }
        self.artifacts += 1;
        Ok(())
    }

    /// Adds the artifacts of every platform manifest of `image` (those that have one).
    pub async fn add_image(
        &mut self,
        client: &RegistryClient,
        image: &Reference,
    ) -> Result<(), CatalogError> {
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
    ) -> Result<(), CatalogError> {
        let mut tags = match client.list_tags(image).await {
            Ok(t) => t,
            Err(RegistryError::NotFound { .. }) => return Ok(()),
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
) -> Result<LayerIndex, CatalogError> {
    Ok(load_index_raw(client, repo, desc).await?.1)
}

/// Fetches (or takes embedded) a layer index blob: its raw (decompressed) protobuf bytes and the decoded index.
pub async fn load_index_raw(
    client: &RegistryClient,
    repo: &Reference,
    desc: &Descriptor,
) -> Result<(Vec<u8>, LayerIndex), CatalogError> {
    let bytes = client
        .read_described(repo, desc, MAX_INDEX_SIZE as u64)
        .await?;
    let decoded = tokio::task::spawn_blocking(move || {
        let raw = index::decompress(&bytes)?;
        let idx = index::decode_raw(&raw)?;
        Ok::<_, index::FormatError>((raw, idx))
    })
    .await??;
    Ok(decoded)
}
