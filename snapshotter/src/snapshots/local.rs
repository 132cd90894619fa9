//! Local snapshot bookkeeping: the metadata DB plus the `snapshots/<id>/{fs,work}` directories,
//! kept consistent with each other across crashes.
//!
//! New directories are built under a temporary name (`snapshots/new-…`) and renamed into
//! place inside the metadata transaction, which commits only if the rename worked (and the
//! rename is undone if the commit fails). Removal renames the directory to `rm-<id>` inside
//! the transaction and deletes it after the commit. So after a crash the DB never names a
//! missing directory, and whatever is left over (`new-…`, `rm-…`, unknown ids) is removed
//! by [`Local::cleanup`].
//!
//! Every method blocks (DB and filesystem); the gRPC service calls them via `spawn_blocking`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chunksnap_proto::snapshots::Mount;

use crate::error::{Error, Result};
use crate::labels::{LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST};
use crate::remote::SeedCandidate;
use crate::snapshots::metadata::{Info, Kind, MetaStore, Record};
use crate::snapshots::mounts::{self, Layout};

/// A removal slower than this is logged as a warning.
const SLOW_REMOVAL_MS: u64 = 5_000;

/// What [`Local::cleanup`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Directory names removed from `snapshots/`.
    pub removed: Vec<String>,
}

/// The snapshot metadata and directories under one state root.
pub struct Local {
    root: PathBuf,
    layout: Layout,
    meta: MetaStore,
    index_off: bool,
    /// Held shared while a temp directory is in flight, exclusively by cleanup, so cleanup
    /// never deletes a directory a concurrent Prepare is about to rename into place.
    dirs: RwLock<()>,
    temp_seq: AtomicU64,
}

