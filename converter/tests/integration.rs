//! Integration tests against a real `docker-registry` (one test binary; see `common`).

mod common;
mod integration {
    pub mod convert;
    pub mod deltas;
    pub mod extract;
    pub mod registry_ops;
}
