//! chunksnap node library: containerd's Snapshots service backed by a redb metadata store and
//! overlayfs directories, with a hook ([`remote::RemoteLayers`]) that assembles layers from
//! the chunk store instead of letting containerd download them.
//!
//! - [`local::Local`]: metadata ([`metadata`]) + `snapshots/<id>` directories, crash-safe;
//! - [`service::Service`]: the gRPC Snapshots service (filters in [`filter`], mounts in
//!   [`mounts`], errors mapped to gRPC codes in [`error`]);
//! - [`server`]: socket setup and `serve(listener, service, shutdown)`;
//! - [`metrics`], [`config`]: the daemon's `/metrics` endpoint and config file.
//!
//! ```no_run
//! use std::sync::Arc;
//! use chunksnap::{local::Local, metrics::Metrics, remote::NoRemote, server, service::Service};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let local = Local::open("/var/lib/chunksnap".as_ref())?;
//! let service = Service::new(Arc::new(local), Arc::new(NoRemote), Metrics::new());
//! let listener = server::bind_socket("/run/chunksnap/chunksnap.sock".as_ref())?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! server::serve(listener, service, shutdown).await?;
//! # Ok(()) }
//! ```

pub mod artifact_cache;
pub mod cancel;
pub mod chunk_remote;
pub mod claims;
pub mod config;
pub mod containerd_config;
pub mod error;
pub mod filter;
pub mod index_files;
pub mod k8s_secrets;
pub mod local;
pub mod metadata;
pub mod metrics;
pub mod mounts;
pub mod remote;
pub mod server;
pub mod service;
