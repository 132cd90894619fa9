//! Retry policy: which `oci-client` failures are worth retrying (5xx, 429, broken connections,
//! timeouts) and which become typed errors at once (401/403 → auth, 404 → not found), with
//! exponential backoff between attempts.
//!
//! `oci-client` does not surface response headers on errors, so a `Retry-After` value cannot be
//! read; the backoff (doubling, capped) stands in for it.

use std::future::Future;
use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};

use super::RegistryError;

/// Longest single wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a failure should be handled.
pub(super) enum Class {
    /// Worth another attempt.
    Transient,
    /// Final: report this error.
    Final(RegistryError),
}

/// Classifies an `oci-client` error for the operation `op` on `what` (a reference or digest:
/// never a credential).
pub(super) fn classify(op: &'static str, what: &str, err: OciDistributionError) -> Class {
    let auth = |detail: String| {
        Class::Final(RegistryError::Auth {
            op,
            what: what.to_owned(),
            detail,
        })
    };
    let not_found = || {
        Class::Final(RegistryError::NotFound {
            op,
            what: what.to_owned(),
        })
    };
    match &err {
        OciDistributionError::UnauthorizedError { .. } => auth("401 unauthorized".to_owned()),
        OciDistributionError::AuthenticationFailure(_) => auth("token request refused".to_owned()),
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                auth(format!("{codes:?}"))
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::BlobUnknown
                        | OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                not_found()
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                Class::Transient
            } else {
                Class::Final(RegistryError::Oci { op, source: err })
            }
        }
        OciDistributionError::ServerError { code, .. } => match *code {
            401 | 403 => auth(format!("HTTP {code}")),
            404 => not_found(),
            429 | 500..=599 => Class::Transient,
            _ => Class::Final(RegistryError::Oci { op, source: err }),
        },
        OciDistributionError::RequestError(e)
            if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() =>
        {
            Class::Transient
        }
        OciDistributionError::IoError(_) => Class::Transient,
        _ => Class::Final(RegistryError::Oci { op, source: err }),
    }
}

/// The wait before attempt `attempt` (1-based retry count): base · 2^(attempt-1), capped.
pub(super) fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Runs `f` up to `1 + retries` times while it fails transiently.
pub(super) async fn with_retry<T, F, Fut>(
    op: &'static str,
    what: &str,
    retries: u32,
    base: Duration,
    mut f: F,
) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, OciDistributionError>>,
{
    let mut attempt = 0;
    loop {
        let err = match f().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        match classify(op, what, err) {
            Class::Final(e) => return Err(e),
            Class::Transient if attempt >= retries => {
                return Err(RegistryError::RetriesExhausted {
                    op,
                    what: what.to_owned(),
                    attempts: attempt + 1,
                });
            }
            Class::Transient => {
                attempt += 1;
                let wait = backoff(base, attempt);
                tracing::debug!(
                    op,
                    what,
                    attempt,
                    ?wait,
                    "transient registry failure; retrying"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 1), Duration::from_millis(100));
        assert_eq!(backoff(b, 2), Duration::from_millis(200));
        assert_eq!(backoff(b, 4), Duration::from_millis(800));
        assert_eq!(backoff(b, 40), MAX_BACKOFF);
    }

    #[test]
    fn status_codes_are_classified() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: String::new(),
        };
        assert!(matches!(classify("t", "x", server(503)), Class::Transient));
        assert!(matches!(classify("t", "x", server(429)), Class::Transient));
        assert!(matches!(
            classify("t", "x", server(403)),
            Class::Final(RegistryError::Auth { .. })
        ));
        assert!(matches!(
            classify("t", "x", server(404)),
            Class::Final(RegistryError::NotFound { .. })
        ));
        assert!(matches!(
            classify("t", "x", server(400)),
            Class::Final(RegistryError::Oci { .. })
        ));
    }

    #[tokio::test]
    async fn transient_failures_are_retried_then_reported() {
        let mut calls = 0;
        let r: Result<(), _> = with_retry("t", "x", 2, Duration::from_millis(1), || {
            calls += 1;
            async {
                Err(OciDistributionError::ServerError {
                    code: 502,
                    url: "u".into(),
                    message: String::new(),
                })
            }
        })
        .await;
        assert_eq!(calls, 3);
        assert!(matches!(
            r,
            Err(RegistryError::RetriesExhausted { attempts: 3, .. })
        ));
    }
}
