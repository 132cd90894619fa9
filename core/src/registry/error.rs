//! The error of every registry operation.

use oci_client::errors::OciDistributionError;

use chunksnap_format::digest::{Digest, DigestError};

/// Errors from registry operations. Messages name the operation and the reference or digest,
/// never a credential.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused our credentials (401/403) or the token exchange failed.
    #[error("{op} {what}: not authorized ({detail}); check docker config credentials")]
    Auth {
        /// The operation.
        op: &'static str,
        /// Reference or digest.
        what: String,
        /// Status or error code (no secrets).
        detail: String,
    },
    /// 404: the manifest, blob, tag or repository does not exist.
    #[error("{op} {what}: not found")]
    NotFound {
        /// The operation.
        op: &'static str,
        /// Reference or digest.
        what: String,
    },
    /// Transient failures (5xx, 429, broken connections) persisted through every retry.
    #[error("{op} {what}: registry kept failing after {attempts} attempts")]
    RetriesExhausted {
        /// The operation.
        op: &'static str,
        /// Reference or digest.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Any other failure reported by `oci-client`.
    #[error("{op}: {source}")]
    Oci {
        /// The operation.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: OciDistributionError,
    },
    /// Content did not hash to the digest it was fetched by.
    #[error("{what}: content digest is {actual}, expected {expected}")]
    DigestMismatch {
        /// What was fetched.
        what: String,
        /// Requested digest.
        expected: String,
        /// Digest of the bytes received.
        actual: Digest,
    },
    /// A blob or manifest exceeded its size cap.
    #[error("{what}: larger than the {limit}-byte limit")]
    TooLarge {
        /// What was fetched.
        what: String,
        /// The cap.
        limit: u64,
    },
    /// A read the client holds whole (manifest, referrers, tags, token, index, artifact) did
    /// not arrive within its deadline (a grace period plus its bytes at a minimum rate).
    #[error("{op} {what}: registry too slow, gave up after {seconds} s")]
    TooSlow {
        /// The operation.
        op: &'static str,
        /// Reference or digest.
        what: String,
        /// Seconds waited.
        seconds: u64,
    },
    /// A Range read returned a different length than asked for.
    #[error("range read of {digest} at {offset}: got {got} bytes, expected {expected}")]
    ShortRange {
        /// The blob.
        digest: Digest,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// A manifest or index we cannot use.
    #[error("{what}: {detail}")]
    BadManifest {
        /// Reference or digest.
        what: String,
        /// Why.
        detail: String,
    },
    /// Reading credentials failed (the message never includes the credential).
    #[error("credentials for {registry}: {detail}")]
    Credentials {
        /// Registry host.
        registry: String,
        /// What went wrong.
        detail: String,
    },
    /// An image reference that does not parse.
    #[error("invalid image reference {0:?}")]
    InvalidReference(String),
    /// A malformed digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// JSON (de)serialisation of an index or descriptor.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Building the HTTP client failed.
    #[error("cannot create the registry client: {0}")]
    Client(String),
    /// A blocking task (credential helper) panicked or was cancelled.
    #[error("credential lookup task failed: {0}")]
    Task(String),
}
