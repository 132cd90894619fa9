//! The core scenarios on every containerd release line clusters run: 1.7 (Debian trixie) and
//! 2.1 (Debian sid), each with its own config style (see `chunksnap_e2e::containerd_toml`).
//! containerd 1.6 runs them as the plain scenario/reliability tests (`CHUNKSNAP_E2E_CONTAINERD`
//! picks another version for those). Filter one version with `matrix::containerd_2_1`.
//! `stock` wires chunksnap into each version's own `containerd config default`.

mod progress;
mod stock;

use anyhow::Result;
use chunksnap_e2e::ContainerdVersion;

use crate::reliability::crash;
use crate::scenarios::{fallback, rollout};

macro_rules! matrix {
    ($module:ident, $version:expr) => {
        mod $module {
            use super::*;

            /// v1 then v2 assembled remotely, equal to this containerd's overlayfs; chunksnap
            /// restarted under it.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn remote_v1_then_v2_match_overlayfs() -> Result<()> {
                if chunksnap_e2e::skip_unless_root() {
                    return Ok(());
                }
                rollout::security_update($version).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn unconverted_image_falls_back() -> Result<()> {
                if chunksnap_e2e::skip_unless_root() {
                    return Ok(());
                }
                fallback::unconverted_falls_back($version).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn chunksnap_killed_mid_pull_recovers() -> Result<()> {
                if chunksnap_e2e::skip_unless_root() {
                    return Ok(());
                }
                crash::chunksnap_killed_during_pulls($version).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn containerd_killed_mid_pull_recovers() -> Result<()> {
                if chunksnap_e2e::skip_unless_root() {
                    return Ok(());
                }
                crash::containerd_killed_during_pulls($version).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn long_prepares_outlast_the_progress_timeout() -> Result<()> {
                if chunksnap_e2e::skip_unless_root() {
                    return Ok(());
                }
                progress::long_prepares_outlast_the_progress_timeout($version).await
            }
        }
    };
}

matrix!(containerd_1_7, ContainerdVersion::V1_7);
matrix!(containerd_2_1, ContainerdVersion::V2_1);
