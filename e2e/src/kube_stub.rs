//! A stub Kubernetes API server (hyper on 127.0.0.1) for the pre-warm watcher: serves lists
//! and watches of ReplicaSets (`/apis/apps/v1/replicasets`) and pods (`/api/v1/pods`) from
//! objects the test holds, pushes watch events the test sends, and records Events the watcher
//! creates (`/apis/events.k8s.io/v1/namespaces/NS/events`). Tests can end a watch with a
//! `410 Gone` ERROR event (the client must re-list) or drop its connection (the client must
//! re-watch). No API server can run where the tests run; this replays recorded traffic.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use serde_json::Value;
use tokio::sync::mpsc;

/// The two watched resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    ReplicaSets,
    Pods,
}

impl Resource {
    fn path(self) -> &'static str {
        match self {
            Resource::ReplicaSets => "/apis/apps/v1/replicasets",
            Resource::Pods => "/api/v1/pods",
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Resource::ReplicaSets => "ReplicaSetList",
            Resource::Pods => "PodList",
        }
    }
}

#[derive(Default)]
struct Collection {
    /// `namespace/name` → object (resourceVersion set by the stub).
    objects: BTreeMap<String, Value>,
    watches: Vec<mpsc::UnboundedSender<Bytes>>,
    lists: usize,
    watch_requests: usize,
}

#[derive(Default)]
struct Inner {
    version: u64,
    collections: BTreeMap<Resource, Collection>,
    events: Vec<Value>,
    requests: Vec<String>,
}

/// The stub; clones share state.
#[derive(Clone, Default)]
pub struct KubeStub {
    inner: Arc<Mutex<Inner>>,
}

impl KubeStub {
    /// Serves on a free 127.0.0.1 port until the runtime ends; returns the address.
    pub async fn start(&self) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stub = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let stub = stub.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let stub = stub.clone();
                        async move { Ok::<_, Infallible>(stub.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(addr)
    }

    /// A kubeconfig naming the stub (plain HTTP, no credentials).
    pub fn kubeconfig(addr: SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: stub\n  context:\n    cluster: stub\n    user: stub\n\
             current-context: stub\nusers:\n- name: stub\n  user: {{}}\n"
        )
    }

    /// Sets an object (as listed from now on) and sends `ADDED` or `MODIFIED` to open watches.
    pub fn apply(&self, resource: Resource, mut object: Value) {
        let mut inner = self.lock();
        inner.version += 1;
        let version = inner.version.to_string();
        object["metadata"]["resourceVersion"] = Value::String(version);
        let key = object_key(&object);
        let collection = inner.collections.entry(resource).or_default();
        let kind = if collection.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        collection.objects.insert(key, object.clone());
        send(
            collection,
            &serde_json::json!({ "type": kind, "object": object }),
        );
    }

    /// Ends every open watch of `resource` with an ERROR `410 Gone` event, as an API server
    /// does when the watched resourceVersion is too old: clients must re-list.
    pub fn expire_watches(&self, resource: Resource) {
        let mut inner = self.lock();
        let collection = inner.collections.entry(resource).or_default();
        send(
            collection,
            &serde_json::json!({
                "type": "ERROR",
                "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {},
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": "too old resource version"
                }
            }),
        );
        collection.watches.clear();
    }

    /// Closes every open watch of `resource` (a dropped connection): clients re-watch.
    pub fn drop_watches(&self, resource: Resource) {
        self.lock()
            .collections
            .entry(resource)
            .or_default()
            .watches
            .clear();
    }

    /// (lists served, watch requests received, watches open) of `resource`.
    pub fn counts(&self, resource: Resource) -> (usize, usize, usize) {
        let mut inner = self.lock();
        let c = inner.collections.entry(resource).or_default();
        c.watches.retain(|tx| !tx.is_closed());
        (c.lists, c.watch_requests, c.watches.len())
    }

    /// Events the client created or patched, in order.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    /// Every request URI (path and query), in order.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<StubBody> {
        let uri = req.uri().to_string();
        let path = req.uri().path().to_owned();
        self.lock().requests.push(uri.clone());
        if path.starts_with("/apis/events.k8s.io/v1/namespaces/") && path.contains("/events") {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return status(400),
            };
            let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            self.lock().events.push(event);
            return full(201, body);
        }
        let Some(resource) = [Resource::ReplicaSets, Resource::Pods]
            .into_iter()
            .find(|r| r.path() == path)
        else {
            return status(404);
        };
        let mut inner = self.lock();
        let version = inner.version.to_string();
        let collection = inner.collections.entry(resource).or_default();
        if uri.contains("watch=true") {
            collection.watch_requests += 1;
            let (tx, rx) = mpsc::unbounded_channel();
            collection.watches.push(tx);
            return Response::new(StubBody::Stream(rx));
        }
        collection.lists += 1;
        let list = serde_json::json!({
            "apiVersion": if resource == Resource::Pods { "v1" } else { "apps/v1" },
            "kind": resource.list_kind(),
            "metadata": { "resourceVersion": version },
            "items": collection.objects.values().collect::<Vec<_>>(),
        });
        full(200, Bytes::from(list.to_string()))
    }
}

fn object_key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn send(collection: &mut Collection, event: &Value) {
    let mut line = event.to_string();
    line.push('\n');
    let bytes = Bytes::from(line);
    collection
        .watches
        .retain(|tx| tx.send(bytes.clone()).is_ok());
}

fn full(code: u16, body: Bytes) -> Response<StubBody> {
    let mut resp = Response::new(StubBody::Full(Full::new(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn status(code: u16) -> Response<StubBody> {
    full(code, Bytes::from_static(b"{}"))
}

/// A whole body, or watch lines as the test pushes them (ends when the stub drops the sender).
pub enum StubBody {
    Full(Full<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl Body for StubBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            StubBody::Full(full) => Pin::new(full).poll_frame(cx),
            StubBody::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}
