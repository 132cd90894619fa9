//! Blob `GET`s (whole, or a Range) made here rather than by `oci-client`, which reads the
//! body of an error answer whole: a registry answering a blob request with an endless or huge
//! error body made the node hold all of it. Here an error body is read up to
//! [`MAX_ERROR_BODY`], and a success body is handed on as a stream that the caller reads under
//! its own cap. Requests carry the same credential as the manifest requests (see `direct`),
//! and follow redirects to blob storage as `oci-client` does (`reqwest` drops the
//! `Authorization` header on a redirect to another host).

use bytes::{Bytes, BytesMut};
use futures::{Stream, TryStreamExt};
use oci_client::errors::OciDistributionError;
use reqwest::header::HeaderValue;

use super::direct::Direct;
use super::http::{answer, authorized, scheme};
use super::{Reference, RegistryConfig};

/// The most of an error answer's body that is read (for its message and error codes).
pub(super) const MAX_ERROR_BODY: usize = 64 << 10;

/// A successful blob answer.
pub(super) enum BlobAnswer {
    /// `200`: the whole blob (asked for, or a registry that ignored `Range`).
    Whole(reqwest::Response),
    /// `206`: the requested range.
    Part(reqwest::Response),
}

impl BlobAnswer {
    /// The body as a stream; a connection broken mid-body is an I/O error (transient).
    pub(super) fn into_stream(self) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin {
        let (Self::Whole(r) | Self::Part(r)) = self;
        r.bytes_stream().map_err(std::io::Error::other)
    }

    /// The declared body length.
    pub(super) fn content_length(&self) -> Option<u64> {
        let (Self::Whole(r) | Self::Part(r)) = self;
        r.content_length()
    }
}

impl Direct {
    /// `GET` of the blob `digest` in `image`'s repository, all of it or `len` bytes at
    /// `offset`.
    pub(super) async fn blob(
        &self,
        config: &RegistryConfig,
        image: &Reference,
        digest: &str,
        range: Option<(u64, u64)>,
        auth: Option<&HeaderValue>,
    ) -> Result<BlobAnswer, OciDistributionError> {
        let host = image.resolve_registry();
        let url = format!(
            "{}://{host}/v2/{}/blobs/{digest}",
            scheme(config, host),
            image.repository()
        );
        let mut req = self.http(config, host).get(&url);
        if let Some((offset, len)) = range {
            let last = offset.saturating_add(len).saturating_sub(1);
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-{last}"));
        }
        let mut resp = authorized(req, auth).send().await?;
        match resp.status() {
            reqwest::StatusCode::OK => Ok(BlobAnswer::Whole(resp)),
            reqwest::StatusCode::PARTIAL_CONTENT if range.is_some() => Ok(BlobAnswer::Part(resp)),
            status => {
                let mut body = BytesMut::new();
                while body.len() < MAX_ERROR_BODY
                    && let Some(chunk) = resp.chunk().await?
                {
                    body.extend_from_slice(&chunk);
                }
                body.truncate(MAX_ERROR_BODY);
                let url = resp.url().to_string();
                Err(match answer(status, body.freeze(), &url) {
                    Err(e) => e,
                    // A 2xx other than 200/206: not a blob answer we can use.
                    Ok(_) => OciDistributionError::ServerError {
                        code: status.as_u16(),
                        url,
                        message: "unexpected status for a blob".to_owned(),
                    },
                })
            }
        }
    }
}
