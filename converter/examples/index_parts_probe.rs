//! Index parts probe: what the index delta a node fetches for v2 is made of, as
//! `chunkconv convert` ships it (chunk deltas attached, small new files' digests left out).
//! Prints the delta's size with one part of both indexes left out at a time:
//! `cargo run --release -p chunkconv --example index_parts_probe -- V1.tar V2.tar`.

mod common;

use std::collections::{HashMap, HashSet};

use chunkconv::delta::{DeltaOptions, PlanOptions, Sketches, attach, encode, hints, plan};
use chunkconv::layer::{EmptyCatalog, LayerOptions, PackSink, SinkError, convert_layer};
use chunksnap_core::assemble::ChunkReader;
use chunksnap_core::store::StoreError;
use chunksnap_format::delta::compress_index_delta;
use chunksnap_format::digest::Digest;
use chunksnap_format::index::encode_raw;
use chunksnap_format::pb::LayerIndex;

#[derive(Default)]
struct Packs(HashMap<String, Vec<u8>>);
impl PackSink for Packs {
    fn put_pack(&mut self, d: &Digest, data: Vec<u8>) -> Result<(), SinkError> {
        self.0.insert(d.to_string(), data);
        Ok(())
    }
}
struct Plain(HashMap<Digest, Vec<u8>>);
impl ChunkReader for Plain {
    fn read_chunk(&self, digest: &Digest, _: u32) -> Result<Vec<u8>, StoreError> {
        self.0
            .get(digest)
            .cloned()
            .ok_or(StoreError::Missing(*digest))
    }
}
fn plain(
    ix: &LayerIndex,
    packs: &Packs,
    into: &mut HashMap<Digest, Vec<u8>>,
) -> anyhow::Result<()> {
    for c in &ix.chunks {
        let d = Digest::from_slice(&c.digest)?;
        let p = &packs.0[&ix.packs[c.pack as usize].digest];
        let s = &p[c.pack_offset as usize..(c.pack_offset + u64::from(c.stored_size)) as usize];
        into.insert(
            d,
            chunksnap_format::pack::decompress_chunk(s, c.compression(), c.size.into(), &d)?,
        );
    }
    Ok(())
}
fn delta(a: &LayerIndex, b: &LayerIndex) -> anyhow::Result<usize> {
    Ok(compress_index_delta(&encode_raw(a), &encode_raw(b))
        .transpose()?
        .map_or(0, |d| d.len()))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v1, v2] = args.as_slice() else {
        anyhow::bail!("usage: index_parts_probe V1.tar V2.tar")
    };
    let opts = LayerOptions::default();
    let mut packs = Packs::default();
    let (d1, in1) = common::read_layer(v1)?;
    let out1 = convert_layer(d1.as_slice(), &in1, &opts, &EmptyCatalog, &mut packs)?;
    let i1 = out1.index;
    let known = common::Known::of(&i1)?;
    let (d2, in2) = common::read_layer(v2)?;
    let out2 = convert_layer(d2.as_slice(), &in2, &opts, &known, &mut packs)?;
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
    let mut pl = HashMap::new();
    plain(&i1, &packs, &mut pl)?;
    plain(&i2, &packs, &mut pl)?;
    let tries = plan(
        &i2,
        &candidate,
        &i1,
        &PlanOptions::default(),
        Some(Sketches {
            new: &out2.sketches,
            reference: &out1.sketches,
        }),
    );
    let frames = encode(&i2, &tries, &i1, &Plain(pl), &DeltaOptions::default())?;
    let nd = frames.len();
    attach(&mut i2, &i1, frames, DeltaOptions::default().pack_size)?;
    let old: HashSet<Vec<u8>> = i1.chunks.iter().map(|c| c.digest.clone()).collect();
    let newc = i2
        .chunks
        .iter()
        .filter(|c| !old.contains(&c.digest))
        .count();
    println!(
        "v2 {} chunks, {} new, {} deltas, {} delta bases, raw index {} B",
        i2.chunks.len(),
        newc,
        nd,
        i2.delta_bases.len(),
        encode_raw(&i2).len()
    );
    type Edit = fn(&mut LayerIndex, &HashSet<Vec<u8>>);
    let variants: Vec<(&str, Edit)> = vec![
        ("as shipped", |_, _| {}),
        ("new chunk digests out", |ix, old| {
            ix.chunks
                .iter_mut()
                .filter(|c| !old.contains(&c.digest))
                .for_each(|c| c.digest.clear())
        }),
        ("new chunk pack offsets out", |ix, old| {
            for c in ix.chunks.iter_mut().filter(|c| !old.contains(&c.digest)) {
                c.pack_offset = 0;
                if let Some(d) = &mut c.delta {
                    d.pack_offset = 0
                }
            }
        }),
        ("new chunks' own frames out", |ix, old| {
            for c in ix.chunks.iter_mut().filter(|c| !old.contains(&c.digest)) {
                (c.pack, c.pack_offset, c.stored_size, c.compression) = (0, 0, 0, 0);
            }
        }),
        ("deltas out", |ix, _| {
            ix.chunks.iter_mut().for_each(|c| c.delta = None);
            ix.delta_bases.clear()
        }),
        ("delta bases table out", |ix, _| ix.delta_bases.clear()),
        ("tar-split out", |ix, _| ix.tar_split = None),
        ("tar-split raw out", |ix, _| {
            if let Some(t) = &mut ix.tar_split {
                t.raw.clear()
            }
        }),
        ("entries out", |ix, _| ix.entries.clear()),
        ("chunks out", |ix, _| ix.chunks.clear()),
    ];
    for (name, edit) in variants {
        let (mut a, mut b) = (i1.clone(), i2.clone());
        edit(&mut a, &old);
        edit(&mut b, &old);
        println!("{name:32} {:>9} B", delta(&a, &b)?);
    }
    Ok(())
}
