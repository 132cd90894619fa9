//! A slow registry costs the others nothing: against two registries on 127.0.0.1 (a minimal
//! HTTP/1.1 server each), one trickling its answers one byte at a time, a fetch from the slow
//! one ends in `FetchError::Deadline` within its bound while a fetch from the healthy one,
//! sharing the same `Inflight`, completes in normal time. And a chunk claimed by a fetch that
//! stalls is fetched by a waiter after `claim_wait`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunksnap_core::fetch::{
    FetchError, FetchOptions, Inflight, RangeSource, claim_wait, fetch_missing,
};
use chunksnap_core::registry::{RegistryClient, RegistryConfig, RepoRangeSource};
use chunksnap_core::store::ChunkStore;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::{Chunk, Compression, LayerIndex, Pack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 4096;

/// A layer of `n` raw 4 KiB chunks in one pack.
fn layer(seed: u8, n: usize) -> (LayerIndex, Bytes) {
    let mut pack = Vec::new();
    let mut chunks = Vec::new();
    for i in 0..n {
        let data: Vec<u8> = (0..CHUNK)
            .map(|j| (j as u8) ^ seed ^ (i as u8).rotate_left(3))
            .collect();
        chunks.push(Chunk {
            digest: Digest::of(&data).as_bytes().to_vec(),
            size: CHUNK as u32,
            pack: 0,
            pack_offset: pack.len() as u64,
            stored_size: CHUNK as u32,
            compression: Compression::None as i32,
            delta: None,
        });
        pack.extend_from_slice(&data);
    }
    let index = LayerIndex {
        chunks,
        packs: vec![Pack {
            digest: Digest::of(&pack).to_string(),
            size: pack.len() as u64,
        }],
        ..LayerIndex::default()
    };
    (index, Bytes::from(pack))
}

/// A registry serving one blob: `GET /v2/` and Range GETs of the blob, each body sent whole or,
/// with `trickle`, one byte per interval.
struct Server {
    addr: SocketAddr,
    /// Range requests received.
    ranges: Arc<AtomicUsize>,
}

impl Server {
    async fn start(blob: Bytes, trickle: Option<Duration>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ranges = Arc::new(AtomicUsize::new(0));
        let counter = ranges.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, blob.clone(), trickle, counter.clone()));
            }
        });
        Self { addr, ranges }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

