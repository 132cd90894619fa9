//! What decoding a raw layer index would cost in memory, measured on the wire bytes before
//! prost allocates anything.
//!
//! Capping the raw size ([`super::index::MAX_INDEX_SIZE`]) is not enough: an empty `Entry` is
//! two bytes on the wire but a struct of about 200 bytes once decoded, so a 256 MiB raw index
//! (a 20 KiB blob, as it compresses to almost nothing) would decode to tens of GiB. One cheap
//! pass over the tags counts every element prost would push into a `Vec` (entries, their
//! xattrs, chunks, packs, delta bases) and prices it at its struct size; strings and byte
//! fields cost at most the raw bytes they are copied from. Declared sizes inside the index
//! (content size, chunk count) are no help here: they come from the same untrusted blob.

use std::mem::size_of;

use crate::pb::{BaseChunk, Chunk, Entry, LayerIndex, Pack, Xattr};

use super::index::FormatError;

/// Largest estimated memory of a decoded index (see [`decoded_size`]). An index at the raw
/// cap made of real entries (≈100 wire bytes each) estimates to about 850 MiB; the peak while
/// prost grows its `Vec`s can reach twice the element part.
pub const MAX_INDEX_MEMORY: u64 = 1 << 30;

// Field numbers of `LayerIndex` and `Entry` (proto/protos/chunksnap/v1/index.proto) whose
// elements are pushed into a `Vec` on decode.
const INDEX_ENTRIES: u32 = 4;
const INDEX_CHUNKS: u32 = 5;
const INDEX_PACKS: u32 = 6;
const INDEX_DELTA_BASES: u32 = 7;
const ENTRY_XATTRS: u32 = 12;

/// Estimated bytes `raw` takes once decoded as a `LayerIndex`: the struct size of every
/// repeated element plus `raw.len()` (an upper bound on all copied strings and bytes).
///
/// Malformed bytes end the walk where prost's decode fails as well, so nothing is undercounted;
/// groups (which prost would skip and go on) are refused outright, as no index has them.
pub fn decoded_size(raw: &[u8]) -> Result<u64, FormatError> {
    estimate(raw, u64::MAX)
}

/// [`decoded_size`], stopping as soon as the estimate passes `stop_above`.
fn estimate(raw: &[u8], stop_above: u64) -> Result<u64, FormatError> {
    let mut total = raw.len() as u64;
    let mut fields = Fields(raw);
    while total <= stop_above
        && let Some((field, body)) = fields.next_field()?
    {
        let element = match (field, body) {
            (INDEX_ENTRIES, Some(entry)) => {
                let mut xattrs = 0u64;
                let mut inner = Fields(entry);
                while let Some((f, b)) = inner.next_field()? {
                    xattrs += u64::from(f == ENTRY_XATTRS && b.is_some());
                }
                size_of::<Entry>() as u64 + xattrs * size_of::<Xattr>() as u64
            }
            (INDEX_CHUNKS, Some(_)) => size_of::<Chunk>() as u64,
            (INDEX_PACKS, Some(_)) => size_of::<Pack>() as u64,
            (INDEX_DELTA_BASES, Some(_)) => size_of::<BaseChunk>() as u64,
            _ => 0,
        };
        total = total.saturating_add(element);
    }
    Ok(total)
}

/// Refuses `raw` when [`decoded_size`] is above [`MAX_INDEX_MEMORY`].
pub fn check(raw: &[u8]) -> Result<(), FormatError> {
    // A bomb is refused after walking what the limit allows, not the whole input.
    let found = estimate(raw, MAX_INDEX_MEMORY)?;
    if found > MAX_INDEX_MEMORY {
        return Err(FormatError::TooManyElements { estimate: found });
    }
    Ok(())
}

/// The fields of one protobuf message.
struct Fields<'a>(&'a [u8]);

/// A field's number, and its body when it is length-delimited.
type Field<'a> = (u32, Option<&'a [u8]>);

impl<'a> Fields<'a> {
    /// The next field; `None` at the end or at the first malformed field (prost stops there
    /// too).
    fn next_field(&mut self) -> Result<Option<Field<'a>>, FormatError> {
        let Some(key) = self.varint() else {
            return Ok(None);
        };
        let field = (key >> 3) as u32;
        let skip = match key & 7 {
            0 => return Ok(self.varint().map(|_| (field, None))),
            1 => 8,
            2 => {
                let Some(len) = self.varint().and_then(|l| usize::try_from(l).ok()) else {
                    return Ok(None);
                };
                let Some((body, rest)) = self.0.split_at_checked(len) else {
                    return Ok(None);
                };
                self.0 = rest;
                return Ok(Some((field, Some(body))));
            }
            3 | 4 => return Err(FormatError::Unsupported("protobuf groups")),
            5 => 4,
            _ => return Ok(None),
        };
        let Some(rest) = self.0.get(skip..) else {
            return Ok(None);
        };
        self.0 = rest;
        Ok(Some((field, None)))
    }

    /// A base-128 varint of at most ten bytes.
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, b) in self.0.iter().take(10).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Some(value);
            }
        }
        None
    }
}

