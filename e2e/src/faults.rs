//! A fault-injecting HTTP/1 proxy for reliability tests.
//!
//! It sits between the [`crate::proxy::CountingProxy`] and the registry (see
//! [`crate::registry::Placement::via`]), so every client goes through it, but faults only hit
//! the requests a [`Target`] selects: by default blob GETs carrying a `Range` header. containerd
//! never sends those on a first attempt, so its own (fallback) pulls stay healthy while
//! chunksnap's pack reads get hurt. Faults are applied to the first N selected requests or with
//! a probability (seeded, reproducible). Like the counting proxy it runs on its own thread and
//! runtime and listens on 127.0.0.1 only ([`crate::net::relay`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Result;
use chunksnap_testkit::Rng;
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};

use crate::net::relay::{Relay, is_blob_path, send_upstream, serve_http1, text_response};

/// What happens to a selected request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (e.g. 503) without asking the registry.
    Status(u16),
    /// Answer 429 Too Many Requests with `Retry-After: <secs>`.
    TooManyRequests { retry_after_secs: u32 },
    /// Send half the body, then break the connection.
    ResetMidBody,
    /// Send half the body as a complete (chunked) response: a short, well-formed answer.
    Truncate,
    /// Send the whole body with one byte flipped in the middle.
    FlipByte,
    /// Send half the body, stall this long, then send the rest.
    Stall(Duration),
    /// Wait this long before answering normally (slow registry, not a failure).
    Delay(Duration),
    /// Slow loris: send the body one byte per this interval (shorter than any between-reads
    /// timeout, so only a deadline on the whole request ends it).
    Trickle(Duration),
}

/// Which requests a plan may hurt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Blob GETs with a `Range` header (chunksnap's pack reads).
    RangeBlobGets,
    /// Every blob GET.
    BlobGets,
}

/// How often a fault is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    /// The first `n` selected requests.
    FirstN(u64),
    /// Each selected request with probability `p` (0..=1), from a seeded generator.
    Probability { p: f64, seed: u64 },
}

/// A fault, what it targets and how often.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPlan {
    pub fault: Fault,
    pub target: Target,
    pub when: When,
}

#[derive(Debug, Default)]
struct Shared {
    plan: Mutex<Option<(FaultPlan, Rng)>>,
    selected: AtomicU64,
    injected: AtomicU64,
}

impl Shared {
    /// Whether this request gets the fault, advancing the plan's counters.
    fn decide(&self, is_range: bool, is_blob_get: bool) -> Option<Fault> {
        let mut guard = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        let (plan, rng) = guard.as_mut()?;
        let selected = match plan.target {
            Target::RangeBlobGets => is_range && is_blob_get,
            Target::BlobGets => is_blob_get,
        };
        if !selected {
            return None;
        }
        let n = self.selected.fetch_add(1, Ordering::Relaxed);
        let hit = match plan.when {
            When::FirstN(k) => n < k,
            When::Probability { p, .. } => rng.next_f64() < p,
        };
        if hit {
            self.injected.fetch_add(1, Ordering::Relaxed);
            Some(plan.fault)
        } else {
            None
        }
    }
}

