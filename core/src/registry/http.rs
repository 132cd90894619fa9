//! The request helpers every plain-`reqwest` registry request shares (`direct`, `direct_blobs`,
//! `token`): the scheme of a host, the `Authorization` header, and reading an answer's body
//! under a size cap, with non-`200` answers turned into the errors `oci-client` gives for them
//! so the retry policy classifies both paths alike.

use bytes::{Bytes, BytesMut};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use reqwest::header::HeaderValue;

use super::RegistryConfig;

/// `http` or `https` for `host`, as the `oci-client` clients choose it.
pub(super) fn scheme(config: &RegistryConfig, host: &str) -> &'static str {
    if config.plain_http_all || config.plain_http_hosts.iter().any(|h| h == host) {
        "http"
    } else {
        "https"
    }
}

pub(super) fn authorized(
    req: reqwest::RequestBuilder,
    auth: Option<&HeaderValue>,
) -> reqwest::RequestBuilder {
    match auth {
        Some(h) => req.header(reqwest::header::AUTHORIZATION, h.clone()),
        None => req,
    }
}

/// Sends `req` and reads a `200` body, stopping once it is longer than `max` bytes (the caller
/// reports such a body as too large). Other answers become the errors `oci-client` gives for
/// them, so the retry policy classifies both paths alike.
pub(super) async fn send(
    req: reqwest::RequestBuilder,
    url: &str,
    max: usize,
) -> Result<Bytes, OciDistributionError> {
    let (status, body) = fetch(req, max).await?;
    answer(status, body, url)
}

/// Sends `req` and reads the answer's body chunk by chunk, stopping once it is longer than
/// `max` bytes: whatever the registry sends, at most `max` + one chunk is held.
pub(super) async fn fetch(
    req: reqwest::RequestBuilder,
    max: usize,
) -> Result<(reqwest::StatusCode, Bytes), OciDistributionError> {
    let mut resp = req.send().await?;
    let status = resp.status();
    let mut body = BytesMut::new();
    while body.len() <= max
        && let Some(chunk) = resp.chunk().await?
    {
        super::pace::received(chunk.len());
        body.extend_from_slice(&chunk);
    }
    Ok((status, body.freeze()))
}

/// A `200` answer's body, or the error `oci-client` gives for the others.
pub(super) fn answer(
    status: reqwest::StatusCode,
    body: Bytes,
    url: &str,
) -> Result<Bytes, OciDistributionError> {
    let err = |code: u16| OciDistributionError::ServerError {
        code,
        url: url.to_owned(),
        message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    };
    match status {
        reqwest::StatusCode::OK => Ok(body),
        reqwest::StatusCode::UNAUTHORIZED => Err(OciDistributionError::UnauthorizedError {
            url: url.to_owned(),
        }),
        s if s.is_client_error() => match serde_json::from_slice::<OciEnvelope>(&body) {
            Ok(envelope) => Err(OciDistributionError::RegistryError {
                envelope,
                url: url.to_owned(),
            }),
            Err(_) => Err(err(s.as_u16())),
        },
        s => Err(err(s.as_u16())),
    }
}
