//! What one registry may cost the fetches from the others: a deadline per Range request scaled
//! by its size, and Range-request permits per registry host under a process-wide cap.
//!
//! Without them a registry answering at one byte per 50 s (the between-reads timeout never
//! fires) kept its requests, and every permit of the shared pool, for as long as it liked, and
//! a fetch waiting on a chunk such a request had claimed waited as long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::FetchOptions;

/// The process-wide cap is this many times the per-host limit: one slow host can hold at most
/// its own share, and the others keep the rest.
const HOST_SHARES: usize = 2;

/// How long a Range request of `len` bytes may take in all (retries included): the floor plus
/// the time `len` takes at the minimum rate.
pub fn request_deadline(opts: &FetchOptions, len: u64) -> Duration {
    let rate = opts.min_rate.max(1);
    opts.request_floor + Duration::from_millis(len.saturating_mul(1000) / rate)
}

/// How long a fetch waits for chunks another fetch claimed before fetching them itself: as
/// long as the largest request of the claiming fetch may take.
pub fn claim_wait(opts: &FetchOptions) -> Duration {
    request_deadline(opts, opts.max_request)
}

/// Range-request permits: `per_host` per registry host, `HOST_SHARES × per_host` in all.
pub(super) struct Permits {
    all: Arc<Semaphore>,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A request's permits, released on drop.
pub(super) struct Permit {
    _host: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl Permits {
    pub(super) fn new(per_host: usize) -> Self {
        let per_host = per_host.max(1);
        Self {
            all: Arc::new(Semaphore::new(per_host.saturating_mul(HOST_SHARES))),
            per_host,
            hosts: Mutex::default(),
        }
    }

    /// Waits for a permit of `host`, then one of the process-wide pool: a host whose requests
    /// stall queues behind its own permits, never holding more than its share of the pool.
    pub(super) async fn acquire(&self, host: &str) -> Option<Permit> {
        let sem = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            if !hosts.contains_key(host) {
                // Hosts nothing holds or waits for (their permits and waiters keep a clone)
                // are dropped: the map stays as small as the set of hosts being fetched from.
                hosts.retain(|_, s| Arc::strong_count(s) > 1);
            }
            Arc::clone(
                hosts
                    .entry(host.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_host))),
            )
        };
        // The semaphores are never closed, so acquiring cannot fail.
        let host = sem.acquire_owned().await.ok()?;
        let all = Arc::clone(&self.all).acquire_owned().await.ok()?;
        Some(Permit {
            _host: host,
            _all: all,
        })
    }

    /// Permits of `host` in use (for tests).
    #[cfg(test)]
    fn in_use(&self, host: &str) -> usize {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts
            .get(host)
            .map_or(0, |s| self.per_host - s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_grows_with_the_request() {
        let opts = FetchOptions {
            request_floor: Duration::from_secs(2),
            min_rate: 1000,
            ..FetchOptions::default()
        };
        assert_eq!(request_deadline(&opts, 0), Duration::from_secs(2));
        assert_eq!(request_deadline(&opts, 3000), Duration::from_secs(5));
        assert_eq!(claim_wait(&opts), request_deadline(&opts, opts.max_request));
        // Absurd sizes saturate instead of overflowing.
        assert!(request_deadline(&opts, u64::MAX) > Duration::from_secs(1 << 40));
    }

    #[tokio::test]
    async fn a_busy_host_leaves_permits_for_the_others() {
        let permits = Permits::new(2);
        let slow: Vec<Permit> = vec![
            permits.acquire("slow").await.unwrap(),
            permits.acquire("slow").await.unwrap(),
        ];
        assert_eq!(permits.in_use("slow"), 2);
        // A third request of the slow host waits; another host's do not.
        let third = tokio::time::timeout(Duration::from_millis(50), permits.acquire("slow")).await;
        assert!(third.is_err(), "the slow host is at its limit");
        let a = permits.acquire("fast").await.unwrap();
        let b = permits.acquire("fast").await.unwrap();
        assert_eq!(permits.in_use("fast"), 2);
        drop((a, b, slow));
        // Idle hosts are forgotten when a new one comes.
        let _c = permits.acquire("third").await.unwrap();
        assert_eq!(permits.hosts.lock().unwrap().len(), 1);
    }
}
