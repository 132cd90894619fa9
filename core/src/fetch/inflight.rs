//! Claims on chunks being fetched, shared process-wide so that concurrent fetches needing the
//! same chunk fetch it once, and the caps on Range requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chunksnap_format::digest::Digest;
use tokio::sync::Notify;

use super::{FetchOptions, limits};

/// Process-wide registry of chunks being fetched, and the caps on Range requests in flight;
/// clone it freely (shared state).
#[derive(Clone)]
pub struct Inflight {
    pub(super) map: Arc<Mutex<HashMap<Digest, Arc<Notify>>>>,
    /// One permit per request in flight, over every concurrent fetch: the layers of an image
    /// are fetched side by side, and each response is held in memory until verified, so memory
    /// stays within `2 × limit × FetchOptions::max_request` however many layers there are;
    /// `limit` of them per registry host.
    pub(super) requests: Arc<limits::Permits>,
}

impl Default for Inflight {
    fn default() -> Self {
        Self::with_request_limit(FetchOptions::default().parallelism)
    }
}

impl Inflight {
    /// At most `limit` Range requests in flight per registry host, and twice that in all,
    /// across every fetch sharing this value.
    pub fn with_request_limit(limit: usize) -> Self {
        Self {
            map: Arc::default(),
            requests: Arc::new(limits::Permits::new(limit)),
        }
    }
}

/// Chunks claimed by one request: each released (its waiters woken) as soon as it is stored,
/// and every one left on drop, success or not. A claim is only ever removed by its owner (the
/// same `Notify`), so a late release never drops a claim another fetch made since.
pub(super) struct Claims {
    pub(super) inflight: Inflight,
    pub(super) owned: HashMap<Digest, Arc<Notify>>,
}

impl Claims {
    fn release_locked(&self, map: &mut HashMap<Digest, Arc<Notify>>, d: &Digest) {
        let Some(mine) = self.owned.get(d) else {
            return;
        };
        if map.get(d).is_some_and(|n| Arc::ptr_eq(n, mine)) {
            map.remove(d);
            mine.notify_waiters();
        }
    }

    /// `d` is in the store: let its waiters go on without waiting for the rest of the request.
    pub(super) fn release(&self, d: &Digest) {
        let mut map = self.inflight.map.lock().unwrap_or_else(|e| e.into_inner());
        self.release_locked(&mut map, d);
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        let mut map = self.inflight.map.lock().unwrap_or_else(|e| e.into_inner());
        for d in self.owned.keys() {
            self.release_locked(&mut map, d);
        }
    }
}
