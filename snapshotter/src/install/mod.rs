//! Node installation tooling: wiring chunksnap into containerd's config file.

pub mod containerd_config;
