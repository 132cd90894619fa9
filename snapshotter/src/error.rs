//! The snapshotter's error type and its one mapping to gRPC status codes.
//!
//! containerd acts on the codes, not the messages: `AlreadyExists` on a Prepare that carries
//! `containerd.io/snapshot.ref` means "already unpacked, skip this layer", `NotFound` on Stat
//! means "retry", anything else fails the pull. So every variant maps to a code on purpose.

use std::path::PathBuf;

/// Errors of the Snapshots service, its metadata store and its directories.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The snapshot (or commit target) name is taken.
    #[error("snapshot {0:?}: already exists")]
    AlreadyExists(String),
    /// No snapshot by that key (or a named parent is missing).
    #[error("{0}: not found")]
    NotFound(String),
    /// The request is well formed but the snapshot is in the wrong state
    /// (commit of a non-active snapshot, remove with children, mounts of a committed one).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The request itself is wrong (bad filter, non-committed parent, unknown update field).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(#[from] redb::Error),
    /// A record in the database could not be decoded (corruption or a newer format).
    #[error("metadata record {key:?}: {source}")]
    Record {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A filesystem operation on the state root failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Result alias for this crate's service code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(e.into())
            }
        }
    )*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::Db(_) | Error::Record { .. } | Error::Io { .. } | Error::Join(_) => {
                tonic::Status::internal(msg)
            }
        }
    }
}
