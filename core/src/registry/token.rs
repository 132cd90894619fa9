//! Pull credentials for hosts that ask for them, obtained here under a size cap.
//!
//! `oci-client` reads a token answer from the auth realm whole, and every answer to the
//! requests it makes for manifests and referrers, before any size check. So the token of a
//! pull is fetched here (the answer read under [`MAX_TOKEN_ANSWER`]), handed to `oci-client`'s
//! token cache (its blob requests then never ask the realm themselves while it is fresh), and
//! sent by [`super::direct`] on manifest, referrers and tag requests, whose answers are read
//! under their own caps.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_auth::parser::ChallengeParser;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::{RegistryToken, RegistryTokenType};
use reqwest::header::HeaderValue;

use super::{Reference, RegistryError};

/// Largest token answer read from an auth realm (real ones are a few KiB).
pub const MAX_TOKEN_ANSWER: usize = 64 << 10;
/// Token lifetime when the realm does not say (the distribution token spec's default).
const DEFAULT_EXPIRES_IN: u64 = 60;
/// A cached token is renewed this long before it expires, so that neither this client nor
/// `oci-client` ever sends an expired one.
const RENEW_BEFORE: Duration = Duration::from_secs(15);

/// How a host asked for credentials (its `WWW-Authenticate` answer to `GET /v2/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// The first challenge of a scheme we speak, if any.
    pub(super) fn parse(header: &HeaderValue) -> Option<Self> {
        let text = header.to_str().ok()?;
        ChallengeParser::new(text)
            .filter_map(Result::ok)
            .find_map(|c| {
                if c.scheme.eq_ignore_ascii_case("basic") {
                    return Some(Self::Basic);
                }
                if !c.scheme.eq_ignore_ascii_case("bearer") {
                    return None;
                }
                let param = |name: &str| {
                    c.params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.to_unescaped())
                };
                Some(Self::Bearer {
                    realm: param("realm")?,
                    service: param("service"),
                })
            })
    }
}

/// A credential for requests to one repository.
#[derive(Clone)]
pub(super) struct Credential {
    /// The `Authorization` header value.
    pub header: HeaderValue,
    /// The same, for `oci-client`'s token cache.
    pub oci: RegistryTokenType,
    expires: Instant,
}

/// Credentials per (host, repository), until they expire.
#[derive(Default)]
pub(super) struct Tokens {
    cache: Mutex<HashMap<(String, String), Credential>>,
}

impl Tokens {
    /// The credential for pulling from `image`'s repository under `challenge`: cached, or
    /// asked of the realm (answer read under [`MAX_TOKEN_ANSWER`]). `None` when `auth` has
    /// nothing to offer a basic challenge. The outer error is the request's (for the retry
    /// policy), the inner one a final refusal of the answer.
    pub(super) async fn pull(
        &self,
        http: &reqwest::Client,
        image: &Reference,
        auth: &RegistryAuth,
        challenge: &Challenge,
    ) -> Result<Result<Option<Credential>, RegistryError>, OciDistributionError> {
        let key = (
            image.resolve_registry().to_owned(),
            image.repository().to_owned(),
        );
        if let Some(c) = self.cache.lock().ok().and_then(|m| m.get(&key).cloned())
            && c.expires > Instant::now()
        {
            return Ok(Ok(Some(c)));
        }
        let credential = match (challenge, auth) {
            (_, RegistryAuth::Bearer(token)) => bearer(token.clone(), DEFAULT_EXPIRES_IN)?,
            (Challenge::Basic, RegistryAuth::Basic(user, password)) => basic(user, password)?,
            (Challenge::Basic, _) => return Ok(Ok(None)),
            (Challenge::Bearer { realm, service }, _) => {
                let scope = format!("repository:{}:pull", image.repository());
                let mut query = vec![("scope", scope.as_str())];
                if let Some(s) = service {
                    query.push(("service", s));
                }
                let mut req = http.get(realm.as_str()).query(&query);
                if let RegistryAuth::Basic(user, password) = auth {
                    req = req.basic_auth(user, Some(password));
                }
                let body = super::http::send(req, realm, MAX_TOKEN_ANSWER)
                    .await
                    .map_err(|e| match e {
                        OciDistributionError::ServerError { code, message, .. } => {
                            OciDistributionError::AuthenticationFailure(format!(
                                "{code}: {message}"
                            ))
                        }
                        e => e,
                    })?;
                if body.len() > MAX_TOKEN_ANSWER {
                    return Ok(Err(RegistryError::TooLarge {
                        what: format!("token answer of {realm}"),
                        limit: MAX_TOKEN_ANSWER as u64,
                    }));
                }
                parse_answer(&body)?
            }
        };
        if let Ok(mut m) = self.cache.lock() {
            m.insert(key, credential.clone());
        }
        Ok(Ok(Some(credential)))
    }

    /// Drops every cached credential of `host` (it refused one).
    pub(super) fn forget(&self, host: &str) {
        if let Ok(mut m) = self.cache.lock() {
            m.retain(|(h, _), _| h != host);
        }
    }
}

/// A token answer: `token` or `access_token`, and `expires_in` seconds.
fn parse_answer(body: &[u8]) -> Result<Credential, OciDistributionError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| OciDistributionError::RegistryTokenDecodeError(e.to_string()))?;
    let token = a.token.or(a.access_token).ok_or_else(|| {
        OciDistributionError::RegistryTokenDecodeError("answer has no token".into())
    })?;
    bearer(token, a.expires_in.unwrap_or(DEFAULT_EXPIRES_IN))
}

fn bearer(token: String, expires_in: u64) -> Result<Credential, OciDistributionError> {
    let header = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|e| OciDistributionError::RegistryTokenDecodeError(e.to_string()))?;
    Ok(Credential {
        header,
        oci: RegistryTokenType::Bearer(RegistryToken::Token { token }),
        expires: Instant::now() + Duration::from_secs(expires_in).saturating_sub(RENEW_BEFORE),
    })
}

fn basic(user: &str, password: &str) -> Result<Credential, OciDistributionError> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let header = HeaderValue::try_from(format!("Basic {encoded}"))
        .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))?;
    Ok(Credential {
        header,
        oci: RegistryTokenType::Basic(user.to_owned(), password.to_owned()),
        // Credentials from the docker config are looked up again after the credentials TTL,
        // which replaces the clients; this only bounds the cache.
        expires: Instant::now() + Duration::from_secs(3600),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_answers() {
        let h = HeaderValue::from_static(
            r#"Bearer realm="https://auth.example/token",service="registry.example""#,
        );
        assert_eq!(
            Challenge::parse(&h),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
            })
        );
        let h = HeaderValue::from_static(r#"Basic realm="r""#);
        assert_eq!(Challenge::parse(&h), Some(Challenge::Basic));
        assert_eq!(Challenge::parse(&HeaderValue::from_static("Foo")), None);
        let c = parse_answer(br#"{"access_token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(c.header, "Bearer abc");
        assert!(parse_answer(br#"{"expires_in":300}"#).is_err());
    }
}
