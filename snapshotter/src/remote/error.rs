//! [`RemoteError`], why a remote prepare could not assemble a layer, and the small helpers the
//! remote submodules share (label parsing, chunk digests, poison-tolerant locks).

use std::sync::Mutex;

use chunksnap_core::registry::RegistryError;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::LayerIndex;

/// Why a remote prepare could not assemble the layer (logged, then falls back).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("bad label {label}: {why}")]
    Label { label: &'static str, why: String },
    #[error("no chunksnap artifact for this image")]
    NoArtifact,
    #[error("the artifact has no index for layer {0}")]
    NoIndex(Digest),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("layer index: {0}")]
    Index(#[from] chunksnap_format::index::FormatError),
    #[error("index describes layer {found}, expected {expected}")]
    WrongLayer { expected: Digest, found: String },
    #[error("fetch: {0}")]
    Fetch(#[from] chunksnap_core::fetch::FetchError),
    #[error("assemble: {0}")]
    Assemble(#[from] chunksnap_core::assemble::AssembleError),
    #[error("the image has no manifest for platform {0}")]
    NoPlatform(String),
    #[error("task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("layer not verified: {0}")]
    Verify(#[from] chunksnap_core::verify::VerifyError),
    #[error("the layer index has no tar-split data (format 1): the layer cannot be verified")]
    NotVerifiable,
}

pub(super) fn chunk_digests(ix: &LayerIndex) -> Vec<Digest> {
    ix.chunks
        .iter()
        .filter_map(|c| Digest::from_slice(&c.digest).ok())
        .collect()
}

pub(super) fn parse_label(label: &'static str, value: &str) -> Result<Digest, RemoteError> {
    Digest::parse(value).map_err(|e| RemoteError::Label {
        label,
        why: e.to_string(),
    })
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