async fn serve(
    mut conn: TcpStream,
    blob: Bytes,
    trickle: Option<Duration>,
    ranges: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        // One request head (no request bodies: GETs only).
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut more = [0u8; 4096];
            match conn.read(&mut more).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&more[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let range = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            let spec = v.trim().strip_prefix("bytes=")?;
            let (a, b) = spec.split_once('-')?;
            k.eq_ignore_ascii_case("range")
                .then(|| (a.parse::<usize>().ok(), b.parse::<usize>().ok()))
        });
        let (status, body, extra) = match range {
            Some((Some(a), Some(b))) if b < blob.len() && a <= b => {
                ranges.fetch_add(1, Ordering::SeqCst);
                let extra = format!("Content-Range: bytes {a}-{b}/{}\r\n", blob.len());
                ("206 Partial Content", blob.slice(a..=b), extra)
            }
            _ => ("200 OK", Bytes::from_static(b"{}"), String::new()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        if conn.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let sent = match trickle.filter(|_| status.starts_with("206")) {
            None => conn.write_all(&body).await,
            Some(every) => {
                let mut r = Ok(());
                for b in body.iter() {
                    r = conn.write_all(&[*b]).await;
                    if r.is_err() {
                        break;
                    }
                    tokio::time::sleep(every).await;
                }
                r
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

fn source(host: &str) -> RepoRangeSource {
    let client = RegistryClient::new(RegistryConfig {
        plain_http_all: true,
        docker_config: None,
        retries: 0,
        ..RegistryConfig::default()
    })
    .unwrap();
    RepoRangeSource {
        client,
        repo: RegistryClient::parse_reference(&format!("{host}/app:v1")).unwrap(),
    }
}

fn store() -> (tempfile::TempDir, Arc<ChunkStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ChunkStore::open(dir.path(), None).unwrap());
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_registry_ends_in_a_deadline_and_stalls_no_other() {
    let (slow_ix, slow_pack) = layer(1, 8);
    let (fast_ix, fast_pack) = layer(2, 8);
    // One byte per 50 ms: a 4 KiB answer would take 200 s; the between-reads timeout (60 s)
    // never fires.
    let slow = Server::start(slow_pack, Some(Duration::from_millis(50))).await;
    let fast = Server::start(fast_pack, None).await;
    // One chunk per request, two requests per host: the slow fetch holds every permit its
    // host has, as the process-wide pool used to be all of them.
    let opts = FetchOptions {
        max_gap: 0,
        max_request: CHUNK as u64,
        parallelism: 2,
        request_floor: Duration::from_secs(3),
        min_rate: 1 << 20,
        ..FetchOptions::default()
    };
    let inflight = Inflight::with_request_limit(2);
    let (_d1, store1) = store();
    let (_d2, store2) = store();

    let started = Instant::now();
    let slow_fetch = {
        let (inflight, src) = (inflight.clone(), source(&slow.host()));
        tokio::spawn(async move { fetch_missing(&slow_ix, &store1, &src, &opts, &inflight).await })
    };
    while slow.ranges.load(Ordering::SeqCst) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no slow request"
        );
        tokio::task::yield_now().await;
    }

    let fast_started = Instant::now();
    let stats = fetch_missing(&fast_ix, &store2, &source(&fast.host()), &opts, &inflight)
        .await
        .unwrap();
    let fast_time = fast_started.elapsed();
    assert_eq!(stats.chunks_fetched, 8);
    assert!(
        fast_time < opts.request_floor,
        "the healthy fetch waited for the slow one: {fast_time:?}"
    );

    let slow_result = tokio::time::timeout(Duration::from_secs(20), slow_fetch)
        .await
        .expect("the slow fetch ends")
        .unwrap();
    let slow_time = started.elapsed();
    let deadline = chunksnap_core::fetch::request_deadline(&opts, CHUNK as u64);
    assert!(
        matches!(slow_result, Err(FetchError::Deadline { after, .. }) if after == deadline),
        "{slow_result:?}"
    );
    assert!(slow_time >= deadline, "{slow_time:?}");
    assert!(
        slow_time < deadline + Duration::from_secs(5),
        "{slow_time:?}"
    );
    eprintln!(
        "healthy fetch {:.0} ms beside a slow-loris one; slow fetch cut after {:.1} s",
        fast_time.as_secs_f64() * 1000.0,
        slow_time.as_secs_f64()
    );
}

/// Never answers; counts the requests it was asked.
struct Stuck(Arc<AtomicUsize>);

impl RangeSource for Stuck {
    fn host(&self) -> &str {
        "stuck.example"
    }

    async fn read_range(&self, _: &str, _: u64, _: u64) -> Result<Bytes, FetchError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// Serves one pack from memory.
struct Mem(Bytes);

impl RangeSource for Mem {
    async fn read_range(&self, _: &str, offset: u64, len: u64) -> Result<Bytes, FetchError> {
        Ok(self.0.slice(offset as usize..(offset + len) as usize))
    }
}

#[tokio::test]
async fn a_stalled_claim_is_not_waited_for_forever() {
    let (ix, pack) = layer(3, 4);
    let (_dir, store) = store();
    let inflight = Inflight::default();
    // The owner's requests may take a minute (its deadline is its own business)...
    let owner_opts = FetchOptions {
        request_floor: Duration::from_secs(60),
        ..FetchOptions::default()
    };
    let asked = Arc::new(AtomicUsize::new(0));
    let owner = {
        let (ix, store, inflight) = (ix.clone(), store.clone(), inflight.clone());
        let src = Stuck(asked.clone());
        tokio::spawn(async move { fetch_missing(&ix, &store, &src, &owner_opts, &inflight).await })
    };
    // The owner claims its chunks before its first request.
    while asked.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let waiter_opts = FetchOptions {
        request_floor: Duration::from_millis(300),
        max_request: CHUNK as u64,
        min_rate: 1 << 20,
        ..FetchOptions::default()
    };
    let started = Instant::now();
    let stats = fetch_missing(&ix, &store, &Mem(pack), &waiter_opts, &inflight)
        .await
        .unwrap();
    // ... a waiter gives up on them after its claim_wait and fetches them itself.
    let waited = started.elapsed();
    assert_eq!((stats.claims_overtaken, stats.chunks_fetched), (4, 4));
    assert!(waited >= claim_wait(&waiter_opts), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(!owner.is_finished());
    owner.abort();
}
