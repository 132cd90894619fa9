//! Parsing and matching tests, and the watcher against a stub API server (hyper on 127.0.0.1
//! serving recorded list/watch JSON): no real API server can run where the tests run.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use k8s_openapi::ByteString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;

fn docker_config(auths: serde_json::Value) -> Vec<u8> {
    serde_json::json!({ "auths": auths })
        .to_string()
        .into_bytes()
}

fn secret(namespace: &str, name: &str, type_: &str, config: Vec<u8>) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.namespace = Some(namespace.to_owned());
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.resource_version = Some("1".to_owned());
    secret.type_ = Some(type_.to_owned());
    secret.data = Some(BTreeMap::from([(
        DOCKERCONFIGJSON_KEY.to_owned(),
        ByteString(config),
    )]));
    secret
}

fn cred(username: &str, password: &str) -> Credential {
    Credential {
        username: username.to_owned(),
        password: password.to_owned(),
    }
}

fn regcred(password: &str) -> Secret {
    secret(
        "team-a",
        "regcred",
        DOCKERCONFIGJSON_TYPE,
        docker_config(serde_json::json!({
            "registry.local:5000": { "auth": BASE64.encode(format!("ci:{password}")) },
            "https://index.docker.io/v1/": { "username": "hub", "password": "hubpw" },
        })),
    )
}

#[test]
fn credentials_match_hosts_like_the_kubelet() {
    let secrets = PullSecrets::default();
    assert!(secrets.apply(&regcred("s3cret")));
    assert!(secrets.apply(&secret(
        "team-a",
        "wild",
        DOCKERCONFIGJSON_TYPE,
        docker_config(serde_json::json!({
            "*.corp.example": { "username": "w", "password": "wpw" },
            "http://plain.example/some/path": { "username": "p", "password": "ppw" },
            "token-only.example": { "identitytoken": "tok" },
        })),
    )));
    assert_eq!(
        secrets.credentials_for("registry.local:5000"),
        Some(cred("ci", "s3cret"))
    );
    assert_eq!(
        secrets.credentials_for("registry.local"),
        None,
        "port must match"
    );
    for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
        assert_eq!(
            secrets.credentials_for(hub),
            Some(cred("hub", "hubpw")),
            "{hub}"
        );
    }
    assert_eq!(
        secrets.credentials_for("a.corp.example"),
        Some(cred("w", "wpw"))
    );
    assert_eq!(secrets.credentials_for("a.b.corp.example"), None);
    assert_eq!(secrets.credentials_for("corp.example"), None);
    assert_eq!(
        secrets.credentials_for("PLAIN.example"),
        Some(cred("p", "ppw"))
    );
    assert_eq!(secrets.credentials_for("token-only.example"), None);
    assert_eq!(
        secrets.hosts(),
        [
            "*.corp.example",
            "docker.io",
            "plain.example",
            "registry.local:5000"
        ]
    );
}

#[test]
fn other_types_and_garbage_are_ignored() {
    let secrets = PullSecrets::default();
    let opaque = secret(
        "ns",
        "opaque",
        "Opaque",
        docker_config(serde_json::json!({})),
    );
    assert!(!secrets.apply(&opaque));
    let garbage = secret("ns", "bad", DOCKERCONFIGJSON_TYPE, b"{not json".to_vec());
    assert!(!secrets.apply(&garbage));
    assert!(secrets.is_empty());

    // A secret that turns unreadable is dropped, not kept stale.
    assert!(secrets.apply(&regcred("one")));
    let mut broken = regcred("one");
    broken.data = None;
    assert!(!secrets.apply(&broken));
    assert!(secrets.credentials_for("registry.local:5000").is_none());
}

#[test]
fn operator_namespaces_win_in_their_order() {
    let config = |pw: &str| {
        docker_config(serde_json::json!({ "r.example": { "username": "u", "password": pw } }))
    };
    let secrets = PullSecrets::with_priority(vec!["ops".into(), "a".into()]);
    secrets.apply(&secret("a", "y", DOCKERCONFIGJSON_TYPE, config("from-a")));
    secrets.apply(&secret(
        "ops",
        "x",
        DOCKERCONFIGJSON_TYPE,
        config("from-ops"),
    ));
    secrets.apply(&secret(
        "ops",
        "w",
        DOCKERCONFIGJSON_TYPE,
        config("from-ops-w"),
    ));
    // The first listed namespace wins over an alphabetically earlier one; within it, by name.
    assert_eq!(
        secrets.credentials_for("r.example"),
        Some(cred("u", "from-ops-w"))
    );

    // Re-listing namespace `ops` without its secrets leaves the next namespace's.
    secrets.replace_scope(Some("ops"), None, &[]);
    assert_eq!(
        secrets.credentials_for("r.example"),
        Some(cred("u", "from-a"))
    );
    assert_eq!(secrets.len(), 1);
}

