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

use chunksnap_proto::index::{BaseChunk, Chunk, Entry, Pack, Xattr};
use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};

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
    let mut total = raw.len() as u64;
    walk(raw, &mut |field, body| {
        let element = match field {
            INDEX_ENTRIES => {
                let mut xattrs = 0u64;
                walk(body, &mut |f, _| {
                    xattrs += u64::from(f == ENTRY_XATTRS);
                    Ok(())
                })?;
                size_of::<Entry>() as u64 + xattrs * size_of::<Xattr>() as u64
            }
            INDEX_CHUNKS => size_of::<Chunk>() as u64,
            INDEX_PACKS => size_of::<Pack>() as u64,
            INDEX_DELTA_BASES => size_of::<BaseChunk>() as u64,
            _ => 0,
        };
        total = total.saturating_add(element);
        Ok(())
    })?;
    Ok(total)
}

/// Refuses `raw` when [`decoded_size`] is above [`MAX_INDEX_MEMORY`].
pub fn check(raw: &[u8]) -> Result<(), FormatError> {
    let estimate = decoded_size(raw)?;
    if estimate > MAX_INDEX_MEMORY {
        return Err(FormatError::TooManyElements { estimate });
    }
    Ok(())
}

/// Calls `each(field, body)` for every length-delimited field of the message in `buf`, skipping
/// the others. Stops quietly at the first malformed field (prost stops there too).
fn walk(
    mut buf: &[u8],
    each: &mut dyn FnMut(u32, &[u8]) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    while buf.has_remaining() {
        let Ok((field, wire)) = decode_key(&mut buf) else {
            return Ok(());
        };
        let skip = match wire {
            WireType::Varint => match decode_varint(&mut buf) {
                Ok(_) => 0,
                Err(_) => return Ok(()),
            },
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let Some(len) = decode_varint(&mut buf)
                    .ok()
                    .and_then(|l| usize::try_from(l).ok())
                    .filter(|l| *l <= buf.len())
                else {
                    return Ok(());
                };
                each(field, &buf[..len])?;
                len
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(FormatError::Unsupported("protobuf groups"));
            }
        };
        if skip > buf.len() {
            return Ok(());
        }
        buf.advance(skip);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunksnap_proto::index::LayerIndex;
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
}
