//! Measures what tar-split data costs in a layer index: converts an uncompressed layer tar
//! (path as the argument, e.g. a layer of the e2e Debian image) and prints the index blob's
//! size with and without `tar_split`, and the raw tar-split bytes.
//!
//! `cargo run --release -p chunkconv --example index_size -- layer.tar`

use chunkconv::layer::{
    EmptyCatalog, LayerInput, LayerOptions, PackSink, SinkError, convert_layer,
};
use chunksnap_format::digest::Digest;
use chunksnap_format::index;

struct Discard;

impl PackSink for Discard {
    fn put_pack(&mut self, _: &Digest, _: Vec<u8>) -> Result<(), SinkError> {
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: index_size LAYER.tar"))?;
    let tar = std::fs::read(&path)?;
    let input = LayerInput {
        digest: Digest::of(&tar),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size: None,
    };
    let out = convert_layer(
        tar.as_slice(),
        &input,
        &LayerOptions::default(),
        &EmptyCatalog,
        &mut Discard,
    )?;
    let with = index::encode(&out.index);
    let split = out.index.tar_split.clone();
    let mut plain = out.index.clone();
    plain.tar_split = None;
    let without = index::encode(&plain);
    let raw = split.as_ref().map_or(0, |s| s.raw.len());
    println!(
        "{path}: {} bytes tar, {} entries, {} chunks; index {} bytes without tar-split, {} with (+{:.1}%); tar-split raw {} bytes",
        tar.len(),
        out.index.entries.len(),
        out.index.chunks.len(),
        without.len(),
        with.len(),
        (with.len() as f64 / without.len() as f64 - 1.0) * 100.0,
        raw
    );
    Ok(())
}
