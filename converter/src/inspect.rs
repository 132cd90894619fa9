//! `chunkconv inspect`: what an image's artifact holds (layers, entries, chunks, packs, bytes)
//! and, given a base, how many of its chunks the base already has.

use std::collections::HashMap;

use chunksnap_core::registry::{Reference, RegistryClient};
use chunksnap_format::digest::Digest;
use chunksnap_format::index::encode;
use chunksnap_format::pb::LayerIndex;
use serde::Serialize;

use crate::ConvertError;
use crate::catalog::{Catalog, load_index};

/// One layer of an artifact.
#[derive(Debug, Clone, Serialize)]
pub struct InspectLayer {
    /// Source layer digest.
    pub digest: String,
    /// Index blob digest.
    pub index: String,
    /// Tar entries.
    pub entries: u64,
    /// Chunks (with repeats).
    pub chunks: u64,
    /// Content stream bytes.
    pub content_bytes: u64,
    /// Compressed source layer bytes.
    pub layer_bytes: u64,
    /// Bytes of the index blob.
    pub index_bytes: u64,
    /// What the tar-split records (which let a node prove the layer by its diffID) add to the
    /// encoded index: its size minus the size of the same index encoded without them.
    pub tar_split_bytes: u64,
}

/// One platform manifest's artifact.
#[derive(Debug, Clone, Serialize)]
pub struct InspectManifest {
    /// The image manifest digest.
    pub manifest: String,
    /// `os/arch[/variant]`, if from an index.
    pub platform: Option<String>,
    /// The artifact manifest digest.
    pub artifact: String,
    /// Layers in artifact order.
    pub layers: Vec<InspectLayer>,
    /// Distinct chunks over all layers.
    pub unique_chunks: u64,
    /// Stored bytes of the distinct chunks.
    pub unique_stored_bytes: u64,
    /// Packs listed.
    pub packs: u64,
    /// Total pack bytes.
    pub pack_bytes: u64,
    /// Distinct chunks the base already has (with `--base`).
    pub base_chunks: Option<u64>,
    /// Stored bytes of those chunks.
    pub base_stored_bytes: Option<u64>,
}

/// The encoded size `index`'s tar-split records account for.
fn tar_split_bytes(index: &LayerIndex) -> u64 {
    if index.tar_split.is_none() {
        return 0;
    }
    let without = LayerIndex {
        tar_split: None,
        ..index.clone()
    };
    (encode(index).len() as u64).saturating_sub(encode(&without).len() as u64)
}

/// Inspects the artifacts of `image`'s platform manifests, comparing with `base` if given.
pub async fn inspect(
    client: &RegistryClient,
    image: &Reference,
    base: Option<&Reference>,
) -> Result<Vec<InspectManifest>, ConvertError> {
    let base_catalog = match base {
        Some(b) => {
            let mut c = Catalog::new();
            c.add_image(client, b).await?;
            Some(c)
        }
        None => None,
    };
    let mut out = Vec::new();
    for pm in client.platform_manifests(image).await? {
        let (art_digest, art) = client
            .find_artifact(image, &pm.raw.digest)
            .await?
            .ok_or_else(|| {
                ConvertError::NotConverted(format!("{}@{}", image.whole(), pm.raw.digest))
            })?;
        let mut layers = Vec::new();
        let mut unique: HashMap<Digest, u64> = HashMap::new();
        for (layer, desc) in &art.indexes {
            let idx = load_index(client, image, desc).await?;
            for c in &idx.chunks {
                unique.insert(Digest::from_slice(&c.digest)?, u64::from(c.stored_size));
            }
            let source = idx.source.clone().unwrap_or_default();
            layers.push(InspectLayer {
                digest: layer.to_string(),
                index: desc.digest.clone(),
                entries: idx.entries.len() as u64,
                chunks: idx.chunks.len() as u64,
                content_bytes: source.content_size,
                layer_bytes: source.compressed_size,
                index_bytes: desc.size,
                tar_split_bytes: tar_split_bytes(&idx),
            });
        }
        // Artifact order is image layer order; the map is by digest.
        let order: Vec<String> = pm
            .manifest
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect();
        layers.sort_by_key(|l| order.iter().position(|d| *d == l.digest));
        let (base_chunks, base_stored_bytes) = match &base_catalog {
            Some(c) => {
                let shared = unique.iter().filter(|(d, _)| c.contains(d));
                let (n, b) = shared.fold((0, 0), |(n, b), (_, s)| (n + 1, b + s));
                (Some(n), Some(b))
            }
            None => (None, None),
        };
        out.push(InspectManifest {
            manifest: pm.raw.digest.to_string(),
            platform: pm.platform.clone(),
            artifact: art_digest.to_string(),
            layers,
            unique_chunks: unique.len() as u64,
            unique_stored_bytes: unique.values().sum(),
            packs: art.packs.len() as u64,
            pack_bytes: art.packs.values().sum(),
            base_chunks,
            base_stored_bytes,
        });
    }
    Ok(out)
}
