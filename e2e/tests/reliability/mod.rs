//! Reliability: registry faults, crashes, a full disk, concurrent pulls and security checks,
//! against real containerd + runc + docker-registry.

mod common;
mod concurrency;
mod crash;
mod disk;
mod faults;
mod security;
mod slow_registry;
