//! Remote layers: the seam between the snapshots and remote layer assembly (this module),
//! and its implementation over the node chunk store (the submodules).
//!
//! On a CRI unpack Prepare (labels `containerd.io/snapshot.ref` + `cri.layer-digest`,
//! `cri.manifest-digest`, `cri.image-ref`) the snapshotter creates an active snapshot with an
//! empty `fs` directory and asks a [`RemoteLayers`] to fill it. [`RemoteOutcome::Assembled`]
//! makes it commit the snapshot under the target name and answer `AlreadyExists`
//! (containerd then skips the layer download); [`RemoteOutcome::Fallback`] makes it empty the
//! directory and answer a normal Prepare, so containerd pulls the layer itself.
//!
//! The implementation, [`chunk_remote::ChunkRemote`]:
//! - [`index_source`]: where the artifact and the layer index come from (caches, index
//!   files on disk ([`index_files`]), index deltas, the registry), with its in-memory caches
//!   bounded in bytes ([`index_cache`]);
//! - [`prepare`]: preparing one layer (seeds, fetch, assembly), with the layer's delta packs
//!   read while its index delta is on the wire ([`early_deltas`]);
//! - [`prefetch`]: the image's other layers in the background, and `chunksnap prefetch`.

pub mod artifact_cache;
pub mod cancel;
pub mod chunk_remote;
pub mod converted;
pub mod early_deltas;
pub mod error;
pub mod index_cache;
pub mod index_files;
pub mod index_source;
pub mod layer_verify;
pub mod prefetch;
pub mod prepare;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use crate::labels::{
    LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST, LABEL_CRI_MANIFEST_DIGEST, LABEL_TARGET_REF,
};
use crate::snapshots::claims::DirClaim;

/// One layer to assemble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRequest {
    /// The Prepare key (containerd's extraction key).
    pub key: String,
    /// Parent snapshot key (`""` for the bottom layer).
    pub parent: String,
    /// The name it will be committed as (`containerd.io/snapshot.ref`).
    pub target: String,
    /// `cri.image-ref`.
    pub image_ref: String,
    /// `cri.manifest-digest`.
    pub manifest_digest: String,
    /// `cri.layer-digest`.
    pub layer_digest: String,
    /// All labels of the Prepare request.
    pub labels: BTreeMap<String, String>,
    /// The fresh, empty directory to fill with the layer's files (overlay upperdir form:
    /// whiteouts as 0/0 char devices, opaque dirs as `trusted.overlay.opaque=y`).
    pub fs_dir: PathBuf,
    /// The parent chain's `fs` directories, nearest first (overlay `lowerdir` order): a
    /// directory the layer implies without an entry takes its attributes from the nearest
    /// parent that has it, as containerd's applier does.
    pub parent_dirs: Vec<PathBuf>,
    /// Committed layers on this node that may hold identical files (best candidates first):
    /// those files are hardlinked instead of fetched and written.
    pub seeds: Vec<SeedCandidate>,
    /// Held by every thread that writes into `fs_dir`; cancelled when the Prepare call is
    /// abandoned or its snapshot removed. Writers must stop soon after that.
    pub claim: DirClaim,
}

/// A committed layer directory and the layer (`cri.layer-digest`) it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedCandidate {
    pub layer_digest: String,
    pub fs_dir: PathBuf,
}

impl RemoteRequest {
    /// Builds a request if `labels` carry everything a remote prepare needs.
    pub fn from_labels(
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
        fs_dir: PathBuf,
    ) -> Option<Self> {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        Some(Self {
            key: key.to_owned(),
            parent: parent.to_owned(),
            target: get(LABEL_TARGET_REF)?,
            image_ref: get(LABEL_CRI_IMAGE_REF)?,
            manifest_digest: get(LABEL_CRI_MANIFEST_DIGEST)?,
            layer_digest: get(LABEL_CRI_LAYER_DIGEST)?,
            labels: labels.clone(),
            fs_dir,
            parent_dirs: Vec::new(),
            seeds: Vec::new(),
            claim: DirClaim::unregistered(),
        })
    }

    /// Whether the labels ask for a remote prepare at all.
    pub fn wanted(labels: &BTreeMap<String, String>) -> bool {
        [
            LABEL_TARGET_REF,
            LABEL_CRI_IMAGE_REF,
            LABEL_CRI_MANIFEST_DIGEST,
            LABEL_CRI_LAYER_DIGEST,
        ]
        .iter()
        .all(|k| labels.get(*k).is_some_and(|v| !v.is_empty()))
    }
}

/// How a remote prepare ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// `fs_dir` holds the complete layer; its disk usage is given.
    Assembled { size: i64, inodes: i64 },
    /// Not available remotely (no artifact, error, …): containerd should pull the layer.
    /// The reason is logged once at info level.
    Fallback(String),
}

/// Boxed future returned by [`RemoteLayers::prepare_remote`].
pub type RemoteFuture<'a> = Pin<Box<dyn Future<Output = RemoteOutcome> + Send + 'a>>;

/// Assembles layers from the chunk store (implemented by the daemon's remote path).
///
/// Boxed-future form so the service can hold an `Arc<dyn RemoteLayers>`.
pub trait RemoteLayers: Send + Sync + 'static {
    /// Fills `req.fs_dir` with the layer, or says why not. Must not write outside `fs_dir`,
    /// nor after the returned future completed; if the future is dropped first, writers must
    /// stop soon after `req.claim` is cancelled and drop their clones of it.
    /// The service empties `fs_dir` after a fallback, so partial output is fine.
    fn prepare_remote(&self, req: RemoteRequest) -> RemoteFuture<'_>;
}

/// A [`RemoteLayers`] that always falls back (no remote data path wired).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRemote;

impl RemoteLayers for NoRemote {
    fn prepare_remote(&self, _req: RemoteRequest) -> RemoteFuture<'_> {
        Box::pin(async { RemoteOutcome::Fallback("remote layers are disabled".into()) })
    }
}
