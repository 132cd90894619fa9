//! Registry answers that never end: a manifest, referrers list or token answer streamed forever
//! (chunked) or declared as 1 GiB. Each must fail with a size error once its cap is passed, the
//! client having read no more than the cap and one chunk (the server sees the connection close
//! after sending little more than the cap plus socket buffers).

use std::net::SocketAddr;
use std::time::Duration;

use chunksnap_core::registry::{RegistryClient, RegistryConfig, RegistryError};
use chunksnap_format::digest::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How the hostile answer's body is framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Chunked, never ending.
    Endless,
    /// `Content-Length: 1 GiB`.
    Declared,
    /// A `404` whose body is chunked and never ends.
    EndlessError,
    /// Chunked, one byte every 100 ms forever: never idle long enough for the between-reads
    /// timeout, far below any useful rate.
    Trickle,
}

const GIB: u64 = 1 << 30;
/// What the server may manage to send before the client hangs up: the largest cap (4 MiB)
/// plus loopback socket buffers, far below what it offers.
const SENT_BOUND: u64 = 64 << 20;

/// A registry on 127.0.0.1 that answers `GET /v2/` (open, or with a bearer challenge whose
/// realm it also serves) and everything else with a hostile body. Each hostile answer reports
/// the bytes it sent once the client hung up.
struct Hostile {
    addr: SocketAddr,
    sent: mpsc::UnboundedReceiver<u64>,
}

impl Hostile {
    async fn start(challenge: bool, framing: Framing) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, sent) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(n) = answer(sock, addr, challenge, framing).await {
                        let _ = tx.send(n);
                    }
                });
            }
        });
        Self { addr, sent }
    }

    fn client(&self) -> RegistryClient {
        RegistryClient::new(RegistryConfig {
            plain_http_hosts: vec![self.addr.to_string()],
            docker_config: None,
            retries: 0,
            ..RegistryConfig::default()
        })
        .unwrap()
    }

    /// A client giving slow answers `grace` before they must reach the default minimum rate.
    fn impatient_client(&self, grace: Duration) -> RegistryClient {
        RegistryClient::new(RegistryConfig {
            plain_http_hosts: vec![self.addr.to_string()],
            docker_config: None,
            retries: 0,
            slow_grace: grace,
            ..RegistryConfig::default()
        })
        .unwrap()
    }

    /// Bytes the hostile answer sent before the client hung up.
    async fn sent(&mut self) -> u64 {
        tokio::time::timeout(Duration::from_secs(30), self.sent.recv())
            .await
            .expect("the client hung up")
            .expect("server running")
    }
}

/// Serves one request; returns the body bytes sent for a hostile answer.
async fn answer(
    mut sock: TcpStream,
    addr: SocketAddr,
    challenge: bool,
    framing: Framing,
) -> Option<u64> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 << 10 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let path = head.split(|b| *b == b' ').nth(1)?.to_vec();
    if path == b"/v2/" {
        let reply = if challenge {
            format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"hostile\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        } else {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        let _ = sock.write_all(reply.as_bytes()).await;
        return None;
    }
    let framing_header = match framing {
        Framing::Endless | Framing::Trickle | Framing::EndlessError => {
            "Transfer-Encoding: chunked".to_owned()
        }
        Framing::Declared => format!("Content-Length: {GIB}"),
    };
    let status = match framing {
        Framing::EndlessError => "404 Not Found",
        _ => "200 OK",
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\n{framing_header}\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.ok()?;
    let block = vec![b' '; 64 << 10];
    let mut sent = 0u64;
    loop {
        let written = match framing {
            Framing::Endless | Framing::EndlessError => {
                let mut chunk = format!("{:x}\r\n", block.len()).into_bytes();
                chunk.extend_from_slice(&block);
                chunk.extend_from_slice(b"\r\n");
                sock.write_all(&chunk).await
            }
            Framing::Trickle => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if sock.write_all(b"1\r\n \r\n").await.is_err() {
                    return Some(sent);
                }
                sent += 1;
                continue;
            }
            Framing::Declared if sent >= GIB => return Some(sent),
            Framing::Declared => sock.write_all(&block).await,
        };
        if written.is_err() {
            return Some(sent);
        }
        sent += block.len() as u64;
    }
}

fn assert_too_large(r: Result<impl std::fmt::Debug, RegistryError>, what: &str) {
    match r {
        Err(RegistryError::TooLarge { what: w, .. }) if w.contains(what) => {}
        other => panic!("expected TooLarge for {what}, got {other:?}"),
    }
}

#[tokio::test]
async fn endless_manifest_answers_are_cut_at_the_cap() {
    for framing in [Framing::Endless, Framing::Declared] {
        let mut server = Hostile::start(false, framing).await;
        let client = server.client();
        let image = RegistryClient::parse_reference(&format!("{}/app:v1", server.addr)).unwrap();
        assert_too_large(client.resolve(&image).await, "app:v1");
        let sent = server.sent().await;
        assert!(sent < SENT_BOUND, "{framing:?}: server sent {sent} bytes");
    }
}

#[tokio::test]
async fn endless_referrers_answers_are_cut_at_the_cap() {
    let mut server = Hostile::start(false, Framing::Endless).await;
    let client = server.client();
    let image = RegistryClient::parse_reference(&format!("{}/app:v1", server.addr)).unwrap();
    let subject = Digest::of(b"subject");
    assert_too_large(
        client.referrers(&image, &subject, None).await,
        &subject.to_string(),
    );
    let sent = server.sent().await;
    assert!(sent < SENT_BOUND, "server sent {sent} bytes");
}

