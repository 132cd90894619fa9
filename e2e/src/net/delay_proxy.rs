//! A TCP proxy that adds a fixed one-way delay in each direction, so a shaped link gets a
//! realistic round-trip time. This kernel has `tbf` but no `netem`, so bandwidth comes from
//! `tc` and latency from here.
//!
//! Each direction is a reader task that timestamps what it reads and a writer task that
//! delivers each piece once its deadline has passed: throughput is not capped by the delay
//! (the pipe stays full, like a long link), only latency is added.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A running delay proxy; stops when dropped.
pub struct DelayProxy {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `upstream`, adding
    /// `one_way` of delay in each direction (RTT = 2 × one_way).
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the delay proxy")?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                let token = token.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = relay(client, server, one_way) => {}
                        }
                    }
                });
            }
        });
        Ok(Self { addr, stop })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(client: TcpStream, server: TcpStream, one_way: Duration) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pipe(cr, sw, one_way);
    let down = pipe(sr, cw, one_way);
    let _ = tokio::join!(up, down);
}

async fn pipe<R, W>(mut reader: R, mut writer: W, delay: Duration)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Bounded so a slow receiver pushes back on the sender, as TCP would.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let read_side = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let write_side = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(read_side, write_side);
}
