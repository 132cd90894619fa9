//! Stopping the async work of an abandoned prepare: its fetches run until they complete unless
//! they select on the prepare's [`DirClaim`](crate::snapshots::claims::DirClaim) token.

use std::future::Future;

use chunksnap_core::fetch::FetchError;
use tokio_util::sync::CancellationToken;

/// Runs `work` unless `token` is cancelled first; then `work` is dropped at once (its registry
/// requests close, its chunk claims are released for other fetches) and the result is
/// [`FetchError::Cancelled`].
pub async fn unless_cancelled<T, E: From<FetchError>>(
    token: &CancellationToken,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::select! {
        biased;
        () = token.cancelled() => Err(FetchError::Cancelled.into()),
        r = work => r,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::snapshots::claims::DirClaim;

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn cancelling_the_claim_drops_the_fetch() {
        let claim = DirClaim::unregistered();
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(dropped.clone());
        let work = async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<(), FetchError>(())
        };
        let token = claim.token();
        let task = tokio::spawn(async move { unless_cancelled(&token, work).await });
        // Dropping the call's guard cancels the claim, as an abandoned gRPC call does.
        drop(claim.cancel_on_drop());
        let r = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the fetch stops when its prepare is abandoned")
            .expect("task");
        assert!(matches!(r, Err(FetchError::Cancelled)));
        assert!(
            dropped.load(Ordering::SeqCst),
            "the fetch future was dropped"
        );
        // Work that finishes first is not affected.
        let token = CancellationToken::new();
        assert_eq!(
            unless_cancelled(&token, async { Ok::<_, FetchError>(7) })
                .await
                .unwrap(),
            7
        );
    }
}
