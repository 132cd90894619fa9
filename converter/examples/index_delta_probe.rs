//! Index delta probe: what the index delta of an update is made of. Converts two versions of a
//! layer (uncompressed tars) and prints the size of v2's index delta against v1's with parts of
//! both indexes left out, to show what each part costs an updating node:
//! `cargo run --release -p chunkconv --example index_delta_probe -- V1.tar V2.tar`.

mod common;

use std::collections::HashSet;

use chunksnap_format::pb::LayerIndex;

/// Clears the content digests of files under `limit` bytes that v1 does not hold.
fn small_new(ix: &mut LayerIndex, old: &HashSet<Vec<u8>>, limit: u64) {
    ix.entries
        .iter_mut()
        .filter(|e| e.size < limit && !old.contains(&e.content_digest))
        .for_each(|e| e.content_digest.clear())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [v1, v2] = args.as_slice() else {
        anyhow::bail!("usage: index_delta_probe V1.tar V2.tar");
    };
    let common::Pair { i1, out2, .. } = common::convert_pair(v1, v2)?;
    let i2 = out2.index;
    let old: HashSet<Vec<u8>> = i1
        .entries
        .iter()
        .map(|e| e.content_digest.clone())
        .collect();
    let variants: Vec<(&str, common::Edit)> = vec![
        ("as converted", |_, _| {}),
        ("offsets left out", |ix, _| {
            ix.entries.iter_mut().for_each(|e| e.offset = 0)
        }),
        ("digests of new files left out", |ix, old| {
            ix.entries
                .iter_mut()
                .filter(|e| !old.contains(&e.content_digest))
                .for_each(|e| e.content_digest.clear())
        }),
        ("new file digests < 4 KiB out", |ix, old| {
            small_new(ix, old, 4 << 10)
        }),
        ("new file digests < 16 KiB out", |ix, old| {
            small_new(ix, old, 16 << 10)
        }),
        ("new file digests < 64 KiB out", |ix, old| {
            small_new(ix, old, 64 << 10)
        }),
        ("both", |ix, old| {
            for e in &mut ix.entries {
                e.offset = 0;
                if !old.contains(&e.content_digest) {
                    e.content_digest.clear();
                }
            }
        }),
        ("tar-split left out", |ix, _| ix.tar_split = None),
        ("chunk pack refs left out", |ix, _| {
            for c in &mut ix.chunks {
                (c.pack, c.pack_offset, c.stored_size) = (0, 0, 0);
            }
            ix.packs.clear();
        }),
        ("entries left out", |ix, _| ix.entries.clear()),
        ("entry metadata left out", |ix, _| {
            for e in &mut ix.entries {
                *e = chunksnap_format::pb::Entry {
                    content_digest: std::mem::take(&mut e.content_digest),
                    ..Default::default()
                };
            }
        }),
        ("metadata + new file digests", |ix, old| {
            for e in &mut ix.entries {
                let d = std::mem::take(&mut e.content_digest);
                *e = chunksnap_format::pb::Entry {
                    content_digest: if old.contains(&d) { d } else { Vec::new() },
                    ..Default::default()
                };
            }
        }),
        ("chunks left out", |ix, _| ix.chunks.clear()),
    ];
    println!(
        "v1: {} entries, {} chunks; v2: {} entries, {} chunks, {} new file digests",
        i1.entries.len(),
        i1.chunks.len(),
        i2.entries.len(),
        i2.chunks.len(),
        i2.entries
            .iter()
            .filter(|e| !e.content_digest.is_empty() && !old.contains(&e.content_digest))
            .count()
    );
    common::print_index_delta_variants(&i1, &i2, &old, &variants)?;
    Ok(())
}
