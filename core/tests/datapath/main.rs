//! Tests of the node-side data path: chunk store, fetcher, layer assembler.
//! The assembler tests need root (devices, chown, trusted.* xattrs) and GNU tar.

mod assemble;
mod fetch;
mod seed;
mod store;
mod verify;

use std::collections::HashMap;
use std::io::Write;

use bytes::Bytes;
use chunksnap_core::assemble::ChunkReader;
use chunksnap_core::store::StoreError;
use chunksnap_format::digest::Digest;
use chunksnap_format::pack::compress_chunk;
use chunksnap_format::pb::{Chunk, Entry, EntryType, LayerIndex, Pack, Xattr};

pub const MTIME: i64 = 1_600_000_000;

/// A layer described entry by entry, turned into an index (+ packs) or a tar.
#[derive(Default, Clone)]
pub struct LayerBuilder {
    pub entries: Vec<Entry>,
    pub content: Vec<u8>,
}

/// An index with its packs and the chunks by digest.
pub struct Built {
    pub index: LayerIndex,
    pub packs: HashMap<String, Bytes>,
    pub chunks: HashMap<Digest, Vec<u8>>,
}

fn entry(path: &str, ty: EntryType, mode: u32) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        r#type: ty as i32,
        mode,
        mtime_sec: MTIME,
        ..Entry::default()
    }
}

impl LayerBuilder {
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Entry {
        self.push(entry(path, EntryType::Dir, mode))
    }
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Entry {
        let mut e = entry(path, EntryType::File, mode);
        e.offset = self.content.len() as u64;
        e.size = data.len() as u64;
        e.content_digest = Digest::of(data).as_bytes().to_vec();
        self.content.extend_from_slice(data);
        self.push(e)
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Entry {
        let mut e = entry(path, EntryType::Symlink, 0o777);
        e.link_target = target.as_bytes().to_vec();
        self.push(e)
    }
    pub fn hardlink(&mut self, path: &str, target: &str, mode: u32) -> &mut Entry {
        let mut e = entry(path, EntryType::Hardlink, mode);
        e.link_target = target.as_bytes().to_vec();
        self.push(e)
    }
    pub fn special(&mut self, path: &str, ty: EntryType, major: u32, minor: u32) -> &mut Entry {
        let mut e = entry(path, ty, 0o644);
        e.dev_major = major;
        e.dev_minor = minor;
        self.push(e)
    }
    fn push(&mut self, e: Entry) -> &mut Entry {
        self.entries.push(e);
        self.entries.last_mut().unwrap()
    }

    /// Fixed-size chunks, zstd (or raw) frames, packs of at most `pack_target` bytes.
    pub fn build(&self, chunk_size: usize, pack_target: usize) -> Built {
        let mut chunks = Vec::new();
        let mut by_digest = HashMap::new();
        let mut packs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut offsets: HashMap<Digest, (u32, u64, u32, i32)> = HashMap::new();
        for data in self.content.chunks(chunk_size.max(1)) {
            let digest = Digest::of(data);
            let loc = *offsets.entry(digest).or_insert_with(|| {
                let stored = compress_chunk(data, 3).unwrap();
                if packs.last().unwrap().len() + stored.data.len() > pack_target
                    && !packs.last().unwrap().is_empty()
                {
                    packs.push(Vec::new());
                }
                let p = packs.last_mut().unwrap();
                let off = p.len() as u64;
                p.extend_from_slice(&stored.data);
                (
                    (packs.len() - 1) as u32,
                    off,
                    stored.data.len() as u32,
                    stored.compression as i32,
                )
            });
            by_digest.insert(digest, data.to_vec());
            chunks.push(Chunk {
                digest: digest.as_bytes().to_vec(),
                size: data.len() as u32,
                pack: loc.0,
                pack_offset: loc.1,
                stored_size: loc.2,
                compression: loc.3,
                delta: None,
            });
        }
        let mut pack_map = HashMap::new();
        let mut pack_list = Vec::new();
        for p in packs {
            let d = Digest::of(&p).to_string();
            pack_list.push(Pack {
                digest: d.clone(),
                size: p.len() as u64,
            });
            pack_map.insert(d, Bytes::from(p));
        }
        let index = LayerIndex {
            version: 1,
            entries: self.entries.clone(),
            chunks,
            packs: pack_list,
            ..LayerIndex::default()
        };
        Built {
            index,
            packs: pack_map,
            chunks: by_digest,
        }
    }

    /// The same layer as a tar (GNU headers, PAX xattrs), for comparing with GNU tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            if !e.xattrs.is_empty() {
                let recs: Vec<(String, Vec<u8>)> = e
                    .xattrs
                    .iter()
                    .map(|x| (format!("SCHILY.xattr.{}", x.name), x.value.clone()))
                    .collect();
                b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                    .unwrap();
            }
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(e.mtime_sec as u64);
            h.set_size(0);
            let path = String::from_utf8(e.path.clone()).unwrap();
            let target = String::from_utf8(e.link_target.clone()).unwrap();
            match EntryType::try_from(e.r#type).unwrap() {
                EntryType::File => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(e.size);
                    let data = &self.content[e.offset as usize..(e.offset + e.size) as usize];
                    b.append_data(&mut h, &path, data).unwrap();
                }
                EntryType::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    b.append_data(&mut h, &path, &[][..]).unwrap();
                }
                EntryType::Symlink => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, &path, &target).unwrap();
                }
                EntryType::Hardlink => {
                    h.set_entry_type(tar::EntryType::Link);
                    b.append_link(&mut h, &path, &target).unwrap();
                }
                ty @ (EntryType::Char | EntryType::Block | EntryType::Fifo) => {
                    h.set_entry_type(match ty {
                        EntryType::Char => tar::EntryType::Char,
                        EntryType::Block => tar::EntryType::Block,
                        _ => tar::EntryType::Fifo,
                    });
                    h.set_device_major(e.dev_major).unwrap();
                    h.set_device_minor(e.dev_minor).unwrap();
                    b.append_data(&mut h, &path, &[][..]).unwrap();
                }
            }
        }
        let mut out = b.into_inner().unwrap();
        out.flush().unwrap();
        out
    }
}

pub fn xattr(name: &str, value: &[u8]) -> Xattr {
    Xattr {
        name: name.into(),
        value: value.to_vec(),
    }
}

/// Chunks from memory.
pub struct MemReader(pub HashMap<Digest, Vec<u8>>);

impl ChunkReader for MemReader {
    fn read_chunk(&self, digest: &Digest, _size: u32) -> Result<Vec<u8>, StoreError> {
        self.0
            .get(digest)
            .cloned()
            .ok_or(StoreError::Missing(*digest))
    }
}

pub use chunksnap_testkit::noise;