/// The running proxy; stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    relay: Relay,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`, with no plan (clean).
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let relay = Relay::start("e2e-faults", move |listener| {
            serve_http1(listener, move |req| {
                handle(req, upstream, thread_shared.clone())
            })
        })?;
        Ok(Self { relay, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.relay.addr()
    }

    /// Installs `plan` (or none: pass everything through) and resets the counters.
    pub fn set_plan(&self, plan: Option<FaultPlan>) {
        let seeded = plan.map(|p| {
            let seed = match p.when {
                When::Probability { seed, .. } => seed,
                When::FirstN(_) => 1,
            };
            (p, Rng::new(seed))
        });
        *self.shared.plan.lock().unwrap_or_else(|p| p.into_inner()) = seeded;
        self.shared.selected.store(0, Ordering::Relaxed);
        self.shared.injected.store(0, Ordering::Relaxed);
    }

    /// Requests the current plan selected.
    pub fn selected(&self) -> u64 {
        self.shared.selected.load(Ordering::Relaxed)
    }

    /// Requests the current plan hurt.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::Relaxed)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type FaultBodyBox = http_body_util::combinators::BoxBody<Bytes, BoxError>;

async fn handle(
    req: Request<Incoming>,
    upstream: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Response<FaultBodyBox>, BoxError> {
    let is_range = req.headers().contains_key(hyper::header::RANGE);
    let is_blob_get = req.method() == hyper::Method::GET && is_blob_path(req.uri().path());
    let fault = shared.decide(is_range, is_blob_get);
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Ok(text_response(status, "injected fault".into()));
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let mut r = text_response(StatusCode::TOO_MANY_REQUESTS, "slow down".into());
            if let Ok(v) = hyper::header::HeaderValue::from_str(&retry_after_secs.to_string()) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            return Ok(r);
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let resp = match send_upstream(req, upstream).await {
        Ok(r) => r,
        Err(e) => return Ok(text_response(StatusCode::BAD_GATEWAY, format!("{e:#}"))),
    };
    let body_fault = fault.filter(|f| {
        matches!(
            f,
            Fault::ResetMidBody
                | Fault::Truncate
                | Fault::FlipByte
                | Fault::Stall(_)
                | Fault::Trickle(_)
        )
    });
    let Some(fault) = body_fault else {
        return Ok(resp.map(|b| b.map_err(BoxError::from).boxed()));
    };
    let (mut parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let half = bytes.len() / 2;
    let total = bytes.len() as u64;
    let steps: VecDeque<Step> = match fault {
        Fault::ResetMidBody => [Step::Data(bytes.slice(..half)), Step::Break].into(),
        Fault::Truncate => {
            // No length: hyper sends it chunked, and the short body ends cleanly.
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            [Step::Data(bytes.slice(..half))].into()
        }
        Fault::FlipByte => {
            let mut v = bytes.to_vec();
            if let Some(b) = v.get_mut(half) {
                *b ^= 0x5a;
            }
            [Step::Data(Bytes::from(v))].into()
        }
        Fault::Stall(d) => [
            Step::Data(bytes.slice(..half)),
            Step::Sleep(d),
            Step::Data(bytes.slice(half..)),
        ]
        .into(),
        Fault::Trickle(every) => [Step::Trickle(bytes, every)].into(),
        _ => [Step::Data(bytes)].into(),
    };
    let body = FaultBody {
        steps,
        sleep: None,
        exact: parts
            .headers
            .contains_key(hyper::header::CONTENT_LENGTH)
            .then_some(total),
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

enum Step {
    Data(Bytes),
    Sleep(Duration),
    /// These bytes, one per interval.
    Trickle(Bytes, Duration),
    /// Fail the body: hyper then aborts the connection mid-response.
    Break,
}

/// A scripted response body.
struct FaultBody {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The declared length, if the response keeps its `Content-Length`.
    exact: Option<u64>,
}

impl Body for FaultBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        match self.steps.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Data(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Some(Step::Break) => Poll::Ready(Some(Err("injected connection reset".into()))),
            Some(Step::Trickle(b, every)) => {
                if b.len() > 1 {
                    self.steps.push_front(Step::Trickle(b.slice(1..), every));
                    self.steps.push_front(Step::Sleep(every));
                }
                Poll::Ready(Some(Ok(Frame::data(b.slice(..b.len().min(1))))))
            }
            Some(Step::Sleep(d)) => {
                self.sleep = Some(Box::pin(tokio::time::sleep(d)));
                self.poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.steps.is_empty() && self.sleep.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.exact.map_or_else(
            hyper::body::SizeHint::default,
            hyper::body::SizeHint::with_exact,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_n_and_probability() {
        let s = Shared::default();
        let plan = |when| FaultPlan {
            fault: Fault::Status(503),
            target: Target::RangeBlobGets,
            when,
        };
        *s.plan.lock().unwrap() = Some((plan(When::FirstN(2)), Rng::new(1)));
        assert_eq!(s.decide(false, true), None, "not a Range request");
        assert!(s.decide(true, true).is_some());
        assert!(s.decide(true, true).is_some());
        assert_eq!(s.decide(true, true), None);
        *s.plan.lock().unwrap() = Some((plan(When::Probability { p: 0.5, seed: 7 }), Rng::new(7)));
        let hits = (0..1000).filter(|_| s.decide(true, true).is_some()).count();
        assert!((350..650).contains(&hits), "{hits}");
    }
}
