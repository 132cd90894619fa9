//! The one integration-test binary: harness self-tests (`harness`) and, later, the chunksnap
//! scenarios. Needs root, containerd, runc, docker-registry, skopeo, debootstrap and a C compiler.

mod harness;
mod matrix;
mod prewarm;
mod reliability;
mod scenarios;
