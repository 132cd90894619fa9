//! containerd's Snapshots service: the snapshot bookkeeping and the gRPC face of it.
//!
//! - [`local::Local`]: the metadata DB ([`metadata`]) plus the `snapshots/<id>` directories,
//!   crash-safe; mount lists in [`mounts`];
//! - [`claims`]: directories a remote prepare is still writing, so Remove waits for them;
//! - [`snapshotter::Snapshotter`]: the operations (Prepare, Commit, Remove, …) over those,
//!   with remote prepare through [`crate::remote::RemoteLayers`]; List filters in [`filter`];
//! - [`service::Service`]: the gRPC service, pass-throughs to the snapshotter.

pub mod claims;
pub mod filter;
pub mod local;
pub mod metadata;
pub mod mounts;
pub mod service;
pub mod snapshotter;
