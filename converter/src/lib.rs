//! chunkconv library: the convert pipeline, `inspect` and `extract`.
//!
//! - [`layer`]: one layer blob → layer index + new packs (CPU work, blocking).
//! - [`convert`]: an image reference → for each platform manifest, every layer converted (in
//!   parallel), packs and indexes pushed, the artifact pushed and linked as a referrer.
//! - [`catalog`]: chunks the repository already stores (dedup), and each layer's delta reference.
//! - [`delta`]: delta frames of a layer's new chunks against its reference layer.
//! - [`inspect`]: what an image's artifact holds, and what a base shares with it.
//! - [`extract`]: an image's filesystem assembled from its chunks (no containerd).
//! - [`parallel`]: the ordered parallel map of the CPU-bound stages.
//! - [`progress`]: terminal progress bars.
//! - [`sketch`]: chunk sketches (resemblance), computed by [`layer`] and read by [`delta`].

pub mod catalog;
pub mod convert;
pub mod delta;
pub mod extract;
pub mod inspect;
pub mod layer;
pub mod parallel;
pub mod progress;
pub mod sketch;

use chunksnap_core::registry::RegistryError;
use chunksnap_format::FormatError;
use chunksnap_format::artifact::ArtifactError;
use chunksnap_format::digest::DigestError;

/// Errors from converting or inspecting an image.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Registry access failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Gathering the dedup catalog or loading a layer index failed.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// Converting a layer failed.
    #[error("layer {layer}: {source}")]
    Layer {
        /// Source layer digest.
        layer: String,
        /// Why.
        #[source]
        source: layer::LayerError,
    },
    /// Uploading a layer's packs failed.
    #[error("uploading packs of layer {layer}: {source}")]
    Upload {
        /// Source layer digest.
        layer: String,
        /// Why.
        #[source]
        source: RegistryError,
    },
    /// An artifact manifest is unusable.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// A layer index blob is unusable.
    #[error("layer index: {0}")]
    Format(#[from] FormatError),
    /// A malformed digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A layer index that contradicts itself.
    #[error("bad layer index: {0}")]
    BadIndex(String),
    /// The image has no artifact (inspect).
    #[error("{0}: no chunksnap artifact; run `chunkconv convert` first")]
    NotConverted(String),
    /// Computing a layer's deltas failed.
    #[error("deltas: {0}")]
    Delta(#[from] delta::DeltaError),
    /// A background task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
