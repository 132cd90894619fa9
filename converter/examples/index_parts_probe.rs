//! Index parts probe: what the index delta a node fetches for v2 is made of, as
//! `chunkconv convert` ships it (chunk deltas attached, small new files' digests left out).
//! Prints the delta's size with one part of both indexes left out at a time:
//! `cargo run --release -p chunkconv --example index_parts_probe -- V1.tar V2.tar`.

mod common;

use std::collections::HashSet;

use chunksnap_format::index::encode_raw;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v1, v2] = args.as_slice() else {
        anyhow::bail!("usage: index_parts_probe V1.tar V2.tar")
    };
    let common::with_deltas::DeltaPair { i1, i2, deltas, .. } =
        common::with_deltas::convert_with_deltas(v1, v2)?;
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
        deltas,
        i2.delta_bases.len(),
        encode_raw(&i2).len()
    );
    let variants: Vec<(&str, common::Edit)> = vec![
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
    common::print_index_delta_variants(&i1, &i2, &old, &variants)?;
    Ok(())
}