impl Local {
    /// Opens the state root, creating `root`, `root/snapshots` and `root/metadata.redb`, and
    /// removes directories a crash left behind (nothing else runs yet, so this is safe).
    pub fn open(root: &Path) -> Result<Self> {
        let layout = Layout::new(root);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(layout.snapshots_dir())
            .map_err(Error::io("create", layout.snapshots_dir()))?;
        let meta = MetaStore::open(&root.join("metadata.redb"))?;
        let local = Self {
            root: root.to_owned(),
            layout,
            meta,
            index_off: mounts::kernel_has_overlay_index(),
            dirs: RwLock::new(()),
            temp_seq: AtomicU64::new(0),
        };
        local.cleanup()?;
        Ok(local)
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory layout under the root.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Creates an Active (`Prepare`) or View snapshot and returns it with its mounts.
    pub fn create(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<(Record, Vec<Mount>)> {
        let _guard = self.dirs.read().unwrap_or_else(|e| e.into_inner());
        let temp = self.make_temp_dir(kind)?;
        let result = self.create_in(key, parent, kind, labels, &temp);
        if result.is_err() {
            // Best effort: cleanup removes it later if this fails too.
            let _ = fs::remove_dir_all(&temp);
        }
        result
    }

    fn create_in(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: BTreeMap<String, String>,
        temp: &Path,
    ) -> Result<(Record, Vec<Mount>)> {
        let mut tx = self.meta.begin()?;
        let (record, parents) = tx.create(key, parent, kind, labels)?;
        if let Some(top) = parents.first() {
            // Like containerd: the new layer's root takes the owner of the parent's root,
            // so an image whose root is not root-owned keeps that owner.
            let st = fs::metadata(self.layout.fs(*top))
                .map_err(Error::io("stat", self.layout.fs(*top)))?;
            let fs_dir = temp.join("fs");
            std::os::unix::fs::lchown(&fs_dir, Some(st.uid()), Some(st.gid()))
                .map_err(Error::io("chown", &fs_dir))?;
        }
        let dir = self.layout.dir(record.id);
        // The id is fresh, so a directory by that name is a crash leftover (renamed into place,
        // then the process died before the commit that would have recorded the id).
        if fs::symlink_metadata(&dir).is_ok() {
            tracing::warn!(dir = %dir.display(), "removing stale directory of an uncommitted snapshot");
            fs::remove_dir_all(&dir).map_err(Error::io("remove", &dir))?;
        }
        fs::rename(temp, &dir).map_err(Error::io("rename", &dir))?;
        if let Err(e) = tx.commit() {
            let _ = fs::rename(&dir, temp);
            return Err(e);
        }
        let m = mounts::mounts(&self.layout, kind, record.id, &parents, self.index_off);
        Ok((record, m))
    }

    /// `snapshots/new-…` with `fs` (0755) and, for active snapshots, `work`.
    fn make_temp_dir(&self, kind: Kind) -> Result<PathBuf> {
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let temp = self
            .layout
            .snapshots_dir()
            .join(format!("new-{}-{n}-{nanos}", std::process::id()));
        let mut b = fs::DirBuilder::new();
        b.mode(0o700)
            .create(&temp)
            .map_err(Error::io("mkdir", &temp))?;
        b.mode(0o755);
        let fs_dir = temp.join("fs");
        b.create(&fs_dir).map_err(Error::io("mkdir", &fs_dir))?;
        if kind == Kind::Active {
            let work = temp.join("work");
            b.mode(0o711)
                .create(&work)
                .map_err(Error::io("mkdir", &work))?;
        }
        Ok(temp)
    }

    /// Mounts of an active or view snapshot.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let info = self.meta.get(key)?;
        if info.record.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed, not active or view"
            )));
        }
        let parents = self.meta.parent_ids(key)?;
        Ok(mounts::mounts(
            &self.layout,
            info.record.kind,
            info.record.id,
            &parents,
            self.index_off,
        ))
    }

    /// The `fs` directories of `key`'s parent chain, nearest parent first.
    pub fn parent_dirs(&self, key: &str) -> Result<Vec<PathBuf>> {
        Ok(self
            .meta
            .parent_ids(key)?
            .into_iter()
            .map(|id| self.layout.fs(id))
            .collect())
    }

    /// Commits active `key` as `name`, recording the disk usage of its `fs`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let info = self.meta.get(key)?;
        let usage = disk_usage(&self.layout.fs(info.record.id))?;
        self.commit_with_usage(name, key, labels, usage)
    }

    /// Commits active `key` as `name` with a usage the caller already knows.
    pub fn commit_with_usage(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
        usage: (i64, i64),
    ) -> Result<()> {
        let mut tx = self.meta.begin()?;
        tx.commit_active(key, name, labels, usage)?;
        tx.commit()
    }

    /// Removes `key` (no children allowed) and then its directory.
    pub fn remove(&self, key: &str) -> Result<()> {
        let _guard = self.dirs.read().unwrap_or_else(|e| e.into_inner());
        let mut tx = self.meta.begin()?;
        let record = tx.remove(key)?;
        let dir = self.layout.dir(record.id);
        let doomed = self
            .layout
            .snapshots_dir()
            .join(format!("rm-{}", record.id));
        let renamed = match fs::rename(&dir, &doomed) {
            Ok(()) => true,
            // Already gone (e.g. removed by hand): removing the record is still right.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("rename", &dir)(e)),
        };
        let started = Instant::now();
        if let Err(e) = tx.commit() {
            if renamed {
                let _ = fs::rename(&doomed, &dir);
            }
            return Err(e);
        }
        let committed = Instant::now();
        if renamed && let Err(e) = fs::remove_dir_all(&doomed) {
            tracing::warn!(dir = %doomed.display(), cause = %e, "failed to delete removed snapshot; cleanup will retry");
        }
        let (commit_ms, delete_ms) = (
            committed.duration_since(started).as_millis() as u64,
            committed.elapsed().as_millis() as u64,
        );
        if commit_ms + delete_ms > SLOW_REMOVAL_MS {
            // The commit's fsync waits for the disk's other writes: a loaded disk shows here.
            tracing::warn!(
                key,
                id = record.id,
                commit_ms,
                delete_ms,
                "slow snapshot removal"
            );
        } else {
            tracing::debug!(key, id = record.id, kind = ?record.kind, renamed, commit_ms, delete_ms, "snapshot removed");
        }
        Ok(())
    }

    /// The snapshot `key`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        self.meta.get(key)
    }

    /// Updates labels (see [`crate::snapshots::metadata::WriteTxn::update_labels`]).
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        let mut tx = self.meta.begin()?;
        let info = tx.update_labels(key, labels, paths)?;
        tx.commit()?;
        Ok(info)
    }

    /// `(bytes, inodes)`: measured now for active snapshots, as recorded otherwise (like
    /// containerd's overlay snapshotter, a view reports zero: it holds no data of its own).
    pub fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let info = self.meta.get(key)?;
        match info.record.kind {
            Kind::Active => disk_usage(&self.layout.fs(info.record.id)),
            Kind::Committed | Kind::View => Ok((info.record.size, info.record.inodes)),
        }
    }

    /// Committed layers that may seed a Prepare of `layer_digest` for `image_ref`, at most
    /// `limit`, best first: the same layer under another parent (a rebased image: every file
    /// matches), then the same repository's layers, then the newest.
    pub fn seed_candidates(
        &self,
        layer_digest: &str,
        image_ref: &str,
        limit: usize,
    ) -> Result<Vec<SeedCandidate>> {
        let repo = repository(image_ref);
        let mut found: Vec<((bool, bool, u64), SeedCandidate)> = self
            .meta
            .list()?
            .into_iter()
            .filter(|i| i.record.kind == Kind::Committed)
            .filter_map(|i| {
                let layer = i.record.labels.get(LABEL_CRI_LAYER_DIGEST)?;
                let same_repo = i
                    .record
                    .labels
                    .get(LABEL_CRI_IMAGE_REF)
                    .is_some_and(|r| repository(r) == repo);
                let rank = (layer == layer_digest, same_repo, i.record.id);
                Some((
                    rank,
                    SeedCandidate {
                        layer_digest: layer.clone(),
                        fs_dir: self.layout.fs(i.record.id),
                    },
                ))
            })
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        Ok(found.into_iter().take(limit).map(|(_, c)| c).collect())
    }

    /// Every snapshot, ordered by key.
    pub fn list(&self) -> Result<Vec<Info>> {
        self.meta.list()
    }

    /// Empties the `fs` directory of `key` (after a failed remote assembly).
    pub fn reset_fs(&self, key: &str) -> Result<()> {
        let info = self.meta.get(key)?;
        let fs_dir = self.layout.fs(info.record.id);
        for entry in fs::read_dir(&fs_dir).map_err(Error::io("read", &fs_dir))? {
            let entry = entry.map_err(Error::io("read", &fs_dir))?;
            let path = entry.path();
            let is_dir = entry
                .file_type()
                .map_err(Error::io("stat", &path))?
                .is_dir();
            if is_dir {
                fs::remove_dir_all(&path).map_err(Error::io("remove", &path))?;
            } else {
                fs::remove_file(&path).map_err(Error::io("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Removes every directory under `snapshots/` that no snapshot record names: leftovers of
    /// crashes (`new-…` temps, `rm-…` doomed dirs) and unknown ids.
    pub fn cleanup(&self) -> Result<CleanupReport> {
        let _guard = self.dirs.write().unwrap_or_else(|e| e.into_inner());
        let ids: HashSet<String> = self
            .meta
            .list()?
            .into_iter()
            .map(|i| i.record.id.to_string())
            .collect();
        let dir = self.layout.snapshots_dir();
        let mut report = CleanupReport::default();
        for entry in fs::read_dir(dir).map_err(Error::io("read", dir))? {
            let entry = entry.map_err(Error::io("read", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if ids.contains(&name) {
                continue;
            }
            let path = entry.path();
            let res = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            res.map_err(Error::io("remove", &path))?;
            tracing::info!(dir = %path.display(), "cleanup removed unreferenced snapshot directory");
            report.removed.push(name);
        }
        report.removed.sort();
        Ok(report)
    }
}

/// `(bytes, inodes)` used by the tree at `path`, like containerd's `fs.DiskUsage`: allocated
/// blocks, each inode (hard links) counted once, the tree stays on one filesystem.
pub fn disk_usage(path: &Path) -> Result<(i64, i64)> {
    let mut seen = HashSet::new();
    let mut size: u64 = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).map_err(Error::io("stat", &p))?;
        if seen.insert((md.dev(), md.ino())) {
            size = size.saturating_add(md.blocks().saturating_mul(512));
        }
        if md.is_dir() {
            for entry in fs::read_dir(&p).map_err(Error::io("read", &p))? {
                stack.push(entry.map_err(Error::io("read", &p))?.path());
            }
        }
    }
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Ok((to_i64(size), to_i64(seen.len() as u64)))
}

/// `registry/repo` of an image reference (tag and digest dropped).
fn repository(image_ref: &str) -> &str {
    let no_digest = image_ref.split('@').next().unwrap_or(image_ref);
    match no_digest.rfind(':') {
        // A colon after the last slash is a tag; before it, a registry port.
        Some(c) if !no_digest[c..].contains('/') => &no_digest[..c],
        _ => no_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(layer: &str, image: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_CRI_LAYER_DIGEST.to_owned(), layer.to_owned()),
            (LABEL_CRI_IMAGE_REF.to_owned(), image.to_owned()),
        ])
    }

    #[test]
    fn seed_candidates_rank_same_layer_then_repository_then_newest() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        let layers = [
            ("a", "sha256:aa", "reg:5000/app:v1"),
            ("b", "sha256:bb", "reg:5000/other:v1"),
            ("c", "sha256:cc", "reg:5000/app:v2"),
            ("d", "sha256:dd", "reg:5000/other:v2"),
            ("e", "sha256:ee", "reg:5000/app@sha256:1234"),
        ];
        for (key, layer, image) in layers {
            let active = format!("{key}-active");
            local
                .create(&active, "", Kind::Active, BTreeMap::new())
                .unwrap();
            local.commit(key, &active, labels(layer, image)).unwrap();
        }
        // Not committed: never a seed.
        local
            .create(
                "f-active",
                "",
                Kind::Active,
                labels("sha256:ff", "reg:5000/app:v3"),
            )
            .unwrap();
        let fs_of = |key: &str| local.layout().fs(local.stat(key).unwrap().record.id);
        let got = local
            .seed_candidates("sha256:bb", "reg:5000/app:v3", 4)
            .unwrap();
        let want: Vec<SeedCandidate> = [
            ("b", "sha256:bb"),
            ("e", "sha256:ee"),
            ("c", "sha256:cc"),
            ("a", "sha256:aa"),
        ]
        .iter()
        .map(|(k, l)| SeedCandidate {
            layer_digest: (*l).to_owned(),
            fs_dir: fs_of(k),
        })
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn repository_drops_tag_and_digest_but_keeps_the_port() {
        assert_eq!(repository("reg:5000/app:v1"), "reg:5000/app");
        assert_eq!(repository("reg:5000/app@sha256:12"), "reg:5000/app");
        assert_eq!(repository("reg:5000/app"), "reg:5000/app");
        assert_eq!(
            repository("docker.io/library/debian:12"),
            "docker.io/library/debian"
        );
    }
}
