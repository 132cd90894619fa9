//! Reliability: registry faults, crashes, a full disk, concurrent pulls and security checks,
//! against real containerd + runc + docker-registry.

pub(crate) mod common;
mod concurrency;
pub(crate) mod crash;
mod credential_provider;
mod damaged_store;
mod disk;
mod faults;
mod forged;
mod security;
mod seeded_links;
mod slow_registry;