/// Bytes a decoded index holds: every element's struct plus the heap bytes of its strings and
/// byte fields. What a node caching decoded indexes counts against its cache budget.
pub fn held_size(ix: &LayerIndex) -> u64 {
    let bytes = |v: &[u8]| v.len() as u64;
    let entries: u64 = ix
        .entries
        .iter()
        .map(|e| {
            size_of::<Entry>() as u64
                + bytes(&e.path)
                + bytes(&e.link_target)
                + bytes(e.uname.as_bytes())
                + bytes(e.gname.as_bytes())
                + bytes(&e.content_digest)
                + e.xattrs
                    .iter()
                    .map(|x| size_of::<Xattr>() as u64 + bytes(x.name.as_bytes()) + bytes(&x.value))
                    .sum::<u64>()
        })
        .sum();
    let chunks: u64 = ix
        .chunks
        .iter()
        .map(|c| size_of::<Chunk>() as u64 + bytes(&c.digest))
        .sum();
    let packs: u64 = ix
        .packs
        .iter()
        .map(|p| size_of::<Pack>() as u64 + bytes(p.digest.as_bytes()))
        .sum();
    let bases: u64 = ix
        .delta_bases
        .iter()
        .map(|b| size_of::<BaseChunk>() as u64 + bytes(&b.digest))
        .sum();
    let split = ix.tar_split.as_ref().map_or(0, |t| {
        bytes(&t.raw) + 8 * (t.raw_len.len() + t.content_len.len()) as u64
    });
    size_of::<LayerIndex>() as u64 + entries + chunks + packs + bases + split
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn counts_every_repeated_element() {
        let index = LayerIndex {
            entries: vec![
                Entry {
                    xattrs: vec![Xattr::default(), Xattr::default()],
                    ..Default::default()
                },
                Entry::default(),
            ],
            chunks: vec![Chunk::default(); 3],
            packs: vec![Pack::default()],
            delta_bases: vec![BaseChunk::default(); 2],
            ..Default::default()
        };
        let raw = index.encode_to_vec();
        let want = raw.len()
            + 2 * size_of::<Entry>()
            + 2 * size_of::<Xattr>()
            + 3 * size_of::<Chunk>()
            + size_of::<Pack>()
            + 2 * size_of::<BaseChunk>();
        assert_eq!(decoded_size(&raw).unwrap(), want as u64);
    }

    #[test]
    fn empty_entries_are_priced_at_their_struct_size() {
        // The bomb shape: two bytes each on the wire.
        let n = (MAX_INDEX_MEMORY / size_of::<Entry>() as u64) as usize + 1;
        let raw = [0x22u8, 0x00].repeat(n);
        assert!(matches!(
            check(&raw),
            Err(FormatError::TooManyElements { .. })
        ));
        assert!(check(&raw[..raw.len() / 4]).is_ok());
    }

    #[test]
    fn groups_and_malformed_bytes() {
        // Field 9, start group.
        assert!(matches!(
            decoded_size(&[0x4b]),
            Err(FormatError::Unsupported(_))
        ));
        // A truncated length and a varint overflow end the walk without error.
        assert_eq!(decoded_size(&[0x22, 0x05, 0x00]).unwrap(), 3);
        assert_eq!(decoded_size(&[0xff; 16]).unwrap(), 16);
    }

    #[test]
    fn held_size_counts_structs_and_their_bytes() {
        let empty = held_size(&LayerIndex::default());
        let index = LayerIndex {
            entries: vec![Entry {
                path: b"usr/bin/x".to_vec(),
                content_digest: vec![0; 32],
                ..Default::default()
            }],
            tar_split: Some(crate::pb::TarSplit {
                raw: vec![0; 1024],
                raw_len: vec![512],
                content_len: vec![3],
            }),
            ..Default::default()
        };
        let want = size_of::<Entry>() + 9 + 32 + 1024 + 16;
        assert_eq!(held_size(&index) - empty, want as u64);
    }
}
