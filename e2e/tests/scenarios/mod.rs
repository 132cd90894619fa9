//! chunksnap scenarios against real containerd + runc + docker-registry, driven through CRI.

mod common;
mod convert;
mod fallback;
mod rollout;
