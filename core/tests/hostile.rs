//! Hostile input: indexes, tars, packs and artifacts crafted to escape the destination, exhaust
//! memory or time, or smuggle unverified bytes into the store. Each must end in a typed error (or
//! a safe, contained result), with nothing written outside the destination directory.
//!
//! The assembler tests need root (chown, devices), as the datapath tests do.

#[path = "hostile/artifact.rs"]
mod artifact;
#[path = "hostile/corpus.rs"]
mod corpus;
#[path = "hostile/fetch.rs"]
mod fetch;
#[path = "hostile/harness.rs"]
mod harness;
#[path = "hostile/index.rs"]
mod index;
#[path = "hostile/registry.rs"]
mod registry;
#[path = "hostile/scale.rs"]
mod scale;
#[path = "hostile/seedplan.rs"]
mod seedplan;
#[path = "hostile/tar_extensions.rs"]
mod tar_extensions;
#[path = "hostile/tar.rs"]
mod tars;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use chunksnap_core::assemble::ChunkReader;
use chunksnap_core::store::StoreError;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::{Entry, EntryType};

/// A temp dir holding `dest/` (where a layer is written) and `sentinel/` (must never change).
pub struct Sandbox {
    root: tempfile::TempDir,
    pub dest: PathBuf,
    pub sentinel: PathBuf,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("dest");
        let sentinel = root.path().join("sentinel");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&sentinel).unwrap();
        fs::write(sentinel.join("passwd"), b"keep").unwrap();
        Self {
            root,
            dest,
            sentinel,
        }
    }

    /// The sentinel's absolute path as text (for symlink targets and absolute entry paths).
    pub fn sentinel_str(&self) -> String {
        self.sentinel.to_str().unwrap().to_owned()
    }

    /// Fails if anything beside `dest` changed.
    pub fn assert_untouched(&self) {
        harness::assert_only(self.root.path(), &["dest", "sentinel"]);
        harness::assert_only(&self.sentinel, &["passwd"]);
        assert_eq!(fs::read(self.sentinel.join("passwd")).unwrap(), b"keep");
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

/// Chunks from memory, by digest.
pub struct MemReader(pub HashMap<Digest, Vec<u8>>);

impl ChunkReader for MemReader {
    fn read_chunk(&self, digest: &Digest, _size: u32) -> Result<Vec<u8>, StoreError> {
        self.0
            .get(digest)
            .cloned()
            .ok_or(StoreError::Missing(*digest))
    }
}

impl MemReader {
    pub fn of(built: &harness::BuiltLayer) -> Self {
        Self(built.chunks.iter().cloned().collect())
    }
}

/// An entry of type `ty` at `path` (raw bytes), mode 0644.
pub fn entry(path: &[u8], ty: EntryType) -> Entry {
    Entry {
        path: path.to_vec(),
        r#type: ty as i32,
        mode: 0o644,
        mtime_sec: 1_600_000_000,
        ..Entry::default()
    }
}

/// A layer being described: entries plus the content stream.
#[derive(Default)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub content: Vec<u8>,
}

impl Layer {
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entries.push(entry(path.as_bytes(), EntryType::Dir));
        self
    }
    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut e = entry(path.as_bytes(), EntryType::File);
        e.offset = self.content.len() as u64;
        e.size = data.len() as u64;
        self.content.extend_from_slice(data);
        self.entries.push(e);
        self
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut e = entry(path.as_bytes(), EntryType::Symlink);
        e.link_target = target.as_bytes().to_vec();
        self.entries.push(e);
        self
    }
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut e = entry(path.as_bytes(), EntryType::Hardlink);
        e.link_target = target.as_bytes().to_vec();
        self.entries.push(e);
        self
    }
    pub fn build(&self) -> harness::BuiltLayer {
        harness::build_layer(&self.entries, &self.content)
    }
}
