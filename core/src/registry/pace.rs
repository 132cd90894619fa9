//! How long a registry may take to answer a read the client holds whole (manifests, referrers
//! lists, tag lists, token answers, indexes and artifacts): after a grace period, the bytes
//! received so far must have arrived at a minimum average rate. A registry answering steadily
//! is never cut off; one that stalls or trickles is given up within the grace period plus the
//! time its bytes earned, a bounded total since every such read has a size cap.
//!
//! The between-reads timeout alone never fires for a registry sending one byte every 50 s, so
//! without this such a registry held a prepare (and the fallback containerd waits for) for as
//! long as it liked. Range reads of packs have their own deadline (`fetch::limits`).
//!
//! The readers deep inside a read (`direct`'s body loop, `blobs`' stream loop) report the
//! bytes they receive with [`received`]; [`within`] makes the counter they report to a
//! task-local of the read's future, so no signature between the two has to carry it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{RegistryConfig, RegistryError};

tokio::task_local! {
    static RECEIVED: Arc<AtomicU64>;
}

/// Reports `n` more bytes of the answer being read (no-op outside [`within`]).
pub(super) fn received(n: usize) {
    let _ = RECEIVED.try_with(|r| r.fetch_add(n as u64, Ordering::Relaxed));
}

/// When a read that started at `start` and has received `bytes` must next make progress by.
fn deadline(config: &RegistryConfig, start: Instant, bytes: u64) -> Instant {
    start
        + config.slow_grace
        + Duration::from_millis(bytes.saturating_mul(1000) / config.min_rate.max(1))
}

/// Runs `read` (retries included) under the pace rule; a read that falls behind ends with
/// [`RegistryError::TooSlow`].
pub(super) async fn within<T>(
    config: &RegistryConfig,
    op: &'static str,
    what: &str,
    read: impl Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    let counter = Arc::new(AtomicU64::new(0));
    let read = RECEIVED.scope(Arc::clone(&counter), read);
    tokio::pin!(read);
    let start = Instant::now();
    loop {
        let due = deadline(config, start, counter.load(Ordering::Relaxed));
        tokio::select! {
            r = &mut read => return r,
            () = tokio::time::sleep_until(due) => {
                // Bytes that arrived meanwhile moved the deadline on.
                if deadline(config, start, counter.load(Ordering::Relaxed)) <= Instant::now() {
                    return Err(RegistryError::TooSlow {
                        op,
                        what: what.to_owned(),
                        seconds: start.elapsed().as_secs(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RegistryConfig {
        RegistryConfig {
            slow_grace: Duration::from_secs(20),
            min_rate: 64 << 10,
            ..RegistryConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_read_ends_after_the_grace_period() {
        let r: Result<(), _> = within(&config(), "pull manifest", "x", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        })
        .await;
        assert!(matches!(r, Err(RegistryError::TooSlow { seconds: 20, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_earn_time() {
        // 640 KiB at once earns 10 s: the read may then stall until 30 s.
        let r: Result<(), _> = within(&config(), "pull blob", "x", async {
            received(640 << 10);
            tokio::time::sleep(Duration::from_secs(29)).await;
            Ok(())
        })
        .await;
        assert!(r.is_ok());
        let r: Result<(), _> = within(&config(), "pull blob", "x", async {
            received(640 << 10);
            tokio::time::sleep(Duration::from_secs(31)).await;
            Ok(())
        })
        .await;
        assert!(matches!(r, Err(RegistryError::TooSlow { seconds: 30, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_read_is_never_cut_off() {
        let r: Result<(), _> = within(&config(), "pull blob", "x", async {
            for _ in 0..200 {
                received(128 << 10);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(())
        })
        .await;
        assert!(r.is_ok());
    }
}
