//! Store upkeep: gc, fsck and the sweep of stale temp files, and walking the chunk files
//! (shared with opening the store).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chunksnap_format::digest::Digest;
use chunksnap_format::pack::decompress_chunk;
use chunksnap_format::pb::Compression;

use super::{ChunkStore, FsckReport, GcReport, StoreError, TEMP_GRACE, TEMP_PREFIX, io_err, lock};

impl ChunkStore {
    /// Removes stale temp files and evicts to the budget.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let temp_files = self.sweep_temps(true)?;
        let (evicted_chunks, evicted_bytes) = self.evict_to_budget()?;
        Ok(GcReport {
            evicted_chunks,
            evicted_bytes,
            temp_files,
        })
    }

    /// Verifies every chunk file (name, header, decompression, sha256) and counts stale temp
    /// files; with `repair`, removes what is bad.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        let mut report = FsckReport {
            repaired: repair,
            ..FsckReport::default()
        };
        report.temp_files = self.sweep_temps(repair)?;
        let mut bad: Vec<PathBuf> = Vec::new();
        let mut good: Vec<Digest> = Vec::new();
        for_each_file(&self.chunks_dir, |path, name, _| {
            if name.starts_with(TEMP_PREFIX) {
                return;
            }
            match parse_chunk_name(path, name).map(|d| (d, verify_file(path, &d))) {
                Some((d, true)) => good.push(d),
                _ => bad.push(path.to_owned()),
            }
        })?;
        report.ok = good.len() as u64;
        report.corrupt = bad.len() as u64;
        if repair {
            let mut st = lock(&self.state);
            for path in bad {
                let _ = fs::remove_file(&path);
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if let Some(d) = parse_chunk_name(&path, name) {
                    st.forget(&d);
                }
            }
        }
        Ok(report)
    }

    /// Counts (and with `remove`, deletes) temp files older than the grace period.
    fn sweep_temps(&self, remove: bool) -> Result<u64, StoreError> {
        let now = SystemTime::now();
        let mut n = 0;
        for_each_file(&self.chunks_dir, |path, name, md| {
            let age = md
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if name.starts_with(TEMP_PREFIX) && (age >= TEMP_GRACE || !temp_owner_alive(name)) {
                n += 1;
                if remove {
                    let _ = fs::remove_file(path);
                }
            }
        })?;
        Ok(n)
    }
}

/// Whether the process that writes temp file `name` (`.tmp-<hex>-<pid>-<seq>`) still runs.
/// Unparsable names count as alive: only the age rule removes them.
pub(super) fn temp_owner_alive(name: &str) -> bool {
    let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<i32>().ok());
    match pid {
        Some(pid) if pid > 0 => {
            pid == std::process::id() as i32 || Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => true,
    }
}

/// A chunk's digest from its path `<2 hex>/<64 hex>`, or `None` for anything else.
pub(super) fn parse_chunk_name(path: &Path, name: &str) -> Option<Digest> {
    let shard = path.parent()?.file_name()?.to_str()?;
    if name.len() != 64 || !name.starts_with(shard) || shard.len() != 2 {
        return None;
    }
    Digest::parse(&format!("sha256:{name}")).ok()
}

/// Whether a chunk file decodes to its digest. The size comes from the file itself (raw length
/// or the zstd frame header), bounded so a hostile frame cannot make us allocate much.
fn verify_file(path: &Path, digest: &Digest) -> bool {
    const MAX_CHUNK: u64 = 64 << 20;
    let Ok(raw) = fs::read(path) else {
        return false;
    };
    let (compression, rest, size) = match raw.split_first() {
        Some((&0, rest)) => (Compression::None, rest, rest.len() as u64),
        Some((&1, rest)) => match zstd::zstd_safe::get_frame_content_size(rest) {
            Ok(Some(n)) if n <= MAX_CHUNK => (Compression::Zstd, rest, n),
            _ => return false,
        },
        _ => return false,
    };
    decompress_chunk(rest, compression, size, digest).is_ok()
}

/// Calls `f(path, file_name, metadata)` for every file in every shard directory of `chunks`.
pub(super) fn for_each_file(
    chunks: &Path,
    mut f: impl FnMut(&Path, &str, &fs::Metadata),
) -> Result<(), StoreError> {
    for shard in fs::read_dir(chunks).map_err(io_err(chunks))? {
        let shard = shard.map_err(io_err(chunks))?;
        if !shard.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let shard_path = shard.path();
        for file in fs::read_dir(&shard_path).map_err(io_err(&shard_path))? {
            let file = file.map_err(io_err(&shard_path))?;
            let path = file.path();
            let Ok(md) = file.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            if let Some(name) = file.file_name().to_str() {
                f(&path, name, &md);
            }
        }
    }
    Ok(())
}
