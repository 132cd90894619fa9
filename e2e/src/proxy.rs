//! A counting HTTP/1 reverse proxy in front of the test registry.
//!
//! distribution's access log does not say how many body bytes were really sent (a client may hang
//! up early, and Range answers are logged inconsistently), so every request goes through this
//! proxy, which records method, path, `Range` header, status and the body bytes it forwarded.
//! It runs on its own thread and runtime so blocking test code cannot starve it, and listens on
//! 127.0.0.1 only.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

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
}

impl RequestRecord {
    /// Whether this is a blob GET (`/v2/<name>/blobs/<digest>`), as opposed to manifests or uploads.
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && is_blob_path(&self.path)
    }
}

fn is_blob_path(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    path.starts_with("/v2/")
        && path
            .rsplit_once("/blobs/")
            .is_some_and(|(_, digest)| digest.contains(':'))
}

#[derive(Debug)]
struct Entry {
    method: String,
    path: String,
    range: Option<String>,
    status: u16,
    bytes: AtomicU64,
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
            })
            .collect()
    }
    fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The running proxy; stops (and joins its thread) on drop.
#[derive(Debug)]
pub struct CountingProxy {
    addr: SocketAddr,
    log: Arc<Log>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingProxy {
    /// Listens on a free 127.0.0.1 port and forwards everything to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("bind proxy listener")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let log = Arc::new(Log::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_log = log.clone();
        let thread = std::thread::Builder::new()
            .name("e2e-proxy".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("e2e proxy: runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("e2e proxy: listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = rx => {}
                        () = accept_loop(listener, upstream, thread_log) => {}
                    }
                });
            })
            .context("spawn proxy thread")?;
        Ok(Self {
            addr,
            log,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request since start or the last [`reset`](Self::reset), in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log.snapshot()
    }

    pub fn reset(&self) {
        self.log.clear();
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, log: Arc<Log>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Registries (Go's net/http) send with TCP_NODELAY; without it a streamed answer's
        // headers and body meet the client's delayed ACK and every blob read stalls ~40 ms.
        let _ = stream.set_nodelay(true);
        let log = log.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| forward(req, upstream, log.clone()));
            // Errors here are client hang-ups; the record already holds what was sent.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    log: Arc<Log>,
) -> Result<Response<ProxyBody>, hyper::Error> {
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
            log.push(Arc::new(Entry {
                method,
                path,
                range,
                status: 502,
                bytes: AtomicU64::new(0),
            }));
            let mut r = Response::new(
                http_body_util::Full::new(Bytes::from(format!("e2e proxy: {e:#}")))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return Ok(r);
        }
    };
    let entry = Arc::new(Entry {
        method,
        path,
        range,
        status: resp.status().as_u16(),
        bytes: AtomicU64::new(0),
    });
    log.push(entry.clone());
    Ok(resp.map(|body| CountingBody { inner: body, entry }.boxed()))
}

async fn send_upstream(req: Request<Incoming>, upstream: SocketAddr) -> Result<Response<Incoming>> {
    // One upstream connection per request keeps the proxy trivial; the registry is local.
    let stream = TcpStream::connect(upstream)
        .await
        .context("connect registry")?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("handshake")?;
    tokio::spawn(conn);
    sender.send_request(req).await.context("forward request")
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

#[cfg(test)]
mod tests {
    use super::is_blob_path;

    #[test]
    fn blob_paths() {
        assert!(is_blob_path("/v2/a/b/blobs/sha256:abc"));
        assert!(!is_blob_path("/v2/a/blobs/uploads/"));
        assert!(!is_blob_path("/v2/a/manifests/sha256:abc"));
    }
}
