//! Claims on snapshot directories that a remote prepare is still writing.
//!
//! A remote prepare assembles on blocking threads, which outlive its gRPC call when containerd
//! goes away mid-pull: tonic drops the call's future, but a thread cannot be dropped. The
//! snapshot is then an orphan that containerd's garbage collector removes, possibly while those
//! threads still write into it (through directory fds, so a rename does not stop them). A
//! [`DirClaim`] is shared by everything writing one snapshot's directory: dropping the call
//! cancels it, the writers check it, and `Remove` waits until the last writer has let go before
//! it renames and deletes the directory. Cancelling also fires the claim's
//! [`CancellationToken`], which the prepare's async fetches select on: they stop (closing
//! their registry requests and releasing their chunk claims) instead of running to the end.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// One snapshot directory's claim; clones share it. Writers hold a clone for as long as they
/// may write; the claim is released when the last clone is dropped.
#[derive(Clone)]
pub struct DirClaim(Arc<ClaimState>);

struct ClaimState {
    cancelled: AtomicBool,
    /// Fired with `cancelled`, for async work.
    token: CancellationToken,
    released: Arc<Released>,
}

impl ClaimState {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.token.cancel();
    }
}

#[derive(Default)]
struct Released {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Drop for ClaimState {
    fn drop(&mut self) {
        *lock(&self.released.done) = true;
        self.released.cv.notify_all();
    }
}

impl DirClaim {
    /// A claim no registry knows of (requests built outside the service, tests).
    pub fn unregistered() -> Self {
        Self(Arc::new(ClaimState {
            cancelled: AtomicBool::new(false),
            token: CancellationToken::new(),
            released: Arc::default(),
        }))
    }

    /// Asks every writer to stop; what they wrote is then incomplete.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// A token cancelled with the claim; holding it does not hold the claim, so async work
    /// that selects on it never delays a `Remove`.
    pub fn token(&self) -> CancellationToken {
        self.0.token.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// The flag writers poll (the assembler's `cancel` option).
    pub fn flag(&self) -> &AtomicBool {
        &self.0.cancelled
    }

    /// A guard that cancels the claim when dropped: held by the gRPC call, so abandoning the
    /// call stops its writers. Cancelling after they finished changes nothing.
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

impl fmt::Debug for DirClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirClaim")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl PartialEq for DirClaim {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DirClaim {}

/// See [`DirClaim::cancel_on_drop`].
pub struct CancelOnDrop(DirClaim);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The claims of one daemon, by snapshot key.
#[derive(Default)]
pub struct Claims {
    by_key: Mutex<HashMap<String, Weak<ClaimState>>>,
}

/// [`Claims::cancel_and_wait`] gave up: a writer still holds the claim.
#[derive(Debug, thiserror::Error)]
#[error("snapshot {key:?} is still being written {waited:?} after its prepare was cancelled")]
pub struct StillWriting {
    pub key: String,
    pub waited: Duration,
}

impl Claims {
    /// A new claim on `key`'s directory (replacing a released one).
    pub fn claim(&self, key: &str) -> DirClaim {
        let claim = DirClaim::unregistered();
        let mut map = lock(&self.by_key);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key.to_owned(), Arc::downgrade(&claim.0));
        claim
    }

    /// Forgets the claim on `key`: its prepare call completed, and with it every writer (the
    /// [`crate::remote::RemoteLayers`] contract), whoever still holds a clone.
    pub fn release(&self, key: &str) {
        lock(&self.by_key).remove(key);
    }

    /// Cancels the claim on `key`, if any, and waits (blocking) until it is released, for at
    /// most `limit`. Afterwards nothing writes into `key`'s directory any more.
    pub fn cancel_and_wait(&self, key: &str, limit: Duration) -> Result<(), StillWriting> {
        let Some(state) = lock(&self.by_key).get(key).and_then(Weak::upgrade) else {
            return Ok(());
        };
        state.cancel();
        let released = Arc::clone(&state.released);
        drop(state);
        let started = Instant::now();
        let mut done = lock(&released.done);
        while !*done {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(StillWriting {
                    key: key.to_owned(),
                    waited: started.elapsed(),
                });
            }
            done = released
                .cv
                .wait_timeout(done, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if started.elapsed() > Duration::from_millis(1) {
            tracing::info!(
                key,
                waited_ms = started.elapsed().as_millis() as u64,
                "waited for an abandoned prepare to stop writing"
            );
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_waits_for_the_last_writer() {
        let claims = Claims::default();
        let claim = claims.claim("k");
        let writer = claim.clone();
        let guard = claim.cancel_on_drop();
        drop(claim);
        drop(guard);
        assert!(writer.is_cancelled(), "dropping the call cancels the claim");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(writer);
        });
        let started = Instant::now();
        claims
            .cancel_and_wait("k", Duration::from_secs(10))
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(90));
        t.join().unwrap();
        // Released claims and unknown keys do not wait, nor do completed calls' clones.
        claims.cancel_and_wait("k", Duration::ZERO).unwrap();
        claims.cancel_and_wait("other", Duration::ZERO).unwrap();
        let kept = claims.claim("k");
        claims.release("k");
        claims.cancel_and_wait("k", Duration::ZERO).unwrap();
        assert!(!kept.is_cancelled());
    }

    #[test]
    fn a_writer_that_never_stops_is_reported() {
        let claims = Claims::default();
        let held = claims.claim("k");
        let err = claims
            .cancel_and_wait("k", Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(err.key, "k");
        assert!(held.is_cancelled());
    }
}