#[tokio::test]
async fn endless_token_answers_are_cut_at_the_cap() {
    for framing in [Framing::Endless, Framing::Declared] {
        let mut server = Hostile::start(true, framing).await;
        let client = server.client();
        let image = RegistryClient::parse_reference(&format!("{}/app:v1", server.addr)).unwrap();
        assert_too_large(client.resolve(&image).await, "token answer");
        let sent = server.sent().await;
        assert!(sent < SENT_BOUND, "{framing:?}: server sent {sent} bytes");
    }
}

fn assert_too_slow(r: Result<impl std::fmt::Debug, RegistryError>, what: &str) {
    match r {
        Err(RegistryError::TooSlow { what: w, .. }) if w.contains(what) => {}
        other => panic!("expected TooSlow for {what}, got {other:?}"),
    }
}

/// Manifests, referrers lists, token answers and small blobs (indexes, artifacts) trickled a
/// byte at a time are given up after the grace period: the between-reads timeout never fires.
#[tokio::test]
async fn trickled_answers_are_given_up_after_the_grace_period() {
    let grace = Duration::from_secs(1);
    // Generous for a loaded machine, far below what the trickle would take to reach any cap.
    let bound = Duration::from_secs(15);
    let subject = Digest::of(b"subject");
    for challenge in [false, true] {
        let server = Hostile::start(challenge, Framing::Trickle).await;
        let client = server.impatient_client(grace);
        let image = RegistryClient::parse_reference(&format!("{}/app:v1", server.addr)).unwrap();
        let what = if challenge { "127.0.0.1" } else { "app:v1" };
        let t = std::time::Instant::now();
        assert_too_slow(client.resolve(&image).await, what);
        assert!(t.elapsed() < bound, "manifest took {:?}", t.elapsed());
        if challenge {
            continue;
        }
        let t = std::time::Instant::now();
        assert_too_slow(
            client.referrers(&image, &subject, None).await,
            &subject.to_string(),
        );
        assert!(t.elapsed() < bound, "referrers took {:?}", t.elapsed());
        let t = std::time::Instant::now();
        assert_too_slow(
            client.read_blob(&image, &subject, 64 << 20).await,
            &subject.to_string(),
        );
        assert!(t.elapsed() < bound, "blob took {:?}", t.elapsed());
    }
}

/// Blob requests (small blobs read whole, and Range reads of packs) answered with an error
/// whose body never ends: the error is reported after at most `MAX_ERROR_BODY` of it.
#[tokio::test]
async fn endless_error_bodies_of_blob_answers_are_not_read_whole() {
    let mut server = Hostile::start(false, Framing::EndlessError).await;
    let client = server.client();
    let image = RegistryClient::parse_reference(&format!("{}/app:v1", server.addr)).unwrap();
    let blob = Digest::of(b"blob");
    let r = client.read_blob(&image, &blob, 64 << 20).await;
    assert!(
        matches!(r, Err(RegistryError::NotFound { .. })),
        "whole blob: {r:?}"
    );
    let sent = server.sent().await;
    assert!(sent < SENT_BOUND, "whole blob: server sent {sent} bytes");
    let r = client.read_range(&image, &blob, 1 << 20, 4096).await;
    assert!(
        matches!(r, Err(RegistryError::NotFound { .. })),
        "range: {r:?}"
    );
    let sent = server.sent().await;
    assert!(sent < SENT_BOUND, "range: server sent {sent} bytes");
}

/// A delta pack read early (whole, while the node rebuilds the index) answered with a body
/// declared as 1 GiB is refused at its headers; one that never ends is kept only up to the
/// pack's size, the rest of the body is never read, and every range of the pack is served.
#[tokio::test]
async fn endless_early_pack_reads_keep_no_more_than_the_pack() {
    use chunksnap_core::fetch::{EarlyPacks, FetchError, RangeSource, WithEarlyPacks};
    use futures::{FutureExt, StreamExt, future};

    /// Fails every Range read: the early read must serve them all.
    struct NoRanges;
    impl RangeSource for NoRanges {
        async fn read_range(&self, p: &str, o: u64, l: u64) -> Result<bytes::Bytes, FetchError> {
            Err(FetchError::range(
                p,
                o,
                l,
                "not expected: the pack was read early",
            ))
        }
    }

    // Not a multiple of the server's 64 KiB blocks: the last piece kept is cut.
    const SIZE: u64 = (1 << 20) + 123;
    let pack = Digest::of(b"pack");
    let server = Hostile::start(false, Framing::Declared).await;
    let image = RegistryClient::parse_reference(&format!("{}/app:v1", server.addr)).unwrap();
    let declared = server.client().open_blob(&image, &pack, SIZE).await;
    assert_too_large(declared.map(|_| ()), &pack.to_string());

    let mut server = Hostile::start(false, Framing::Endless).await;
    let client = server.client();
    let image = RegistryClient::parse_reference(&format!("{}/app:v1", server.addr)).unwrap();
    let open = async move {
        let body = client.open_blob(&image, &pack, SIZE).await.ok()?;
        Some(body.filter_map(|piece| future::ready(piece.ok())).boxed())
    };
    let early = EarlyPacks::start(
        [(pack.to_string(), SIZE, open.boxed())],
        |_| Duration::from_secs(30),
        (),
    );
    let src = WithEarlyPacks {
        inner: &NoRanges,
        early,
    };
    let whole = src.read_range(&pack.to_string(), 0, SIZE).await.unwrap();
    assert!(whole.len() as u64 == SIZE && whole.iter().all(|b| *b == b' '));
    let sent = server.sent().await;
    assert!(sent < SENT_BOUND, "server sent {sent} bytes");
}
