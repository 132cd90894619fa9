//! Two versions of a layer converted as `chunkconv convert` ships them, deltas included, with
//! the packs kept in memory.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use chunkconv::delta::{DeltaOptions, PlanOptions, Sketches, attach, encode, hints, plan};
use chunkconv::layer::{EmptyCatalog, LayerOptions, PackSink, SinkError, convert_layer};
use chunksnap_core::assemble::ChunkReader;
use chunksnap_core::store::StoreError;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::LayerIndex;

/// Packs by digest (`sha256:<hex>`), kept in memory: the "registry".
#[derive(Default)]
pub struct Packs(pub HashMap<String, Bytes>);

impl PackSink for Packs {
    fn put_pack(&mut self, d: &Digest, data: Vec<u8>) -> Result<(), SinkError> {
        self.0.insert(d.to_string(), Bytes::from(data));
        Ok(())
    }
}

/// Every chunk's bytes by digest (for computing deltas).
pub struct Plain(HashMap<Digest, Vec<u8>>);

impl ChunkReader for Plain {
    fn read_chunk(&self, digest: &Digest, _: u32) -> Result<Vec<u8>, StoreError> {
        self.0
            .get(digest)
            .cloned()
            .ok_or(StoreError::Missing(*digest))
    }
}

/// Adds the chunks of `ix`, read back from `packs`, to `into`.
fn plain_chunks(
    ix: &LayerIndex,
    packs: &Packs,
    into: &mut HashMap<Digest, Vec<u8>>,
) -> anyhow::Result<()> {
    for c in &ix.chunks {
        let d = Digest::from_slice(&c.digest)?;
        let p = &packs.0[&ix.packs[c.pack as usize].digest];
        let stored =
            &p[c.pack_offset as usize..(c.pack_offset + u64::from(c.stored_size)) as usize];
        let data =
            chunksnap_format::pack::decompress_chunk(stored, c.compression(), c.size.into(), &d)?;
        into.insert(d, data);
    }
    Ok(())
}

/// v1 converted alone; v2 against v1's chunks with its deltas attached and the content digests
/// a node holding v1 cannot use left out; every pack of both.
pub struct DeltaPair {
    pub i1: LayerIndex,
    pub i2: LayerIndex,
    pub packs: Packs,
    /// Delta frames kept.
    pub deltas: usize,
}

/// Converts the tars at `v1` and `v2` into a [`DeltaPair`] (default options).
pub fn convert_with_deltas(v1: &str, v2: &str) -> anyhow::Result<DeltaPair> {
    let opts = LayerOptions::default();
    let mut packs = Packs::default();
    let (d1, in1) = super::read_layer(v1)?;
    let out1 = convert_layer(d1.as_slice(), &in1, &opts, &EmptyCatalog, &mut packs)?;
    drop(d1);
    let i1 = out1.index;
    let known = super::Known::of(&i1)?;
    let (d2, in2) = super::read_layer(v2)?;
    let out2 = convert_layer(d2.as_slice(), &in2, &opts, &known, &mut packs)?;
    drop(d2);
    let mut i2 = out2.index;
    hints::drop_new_small_file_digests(&mut i2, &i1);
    let new_packs: Vec<String> = out2
        .stats
        .packs
        .iter()
        .map(|(d, _)| d.to_string())
        .collect();
    let mut first = HashSet::new();
    let candidate: Vec<bool> = i2
        .chunks
        .iter()
        .map(|c| {
            new_packs.contains(&i2.packs[c.pack as usize].digest) && first.insert(c.digest.clone())
        })
        .collect();
    let mut plain = HashMap::new();
    plain_chunks(&i1, &packs, &mut plain)?;
    plain_chunks(&i2, &packs, &mut plain)?;
    let sketches = Sketches {
        new: &out2.sketches,
        reference: &out1.sketches,
    };
    let tries = plan(
        &i2,
        &candidate,
        &i1,
        &PlanOptions::default(),
        Some(sketches),
    );
    let frames = encode(&i2, &tries, &i1, &Plain(plain), &DeltaOptions::default())?;
    let deltas = frames.len();
    for (d, data) in attach(&mut i2, &i1, frames, DeltaOptions::default().pack_size)? {
        packs.put_pack(&d, data).map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(DeltaPair {
        i1,
        i2,
        packs,
        deltas,
    })
}
