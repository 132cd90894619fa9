//! A TCP proxy that adds a fixed one-way delay in each direction, so a shaped link gets a
//! realistic round-trip time. This kernel has `tbf` but no `netem`, so bandwidth comes from
//! `tc` and latency from here.
//!
//! Each direction is a reader task that timestamps what it reads and a writer task that
//! delivers each piece once its deadline has passed: throughput is not capped by the delay
//! (the pipe stays full, like a long link), only latency is added.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::relay::{Relay, serve_tcp};

/// A running delay proxy; stops when dropped.
pub struct DelayProxy {
    relay: Relay,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `upstream`, adding
    /// `one_way` of delay in each direction (RTT = 2 × one_way).
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> Result<Self> {
        let relay = Relay::start("e2e-delay", move |listener| {
            serve_tcp(listener, upstream, move |client, server| {
                relay(client, server, one_way)
            })
        })?;
        Ok(Self { relay })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.relay.addr()
    }
}

async fn relay(client: TcpStream, server: TcpStream, one_way: Duration) {
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
