//! chunksnap scenarios against real containerd + runc + docker-registry, driven through CRI.

mod common;
mod fallback;
mod rollout;
