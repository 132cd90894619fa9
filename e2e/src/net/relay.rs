//! The plumbing every e2e proxy shares: a listener on a free 127.0.0.1 port served on its own
//! thread and runtime until the proxy is dropped, the accept loops (HTTP/1 or raw TCP), and the
//! upstream connection. The proxies themselves ([`crate::proxy`], [`crate::faults`],
//! [`super::delay_proxy`]) only say what they do to a request or a byte stream.
//!
//! A thread of its own means blocking test code cannot starve a proxy. Dropping the [`Relay`]
//! stops the accept loop and drops its runtime, which cancels every connection still open.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running proxy server; stops (and joins its thread) on drop.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Binds a free 127.0.0.1 port and runs `serve(listener)` on a new thread `name` with a
    /// current-thread runtime, until dropped.
    pub fn start<F, Fut>(name: &str, serve: F) -> Result<Self>
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .with_context(|| format!("bind {name} listener"))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let label = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("{label}: runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("{label}: listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = rx => {}
                        () = serve(listener) => {}
                    }
                });
            })
            .with_context(|| format!("spawn {name} thread"))?;
        Ok(Self {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens a TCP connection to `addr` with `TCP_NODELAY`: registries (Go's net/http) send that
/// way, and without it a streamed answer's headers and body meet the peer's delayed ACK, so
/// every blob read stalls ~40 ms.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Serves every accepted connection as HTTP/1 with `handle`. Connection errors are client
/// hang-ups or injected faults, and are ignored.
pub async fn serve_http1<H, Fut, B, E>(listener: TcpListener, handle: H)
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                .await;
        });
    }
}

/// Serves every accepted connection by `relay(client, server)`, `server` being a fresh
/// connection to `upstream` (a client whose upstream refuses is dropped).
pub async fn serve_tcp<R, Fut>(listener: TcpListener, upstream: SocketAddr, relay: R)
where
    R: Fn(TcpStream, TcpStream) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Ok(server) = connect(upstream).await {
                relay(client, server).await;
            }
        });
    }
}

/// Sends `req` to `upstream` on a connection of its own (the registry is local, so one
/// connection per request keeps the proxies trivial).
pub async fn send_upstream(
    req: Request<Incoming>,
    upstream: SocketAddr,
) -> Result<Response<Incoming>> {
    let stream = connect(upstream).await.context("connect registry")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("handshake")?;
    tokio::spawn(conn);
    sender.send_request(req).await.context("forward request")
}

/// A complete plain-text answer with `status`, for the proxy's own replies.
pub fn text_response<E>(status: StatusCode, text: String) -> Response<BoxBody<Bytes, E>> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

/// Whether `path` (query allowed) is a blob GET's path, `/v2/<name>/blobs/<digest>`, as
/// opposed to manifests or uploads.
pub fn is_blob_path(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    path.starts_with("/v2/")
        && path
            .rsplit_once("/blobs/")
            .is_some_and(|(_, digest)| digest.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::is_blob_path;

    #[test]
    fn blob_paths() {
        assert!(is_blob_path("/v2/a/b/blobs/sha256:abc"));
        assert!(is_blob_path("/v2/a/blobs/sha256:abc?ns=x"));
        assert!(!is_blob_path("/v2/a/blobs/uploads/"));
        assert!(!is_blob_path("/v2/a/manifests/sha256:abc"));
    }
}
