//! chunksnap node library: containerd's Snapshots service backed by a redb metadata store and
//! overlayfs directories, with a hook ([`remote::RemoteLayers`]) that assembles layers from
//! the chunk store instead of letting containerd download them.
//!
//! - [`snapshots`]: the snapshots themselves. [`snapshots::snapshotter::Snapshotter`] runs
//!   Prepare/Commit/Remove/… over [`snapshots::local::Local`] (metadata + `snapshots/<id>`
//!   directories, crash-safe) and the remote layers; [`snapshots::service::Service`] is its
//!   gRPC face;
//! - [`remote`]: the remote-layer seam and its implementation over the node chunk store
//!   (index source, layer prepare, prefetch);
//! - [`labels`]: the CRI snapshot labels that ask for a remote prepare;
//! - [`server`]: socket setup and `serve(listener, service, shutdown)`;
//! - [`error`]: the error type and its one mapping to gRPC codes;
//! - [`metrics`], [`config`]: the daemon's `/metrics` endpoint and config file;
//! - [`install`]: wiring chunksnap into containerd's config; [`kube`]: pull secrets from
//!   Kubernetes, and the rollout watcher asking for pre-warms;
//! - [`prewarm`]: staging images through containerd's CRI ahead of their pods.
//!
//! ```no_run
//! use std::sync::Arc;
//! use chunksnap::snapshots::{local::Local, service::Service, snapshotter::Snapshotter};
//! use chunksnap::{metrics::Metrics, remote::NoRemote, server};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let local = Local::open("/var/lib/chunksnap".as_ref())?;
//! let snapshotter = Snapshotter::new(Arc::new(local), Arc::new(NoRemote), Metrics::new());
//! let listener = server::bind_socket("/run/chunksnap/chunksnap.sock".as_ref())?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! server::serve(listener, Service::new(snapshotter), shutdown).await?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod install;
pub mod kube;
pub mod labels;
pub mod metrics;
pub mod prewarm;
pub mod remote;
pub mod server;
pub mod snapshots;
