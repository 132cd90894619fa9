//! chunksnap scenarios against real containerd + runc + docker-registry, driven through CRI.

mod common;
mod convert;
pub(crate) mod fallback;
pub(crate) mod rollout;
