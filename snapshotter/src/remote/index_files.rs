//! Layer indexes kept on disk (`<root>/indexes/<hex>`: the blob as the registry served it, or,
//! for an index rebuilt from a delta, the raw index compressed locally; either decompresses to
//! the raw index an index delta of the next version is based on), so that layers already on
//! the node can seed new ones after a restart. Best effort: any failure
//! only costs a registry read or a seed. Loaded blobs are decoded and validated again.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chunksnap_format::digest::Digest;
use chunksnap_format::index::MAX_INDEX_SIZE;

/// Where `layer`'s index is stored (it may not be).
pub fn path(dir: &Path, layer: &Digest) -> PathBuf {
    dir.join(layer.hex())
}

/// The stored blob of `layer`'s index, marked as recently used.
pub fn load(dir: &Path, layer: &Digest) -> Option<Vec<u8>> {
    let path = path(dir, layer);
    let file = fs::File::open(&path).ok()?;
    if file.metadata().ok()?.len() > MAX_INDEX_SIZE as u64 {
        return None;
    }
    let _ = file.set_modified(SystemTime::now());
    fs::read(&path).ok()
}

/// Stores `blob` (already validated) as `layer`'s index, atomically, then keeps at most `cap`
/// files, dropping the least recently used.
pub fn save(dir: &Path, layer: &Digest, blob: &[u8], cap: usize) {
    let result = (|| -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".tmp-{}-{}", layer.hex(), std::process::id()));
        fs::write(&tmp, blob)?;
        fs::rename(&tmp, dir.join(layer.hex())).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    })();
    if let Err(e) = result {
        tracing::debug!(%layer, cause = %e, "could not store the layer index");
        return;
    }
    prune(dir, cap);
}

/// Removes `layer`'s stored index (it failed to decode).
pub fn remove(dir: &Path, layer: &Digest) {
    let _ = fs::remove_file(dir.join(layer.hex()));
}

fn prune(dir: &Path, cap: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let md = e.metadata().ok()?;
            Some((md.modified().ok()?, e.path()))
        })
        .collect();
    if files.len() <= cap {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - cap] {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_prune_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let d = |n: u8| Digest::of(&[n]);
        for n in 0..3 {
            save(dir.path(), &d(n), &[n; 4], 3);
            // Distinct mtimes even on coarse-grained filesystems.
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + u64::from(n));
            let f = fs::File::options()
                .write(true)
                .open(dir.path().join(d(n).hex()))
                .unwrap();
            f.set_modified(t).unwrap();
        }
        assert_eq!(load(dir.path(), &d(0)), Some(vec![0; 4])); // now the most recent
        save(dir.path(), &d(3), &[3; 4], 3);
        assert_eq!(load(dir.path(), &d(1)), None, "least recently used went");
        assert!(load(dir.path(), &d(0)).is_some());
        assert!(load(dir.path(), &d(3)).is_some());
        remove(dir.path(), &d(3));
        assert_eq!(load(dir.path(), &d(3)), None);
    }
}
