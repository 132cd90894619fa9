//! A counting HTTP/1 reverse proxy in front of the test registry.
//!
//! distribution's access log does not say how many body bytes were really sent (a client may hang
//! up early, and Range answers are logged inconsistently), so every request goes through this
//! proxy, which records method, path, `Range` header, status and the body bytes it forwarded.
//! It runs on its own thread and runtime so blocking test code cannot starve it, and listens on
//! 127.0.0.1 only (see [`crate::net::relay`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Result;
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};

use crate::net::relay::{Relay, is_blob_path, send_upstream, serve_http1, text_response};

/// One request as the proxy saw it. `bytes` grows while the body streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query, as sent by the client.
    pub path: String,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    pub status: u16,
    /// Response body bytes actually forwarded to the client.
    pub bytes: u64,
    /// When the request arrived.
    pub arrived: Instant,
    /// From arrival to the last body byte forwarded (to the response head if there was none).
    pub took: Duration,
}

impl RequestRecord {
    /// Whether this is a blob GET (`/v2/<name>/blobs/<digest>`), as opposed to manifests or uploads.
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && is_blob_path(&self.path)
    }
}

#[derive(Debug)]
struct Entry {
    method: String,
    path: String,
    range: Option<String>,
    status: u16,
    bytes: AtomicU64,
    arrived: Instant,
    /// Microseconds from `arrived` to the last byte forwarded.
    took_us: AtomicU64,
}

impl Entry {
    fn new(
        method: String,
        path: String,
        range: Option<String>,
        status: u16,
        arrived: Instant,
    ) -> Self {
        Self {
            method,
            path,
            range,
            status,
            bytes: AtomicU64::new(0),
            took_us: AtomicU64::new(arrived.elapsed().as_micros() as u64),
            arrived,
        }
    }
}

#[derive(Debug, Default)]
struct Log(Mutex<Vec<Arc<Entry>>>);

impl Log {
    fn push(&self, e: Arc<Entry>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
    fn snapshot(&self) -> Vec<RequestRecord> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| RequestRecord {
                method: e.method.clone(),
                path: e.path.clone(),
                range: e.range.clone(),
                status: e.status,
                bytes: e.bytes.load(Ordering::Relaxed),
                arrived: e.arrived,
                took: Duration::from_micros(e.took_us.load(Ordering::Relaxed)),
            })
            .collect()
    }
    fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The running proxy; stops on drop.
#[derive(Debug)]
pub struct CountingProxy {
    relay: Relay,
    log: Arc<Log>,
}

impl CountingProxy {
    /// Listens on a free 127.0.0.1 port and forwards everything to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let log = Arc::new(Log::default());
        let thread_log = log.clone();
        let relay = Relay::start("e2e-proxy", move |listener| {
            serve_http1(listener, move |req| {
                forward(req, upstream, thread_log.clone())
            })
        })?;
        Ok(Self { relay, log })
    }

    pub fn addr(&self) -> SocketAddr {
        self.relay.addr()
    }

    /// Every request since start or the last [`reset`](Self::reset), in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log.snapshot()
    }

    pub fn reset(&self) {
        self.log.clear();
    }
}

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    log: Arc<Log>,
) -> Result<Response<ProxyBody>, hyper::Error> {
    let arrived = Instant::now();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.to_string());
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let resp = match send_upstream(req, upstream).await {
        Ok(r) => r,
        Err(e) => {
            log.push(Arc::new(Entry::new(method, path, range, 502, arrived)));
            return Ok(text_response(
                StatusCode::BAD_GATEWAY,
                format!("e2e proxy: {e:#}"),
            ));
        }
    };
    let entry = Arc::new(Entry::new(
        method,
        path,
        range,
        resp.status().as_u16(),
        arrived,
    ));
    log.push(entry.clone());
    Ok(resp.map(|body| CountingBody { inner: body, entry }.boxed()))
}

/// Passes frames through and counts the data bytes handed to the client connection.
struct CountingBody {
    inner: Incoming,
    entry: Arc<Entry>,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.entry
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            let took = self.entry.arrived.elapsed().as_micros() as u64;
            self.entry.took_us.store(took, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
