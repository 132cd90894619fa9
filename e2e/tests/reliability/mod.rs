//! Reliability: registry faults, crashes, a full disk, concurrent pulls and security checks,
//! against real containerd + runc + docker-registry.

mod common;
mod crash;
mod faults;
