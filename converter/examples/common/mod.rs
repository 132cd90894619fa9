//! Shared by the tuning examples: an uncompressed layer tar read whole, described as the layer
//! a manifest would name; a sink that drops packs; a catalog of an earlier version's chunks.

// Each example uses some of these.
#![allow(dead_code)]

pub mod with_deltas;

use std::collections::HashMap;

use chunkconv::layer::{
    ChunkCatalog, EmptyCatalog, ExistingChunk, LayerOptions, LayerOutcome, PackSink, SinkError,
    convert_layer,
};
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

/// Two versions of a layer converted as `chunkconv convert` converts them: v1 alone, then v2
/// against v1's chunks (default options, packs dropped).
pub struct Pair {
    /// The tars' bytes.
    pub v1: Vec<u8>,
    pub v2: Vec<u8>,
    pub i1: LayerIndex,
    pub out2: LayerOutcome,
}

/// Reads and converts the tars at `v1` and `v2` (see [`Pair`]).
pub fn convert_pair(v1: &str, v2: &str) -> anyhow::Result<Pair> {
    let (d1, in1) = read_layer(v1)?;
    let (d2, in2) = read_layer(v2)?;
    let opts = LayerOptions::default();
    let i1 = convert_layer(d1.as_slice(), &in1, &opts, &EmptyCatalog, &mut Discard)?.index;
    let known = Known::of(&i1)?;
    let out2 = convert_layer(d2.as_slice(), &in2, &opts, &known, &mut Discard)?;
    Ok(Pair {
        v1: d1,
        v2: d2,
        i1,
        out2,
    })
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

/// A change made to both indexes before their index delta is measured, given a set of v1's
/// digests (which kind is up to the probe).
pub type Edit = fn(&mut LayerIndex, &std::collections::HashSet<Vec<u8>>);

/// Prints, for each named edit, the size of `i2`'s index delta against `i1`'s once the edit is
/// made to both.
pub fn print_index_delta_variants(
    i1: &LayerIndex,
    i2: &LayerIndex,
    old: &std::collections::HashSet<Vec<u8>>,
    variants: &[(&str, Edit)],
) -> anyhow::Result<()> {
    use chunksnap_format::delta::compress_index_delta;
    use chunksnap_format::index::encode_raw;
    for (name, edit) in variants {
        let (mut a, mut b) = (i1.clone(), i2.clone());
        edit(&mut a, old);
        edit(&mut b, old);
        let size = compress_index_delta(&encode_raw(&a), &encode_raw(&b))
            .transpose()?
            .map_or(0, |d| d.len());
        println!("{name:32} {size:>9} B");
    }
    Ok(())
}
