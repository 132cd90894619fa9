//! Integration tests: the daemon runs in-process on a temporary unix socket and is driven with
//! the generated gRPC client, like containerd drives a proxy snapshotter. Cases follow
//! containerd's snapshotter test suite (`snapshots/testsuite/testsuite.go`) plus chunksnap's
//! remote prepare handshake. Mount tests need root (they mount overlayfs) and skip otherwise.

mod harness;

mod basic;
mod listing;
mod remote;
