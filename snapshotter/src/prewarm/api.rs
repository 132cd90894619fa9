//! The pre-warm API: HTTP/1.1 with JSON bodies on a unix socket (0660 in a 0700 directory,
//! like the gRPC socket, so only the node's root reaches it):
//!
//! - `POST /v1/prewarm` with a [`Request`] → the [`Report`] once the pre-warm ended (or was
//!   refused); the caller waits for it, so it can report the bytes and seconds;
//! - `GET /v1/status` → [`Status`].
//!
//! Bodies are bounded both ways (64 KiB in, 1 MiB back).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::service::{MAX_IMAGE_LEN, Prewarmer, Status};
use super::{Report, Request};

/// Largest request body accepted.
const MAX_REQUEST: usize = 64 << 10;
/// Largest answer the client reads.
const MAX_ANSWER: usize = 1 << 20;

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(listener: UnixListener, prewarmer: Arc<Prewarmer>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(cause = %e, "pre-warm API accept failed");
                    continue;
                }
            },
        };
        let prewarmer = prewarmer.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let prewarmer = prewarmer.clone();
                async move { Ok::<_, Infallible>(route(req, &prewarmer).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(cause = %e, "pre-warm API connection ended");
                },
                () = shutdown.cancelled() => {}
            }
        });
    }
}

async fn route(req: http::Request<Incoming>, prewarmer: &Prewarmer) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/status") => json(StatusCode::OK, &prewarmer.status()),
        (&Method::POST, "/v1/prewarm") => {
            let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
            };
            let request: Request = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad request: {e}\n")),
            };
            if request.image.is_empty()
                || request.image.len() > MAX_IMAGE_LEN
                || request.rollout.len() > MAX_IMAGE_LEN
            {
                return text(StatusCode::BAD_REQUEST, "bad image or rollout\n");
            }
            json(StatusCode::OK, &prewarmer.prewarm(&request).await)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    // Serializing these plain structs cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(status, "application/json", Bytes::from(body))
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain", Bytes::from(body.to_owned()))
}

fn respond(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pre-warm API: {0}")]
    Http(#[from] hyper::Error),
    #[error("pre-warm API request: {0}")]
    Request(#[from] http::Error),
    #[error("pre-warm API answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("pre-warm API answer: {0}")]
    Answer(String),
    #[error("pre-warm API: no answer within {0:?}")]
    Timeout(Duration),
}

/// A client of the daemon's pre-warm API.
#[derive(Debug, Clone)]
pub struct PrewarmClient {
    socket: PathBuf,
    timeout: Duration,
}

impl PrewarmClient {
    /// A client of the socket at `socket`, waiting at most `timeout` for an answer.
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        Self {
            socket: socket.to_owned(),
            timeout,
        }
    }

    /// Asks the daemon to pre-warm; returns when it has.
    pub async fn prewarm(&self, request: &Request) -> Result<Report, ApiError> {
        let body = serde_json::to_vec(request).map_err(|e| ApiError::Answer(e.to_string()))?;
        self.call(Method::POST, "/v1/prewarm", Bytes::from(body))
            .await
    }

    /// The daemon's pre-warm queue and recent results.
    pub async fn status(&self) -> Result<Status, ApiError> {
        self.call(Method::GET, "/v1/status", Bytes::new()).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.timeout, self.call_inner(method, path, body))
            .await
            .map_err(|_| ApiError::Timeout(self.timeout))?
    }

    async fn call_inner<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, ApiError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "chunksnap")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ApiError::Answer(e.to_string()))?
            .to_bytes();
        conn.abort();
        if !status.is_success() {
            return Err(ApiError::Status {
                status,
                body: String::from_utf8_lossy(&answer).trim().to_owned(),
            });
        }
        serde_json::from_slice(&answer).map_err(|e| ApiError::Answer(e.to_string()))
    }
}
