//! Small helpers shared by the harness: readiness polling, free ports, a tiny HTTP GET, and
//! unmounting leftovers under a directory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Polls a readiness signal: call [`Poller::tick`] after each failed probe. Waits grow from
/// 10 ms to 200 ms; `tick` fails once `timeout` has passed.
#[derive(Debug)]
pub struct Poller {
    what: String,
    deadline: Instant,
    wait: Duration,
}

impl Poller {
    pub fn new(what: impl Into<String>, timeout: Duration) -> Self {
        Self {
            what: what.into(),
            deadline: Instant::now() + timeout,
            wait: Duration::from_millis(10),
        }
    }

    pub async fn tick(&mut self) -> Result<()> {
        if Instant::now() >= self.deadline {
            bail!("timed out waiting for {}", self.what);
        }
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(Duration::from_millis(200));
        Ok(())
    }
}

/// A port that was free a moment ago on 127.0.0.1 (for daemons that cannot report the port they
/// bound).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `GET url` (plain HTTP, `http://host:port/path`) and the status code; body is drained.
pub async fn http_get_status(url: &str) -> Result<u16> {
    let (status, _) = http_get(url).await?;
    Ok(status)
}

/// `GET url` and the status and body, with a 10 s timeout.
pub async fn http_get(url: &str) -> Result<(u16, Bytes)> {
    http_get_range(url, None).await
}

/// `GET url` with an optional `Range` header value (e.g. `bytes=0-99`).
pub async fn http_get_range(url: &str, range: Option<&str>) -> Result<(u16, Bytes)> {
    let headers: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
    http_get_with(url, &headers).await
}

/// `GET url` with extra request headers, with a 10 s timeout.
pub async fn http_get_with(url: &str, headers: &[(&str, &str)]) -> Result<(u16, Bytes)> {
    tokio::time::timeout(Duration::from_secs(10), http_get_inner(url, headers))
        .await
        .with_context(|| format!("GET {url}: timeout"))?
}

/// Whether `CHUNKSNAP_E2E_KEEP` is set: daemons then leave their temp dirs (logs, configs) behind.
pub fn keep_temp_dirs() -> bool {
    std::env::var_os("CHUNKSNAP_E2E_KEEP").is_some()
}

/// A test node's temp dir (daemon root, config, log): removed on drop, or kept and printed when
/// [`keep_temp_dirs`] is on.
#[derive(Debug)]
pub struct NodeDir(Option<tempfile::TempDir>);

impl NodeDir {
    /// A fresh directory under the system temp dir, named `PREFIX…`.
    pub fn new(prefix: &str) -> Result<Self> {
        Ok(Self(Some(
            tempfile::Builder::new().prefix(prefix).tempdir()?,
        )))
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        self.0
            .as_ref()
            .map_or(std::path::Path::new(""), |d| d.path())
    }
}

impl Drop for NodeDir {
    fn drop(&mut self) {
        if keep_temp_dirs()
            && let Some(d) = self.0.take()
        {
            eprintln!("keeping {}", d.keep().display());
        }
    }
}

async fn http_get_inner(url: &str, headers: &[(&str, &str)]) -> Result<(u16, Bytes)> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad url {url}"))?;
    let authority = uri.authority().context("url without host")?.to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, &authority);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Lazily unmounts every mount point at or below `dir`, deepest first. Used before deleting temp
/// roots of daemons that may have left overlay or bind mounts behind.
pub fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(&unescape(p)).starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(unescape(p).as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
