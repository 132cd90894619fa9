//! The mounts a snapshot is used through, as containerd's overlayfs snapshotter builds them
//! (`snapshots/overlay/overlay.go`, `mounts()`).
//!
//! - no parents: a bind mount of the snapshot's own `fs` (`rw`, or `ro` for a view);
//! - a view with one parent: a read-only bind mount of the parent's `fs`;
//! - otherwise overlayfs: `lowerdir` = parents' `fs`, nearest first, plus `upperdir` and
//!   `workdir` for an active snapshot. `index=off` is added when the kernel has the overlay
//!   `index` parameter, as containerd does, so layers can be shared between mounts.

use std::path::{Path, PathBuf};

use chunksnap_proto::snapshots::Mount;

use crate::snapshots::metadata::Kind;

/// Paths of snapshot directories under a state root.
#[derive(Debug, Clone)]
pub struct Layout {
    snapshots: PathBuf,
}

impl Layout {
    /// Layout under `root` (directories live in `<root>/snapshots`).
    pub fn new(root: &Path) -> Self {
        Self {
            snapshots: root.join("snapshots"),
        }
    }

    /// `<root>/snapshots`.
    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots
    }

    /// `<root>/snapshots/<id>`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }

    /// `<root>/snapshots/<id>/fs`: the layer contents (overlay upperdir).
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// `<root>/snapshots/<id>/work`: overlay workdir.
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }
}

/// Whether to pass `index=off` (the kernel knows the overlay `index` parameter).
pub fn kernel_has_overlay_index() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

/// The mounts for snapshot `id` of `kind` with parent chain `parents` (nearest first).
pub fn mounts(
    layout: &Layout,
    kind: Kind,
    id: u64,
    parents: &[u64],
    index_off: bool,
) -> Vec<Mount> {
    let bind = |source: PathBuf, ro: bool| Mount {
        r#type: "bind".into(),
        source: source.display().to_string(),
        target: String::new(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    };
    if parents.is_empty() {
        return vec![bind(layout.fs(id), kind == Kind::View)];
    }
    let mut options = Vec::new();
    if index_off {
        options.push("index=off".to_owned());
    }
    if kind == Kind::Active {
        options.push(format!("workdir={}", layout.work(id).display()));
        options.push(format!("upperdir={}", layout.fs(id).display()));
    } else if let [only] = parents {
        return vec![bind(layout.fs(*only), true)];
    }
    let lower: Vec<String> = parents
        .iter()
        .map(|p| layout.fs(*p).display().to_string())
        .collect();
    options.push(format!("lowerdir={}", lower.join(":")));
    vec![Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_containerd_overlay() {
        let l = Layout::new(Path::new("/r"));
        let m = mounts(&l, Kind::Active, 3, &[], true);
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(m[0].source, "/r/snapshots/3/fs");
        assert_eq!(m[0].options, ["rw", "rbind"]);

        let m = mounts(&l, Kind::View, 3, &[2], true);
        assert_eq!(m[0].source, "/r/snapshots/2/fs");
        assert_eq!(m[0].options, ["ro", "rbind"]);

        let m = mounts(&l, Kind::Active, 3, &[2, 1], true);
        assert_eq!(
            m[0].options,
            [
                "index=off",
                "workdir=/r/snapshots/3/work",
                "upperdir=/r/snapshots/3/fs",
                "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"
            ]
        );

        let m = mounts(&l, Kind::View, 3, &[2, 1], false);
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(
            m[0].options,
            ["lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"]
        );
    }
}