#[test]
fn tenants_cannot_choose_the_credentials_of_a_host() {
    let config = |host: &str, pw: &str| {
        docker_config(serde_json::json!({ host: { "username": "u", "password": pw } }))
    };
    // All namespaces watched, the daemon's own preferred.
    let secrets = PullSecrets::with_priority(vec!["kube-system".into()]);
    secrets.apply(&secret(
        "team-b",
        "x",
        DOCKERCONFIGJSON_TYPE,
        config("r.example", "b"),
    ));
    assert_eq!(secrets.credentials_for("r.example"), Some(cred("u", "b")));
    // A second tenant naming other credentials for the host (from an alphabetically earlier
    // namespace, which used to win) leaves the host without tenant credentials...
    secrets.apply(&secret(
        "aaa-evil",
        "x",
        DOCKERCONFIGJSON_TYPE,
        config("r.example", "evil"),
    ));
    assert_eq!(secrets.credentials_for("r.example"), None);
    let json: serde_json::Value = serde_json::from_str(&secrets.to_docker_config_json()).unwrap();
    assert_eq!(json["auths"], serde_json::json!({}));
    // ...tenants that agree are fine...
    secrets.apply(&secret(
        "aaa-evil",
        "x",
        DOCKERCONFIGJSON_TYPE,
        config("r.example", "b"),
    ));
    assert_eq!(secrets.credentials_for("r.example"), Some(cred("u", "b")));
    // ...and the operator's namespace decides over any tenant.
    secrets.apply(&secret(
        "aaa-evil",
        "x",
        DOCKERCONFIGJSON_TYPE,
        config("r.example", "evil"),
    ));
    secrets.apply(&secret(
        "kube-system",
        "reg",
        DOCKERCONFIGJSON_TYPE,
        config("r.example", "ops"),
    ));
    assert_eq!(secrets.credentials_for("r.example"), Some(cred("u", "ops")));
    let json: serde_json::Value = serde_json::from_str(&secrets.to_docker_config_json()).unwrap();
    let auth = BASE64.encode("u:ops");
    assert_eq!(json["auths"]["r.example"]["auth"], serde_json::json!(auth));
}

#[test]
fn the_scope_sets_the_precedence() {
    let listed = SyncOptions {
        namespaces: vec!["b".into(), "a".into()],
        preferred: vec!["own".into()],
        ..SyncOptions::default()
    };
    assert_eq!(super::watch::priority(&listed), ["b", "a"]);
    let all = SyncOptions {
        preferred: vec!["own".into()],
        ..SyncOptions::default()
    };
    assert_eq!(super::watch::priority(&all), ["own"]);
}

#[test]
fn secret_values_never_show_in_debug_output() {
    let secrets = PullSecrets::default();
    secrets.apply(&regcred("s3cret"));
    let debug = format!(
        "{secrets:?} {:?}",
        secrets.credentials_for("registry.local:5000")
    );
    assert!(
        !debug.contains("s3cret") && !debug.contains("hubpw"),
        "{debug}"
    );
    assert!(debug.contains("registry.local:5000") && debug.contains("<redacted>"));
}

#[test]
fn docker_config_export_round_trips() {
    let secrets = PullSecrets::default();
    secrets.apply(&regcred("s3cret"));
    let exported = secrets.to_docker_config_json();
    let reparsed = PullSecrets::default();
    reparsed.apply(&secret(
        "x",
        "y",
        DOCKERCONFIGJSON_TYPE,
        exported.into_bytes(),
    ));
    assert_eq!(
        reparsed.credentials_for("registry.local:5000"),
        Some(cred("ci", "s3cret"))
    );
    assert_eq!(
        reparsed.credentials_for("docker.io"),
        Some(cred("hub", "hubpw"))
    );
}

/// Stub API server: answers `GET /api/v1/namespaces/{ns}/secrets` with a recorded list, and
/// the matching `?watch=true` with a stream of events the test pushes.
#[derive(Clone, Default)]
struct StubApi {
    listed: Arc<Mutex<Vec<Secret>>>,
    watchers: Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl StubApi {
    async fn start(self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let stub = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let stub = stub.clone();
                        async move { Ok::<_, Infallible>(stub.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let uri = req.uri().to_string();
        self.requests.lock().unwrap().push(uri.clone());
        if req.uri().path() != "/api/v1/namespaces/team-a/secrets" {
            return Response::builder()
                .status(404)
                .body(Full::new(Bytes::from_static(b"{}")).boxed())
                .unwrap();
        }
        if uri.contains("watch=true") {
            let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
            self.watchers.lock().unwrap().push(tx);
            let stream = futures::stream::poll_fn(move |cx| {
                rx.poll_recv(cx)
                    .map(|chunk| chunk.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))))
            });
            return Response::new(StreamBody::new(stream).boxed());
        }
        let list = serde_json::json!({
            "apiVersion": "v1",
            "kind": "SecretList",
            "metadata": { "resourceVersion": "1" },
            "items": *self.listed.lock().unwrap(),
        });
        Response::new(Full::new(Bytes::from(list.to_string())).boxed())
    }

