//! End-to-end harness for chunksnap: a real registry (distribution) behind a byte-counting proxy,
//! real containerd + runc driven through CRI and the native API, test images built from real
//! content, and an oracle that compares layer directories.
//!
//! - [`Registry`] (`registry`, `proxy`): `docker-registry` on 127.0.0.1 with per-request counts of
//!   method, path, Range, status and body bytes served.
//! - [`Containerd`] (`containerd`, `containerd_toml`): a private containerd 1.6, 1.7 or 2.1
//!   ([`ContainerdVersion`], `CHUNKSNAP_E2E_CONTAINERD`) with CRI, overlayfs or a proxy
//!   snapshotter; [`Cri`] (`cri`) and [`Native`] (`native`, namespace `k8s.io`) talk to it.
//! - [`TestImages`] (`images`, `features`, `oci`): `debian:v1`, `debian:v2`, `features:v1`,
//!   `pause:v1`, built from real content, cached under `target/e2e-cache/`.
//! - `faults`: a fault-injecting proxy (5xx, 429, resets, truncation, flipped bytes, stalls,
//!   delays) for the registry requests it targets, e.g. only chunksnap's Range reads.
//! - `treecmp`: the oracle; compares two trees down to xattrs, ns mtimes and hardlink groups.
//! - [`Env`] (`env`): the shared setup of a scenario.
//!
//! Everything needs root; run by a normal user, each test says it is skipped
//! ([`skip_unless_root`]). Set `CHUNKSNAP_E2E_KEEP=1` to keep daemons' temp dirs (configs, logs).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use chunksnap_e2e::treecmp::{CompareOptions, compare_trees};
//! let env = chunksnap_e2e::Env::start(chunksnap_e2e::Snapshotter::Overlayfs).await?;
//! let image = env.images.debian_v1().await?;
//! let cri = env.containerd.cri().await?;
//! cri.pull_image(&image.reference).await?;
//! let release = cri.run_and_read(&image.reference, "/etc/os-release").await?;
//! assert!(!release.is_empty());
//! let layers = env.containerd.native().await?.overlay_layer_dirs(&image.reference).await?;
//! assert!(compare_trees(&layers[0], &layers[0], &CompareOptions::default())?.is_empty());
//! println!("blob bytes served: {}", env.registry.blob_bytes_served());
//! # Ok(()) }
//! ```

pub mod auth_registry;
pub mod bench;
pub mod chunksnap;
pub mod containerd;
pub mod containerd_toml;
pub mod cri;
pub mod env;
pub mod faults;
pub mod features;
pub mod images;
pub mod kube_stub;
pub mod native;
pub mod net;
pub mod oci;
pub mod proxy;
pub mod registry;
pub mod stock_config;
pub mod treecmp;
pub mod util;

pub use containerd::Containerd;
pub use containerd_toml::{ContainerdConfig, ContainerdVersion, Snapshotter};
pub use cri::{Cri, ExecOutput};
pub use env::Env;
pub use images::TestImages;
pub use native::Native;
pub use oci::{BuiltImage, ImageSpec, LayerBlob};
pub use proxy::RequestRecord;
pub use registry::Registry;

/// Whether the calling e2e test must skip: every one needs root (containerd, mounts, network
/// namespaces). If so it says so on stderr. Each test starts with
/// `if chunksnap_e2e::skip_unless_root() { return Ok(()); }`.
pub fn skip_unless_root() -> bool {
    chunksnap_testkit::skip_unless_root("containerd")
}
