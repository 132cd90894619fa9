//! Shared by the tuning examples: an uncompressed layer tar read whole, described as the layer
//! a manifest would name; a sink that drops packs; a catalog of an earlier version's chunks.

// Each example uses some of these.
#![allow(dead_code)]

use std::collections::HashMap;

use chunkconv::layer::{ChunkCatalog, ExistingChunk, PackSink, SinkError};
use chunksnap_format::pb::LayerIndex;

use anyhow::Context;
use chunkconv::layer::LayerInput;
use chunksnap_format::digest::Digest;

/// The bytes of the tar at `path` and its [`LayerInput`].
pub fn read_layer(path: &str) -> anyhow::Result<(Vec<u8>, LayerInput)> {
    let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let input = LayerInput {
        digest: Digest::of(&data),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size: Some(data.len() as u64),
    };
    Ok((data, input))
}

/// A pack sink that drops the packs (when only the index matters).
pub struct Discard;

impl PackSink for Discard {
    fn put_pack(&mut self, _: &Digest, _: Vec<u8>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The chunks of a converted layer, where its packs hold them: the catalog a later version is
/// converted against (as `chunkconv convert` does with the repository's other tags).
pub struct Known(HashMap<Digest, ExistingChunk>);

impl Known {
    pub fn of(index: &LayerIndex) -> anyhow::Result<Self> {
        let mut known = HashMap::new();
        for c in &index.chunks {
            let pack = &index.packs[c.pack as usize];
            known.insert(
                Digest::from_slice(&c.digest)?,
                ExistingChunk {
                    pack: Digest::parse(&pack.digest)?,
                    pack_size: pack.size,
                    offset: c.pack_offset,
                    stored_size: c.stored_size,
                    compression: c.compression(),
                },
            );
        }
        Ok(Self(known))
    }
}

impl ChunkCatalog for Known {
    fn lookup(&self, digest: &Digest) -> Option<ExistingChunk> {
        self.0.get(digest).cloned()
    }
}