    /// Sends one watch event (`ADDED`, `MODIFIED`, `DELETED`) to every open watch.
    fn event(&self, kind: &str, secret: &Secret) {
        let mut line = serde_json::json!({ "type": kind, "object": secret }).to_string();
        line.push('\n');
        let bytes = Bytes::from(line);
        self.watchers
            .lock()
            .unwrap()
            .retain(|tx| tx.send(bytes.clone()).is_ok());
    }

    fn open_watches(&self) -> usize {
        self.watchers.lock().unwrap().len()
    }
}

/// Waits (bounded) until `cond` holds; the watcher reacts asynchronously.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn watcher_follows_list_and_watch_of_a_stub_api_server() {
    let stub = StubApi::default();
    let mut with_kind = regcred("first");
    with_kind.metadata.resource_version = Some("1".to_owned());
    stub.listed.lock().unwrap().push(with_kind);
    let addr = stub.clone().start().await;

    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("pull-secrets.json");
    let options = SyncOptions {
        namespaces: vec!["team-a".to_owned()],
        names: Vec::new(),
        output: Some(output.clone()),
        ..SyncOptions::default()
    };
    let secrets = PullSecrets::default();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (secrets, shutdown) = (secrets.clone(), shutdown.clone());
        async move { run(client, &options, secrets, shutdown).await }
    });

    // Initial list.
    eventually("the listed secret", || {
        secrets.credentials_for("registry.local:5000") == Some(cred("ci", "first"))
    })
    .await;
    eventually("the exported file", || output.exists()).await;
    let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(
        exported["auths"]["registry.local:5000"]["auth"],
        BASE64.encode("ci:first")
    );

    // Watch: a new password, then a new secret, then a deletion.
    eventually("an open watch", || stub.open_watches() > 0).await;
    let mut updated = regcred("second");
    updated.metadata.resource_version = Some("2".to_owned());
    stub.event("MODIFIED", &updated);
    eventually("the rotated password", || {
        secrets.credentials_for("registry.local:5000") == Some(cred("ci", "second"))
    })
    .await;
    eventually("the rewritten file", || {
        std::fs::read_to_string(&output)
            .is_ok_and(|text| text.contains(&BASE64.encode("ci:second")))
    })
    .await;

    let mut other = secret(
        "team-a",
        "mirror",
        DOCKERCONFIGJSON_TYPE,
        docker_config(
            serde_json::json!({ "mirror.local": { "username": "m", "password": "mpw" } }),
        ),
    );
    other.metadata.resource_version = Some("3".to_owned());
    stub.event("ADDED", &other);
    eventually("the added secret", || {
        secrets.credentials_for("mirror.local") == Some(cred("m", "mpw"))
    })
    .await;

    updated.metadata.resource_version = Some("4".to_owned());
    stub.event("DELETED", &updated);
    eventually("the deletion", || {
        secrets.credentials_for("registry.local:5000").is_none()
    })
    .await;
    assert_eq!(secrets.hosts(), ["mirror.local"]);

    // Only dockerconfigjson Secrets were asked for, in the configured namespace.
    let requests = stub.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|uri| uri.starts_with("/api/v1/namespaces/team-a/secrets?")
                && uri.contains("fieldSelector=type%3Dkubernetes.io%2Fdockerconfigjson")),
        "{requests:?}"
    );
    assert!(requests.iter().any(|uri| uri.contains("watch=true")));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("watcher stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn named_secrets_are_watched_by_name() {
    let stub = StubApi::default();
    stub.listed.lock().unwrap().push(regcred("pw"));
    let addr = stub.clone().start().await;
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let options = SyncOptions {
        namespaces: vec!["team-a".to_owned()],
        names: vec!["regcred".to_owned()],
        output: None,
        ..SyncOptions::default()
    };
    let secrets = PullSecrets::default();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (secrets, shutdown) = (secrets.clone(), shutdown.clone());
        async move { run(client, &options, secrets, shutdown).await }
    });
    eventually("the named secret", || {
        secrets.credentials_for("registry.local:5000").is_some()
    })
    .await;
    let requests = stub.requests.lock().unwrap().clone();
    assert!(
        requests.iter().all(|uri| uri.contains(
            "fieldSelector=type%3Dkubernetes.io%2Fdockerconfigjson%2Cmetadata.name%3Dregcred"
        )),
        "{requests:?}"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[test]
fn scopes_cover_every_namespace_and_name() {
    let options = SyncOptions {
        namespaces: vec!["a".into(), "b".into()],
        names: vec!["x".into(), "y".into()],
        output: None,
        ..SyncOptions::default()
    };
    let scopes = watch_scopes(&options);
    assert_eq!(scopes.len(), 4);
    assert_eq!(watch_scopes(&SyncOptions::default()), vec![(None, None)]);
}

fn watch_scopes(options: &SyncOptions) -> Vec<(Option<String>, Option<String>)> {
    watch::scopes(options)
        .into_iter()
        .map(|s| (s.namespace, s.name))
        .collect()
}
