//! Plugins here are small shell scripts: each run appends a line to `calls`, saves its stdin,
//! args and one env var, and answers with the contents of `response.json`.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
}

const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

impl Fixture {
    /// A config with one provider `test-provider` running `script`.
    fn new(match_images: &[&str], default_cache: &str, script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let plugin = bin.join("test-provider");
        std::fs::write(
            &plugin,
            script.replace("$DIR", &dir.path().display().to_string()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let images: Vec<String> = match_images.iter().map(|m| format!("\"{m}\"")).collect();
        std::fs::write(
            dir.path().join("config.yaml"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n\
                 - name: test-provider\n  matchImages: [{}]\n  defaultCacheDuration: \"{default_cache}\"\n  \
                 apiVersion: {V1}\n  args: [get-credentials, --flag]\n  env:\n  - name: PROVIDER_TEST_ENV\n    value: from-config\n",
                images.join(", ")
            ),
        )
        .unwrap();
        Self { dir }
    }

    fn recording(match_images: &[&str], default_cache: &str) -> Self {
        Self::new(
            match_images,
            default_cache,
            "#!/bin/sh\necho call >> $DIR/calls\ncat > $DIR/request.json\n\
             echo \"$@ $PROVIDER_TEST_ENV\" > $DIR/argv\ncat $DIR/response.json\n",
        )
    }

    fn providers(&self) -> CredentialProviders {
        CredentialProviders::load(&self.path("config.yaml"), &self.path("bin")).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn respond(&self, key_type: &str, duration: Option<&str>, auth: serde_json::Value) {
        let mut r = serde_json::json!({
            "kind": "CredentialProviderResponse",
            "apiVersion": V1,
            "cacheKeyType": key_type,
            "auth": auth,
        });
        if let Some(d) = duration {
            r["cacheDuration"] = d.into();
        }
        std::fs::write(self.path("response.json"), r.to_string()).unwrap();
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.path("calls"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

fn basic(u: &str, p: &str) -> Option<RegistryAuth> {
    Some(RegistryAuth::Basic(u.into(), p.into()))
}

fn auth(pairs: &[(&str, &str, &str)]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, u, p) in pairs {
        m.insert(
            (*k).to_owned(),
            serde_json::json!({"username": u, "password": p}),
        );
    }
    m.into()
}

#[tokio::test]
async fn request_args_env_and_matching() {
    let f = Fixture::recording(&["*.example.com", "127.0.0.1:5000"], "1h");
    f.respond(
        "Image",
        None,
        auth(&[("*.example.com", "u", "p"), ("127.0.0.1:5000", "l", "q")]),
    );
    let p = f.providers();
    assert_eq!(p.names(), ["test-provider"]);
    assert_eq!(p.lookup("r.example.com/app").await, basic("u", "p"));
    let request: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.path("request.json")).unwrap()).unwrap();
    assert_eq!(
        request,
        serde_json::json!({"kind": "CredentialProviderRequest", "apiVersion": V1, "image": "r.example.com/app"})
    );
    assert_eq!(
        std::fs::read_to_string(f.path("argv")).unwrap().trim(),
        "get-credentials --flag from-config"
    );
    assert_eq!(p.lookup("127.0.0.1:5000/app").await, basic("l", "q"));
    // Not named by matchImages: the plugin is not run.
    let before = f.calls();
    assert_eq!(p.lookup("other.io/app").await, None);
    assert_eq!(p.lookup("a.b.example.com/app").await, None);
    assert_eq!(p.lookup("127.0.0.1:5001/app").await, None);
    assert_eq!(f.calls(), before);
}

#[tokio::test]
async fn most_specific_pattern_wins_and_empty_credentials_are_none() {
    let f = Fixture::recording(&["reg.io"], "1h");
    f.respond(
        "Global",
        None,
        auth(&[
            ("reg.io", "host", "h"),
            ("https://reg.io/team/", "team", "t"),
            ("reg.io/empty", "", ""),
        ]),
    );
    let p = f.providers();
    assert_eq!(p.lookup("reg.io/team/app").await, basic("team", "t"));
    assert_eq!(p.lookup("reg.io/app").await, basic("host", "h"));
    assert_eq!(p.lookup("reg.io/empty/app").await, None);
    // One Global answer served all three.
    assert_eq!(f.calls(), 1);
}

#[tokio::test]
async fn cache_key_types_and_durations() {
    // Registry: one run serves every repository of the host.
    let f = Fixture::recording(&["reg.io", "other.io"], "1h");
    f.respond(
        "Registry",
        None,
        auth(&[("reg.io", "u", "p"), ("other.io", "o", "p")]),
    );
    let p = f.providers();
    assert_eq!(p.lookup("reg.io/a").await, basic("u", "p"));
    assert_eq!(p.lookup("reg.io/b").await, basic("u", "p"));
    assert_eq!(f.calls(), 1);
    assert_eq!(p.lookup("other.io/a").await, basic("o", "p"));
    assert_eq!(f.calls(), 2);

    // Image: each repository asks.
    let f = Fixture::recording(&["reg.io"], "1h");
    f.respond("Image", Some("1h"), auth(&[("reg.io", "u", "p")]));
    let p = f.providers();
    p.lookup("reg.io/a").await;
    p.lookup("reg.io/a").await;
    p.lookup("reg.io/b").await;
    assert_eq!(f.calls(), 2);

    // An explicit zero is not cached, even with a default.
    let f = Fixture::recording(&["reg.io"], "1h");
    f.respond("Global", Some("0s"), auth(&[("reg.io", "u", "p")]));
    let p = f.providers();
    p.lookup("reg.io/a").await;
    p.lookup("reg.io/a").await;
    assert_eq!(f.calls(), 2);

    // No duration and a zero default: not cached.
    let f = Fixture::recording(&["reg.io"], "0s");
    f.respond("Global", None, auth(&[("reg.io", "u", "p")]));
    let p = f.providers();
    p.lookup("reg.io/a").await;
    p.lookup("reg.io/a").await;
    assert_eq!(f.calls(), 2);
}

#[tokio::test]
async fn expiry_runs_the_plugin_again_and_picks_up_rotation() {
    let f = Fixture::recording(&["reg.io"], "1h");
    f.respond("Registry", Some("400ms"), auth(&[("reg.io", "u", "old")]));
    let p = f.providers();
    assert_eq!(p.lookup("reg.io/a").await, basic("u", "old"));
    f.respond("Registry", Some("400ms"), auth(&[("reg.io", "u", "new")]));
    // Still cached.
    assert_eq!(p.lookup("reg.io/a").await, basic("u", "old"));
    assert_eq!(f.calls(), 1);
    // The expiry itself is what is tested: wait it out.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(p.lookup("reg.io/a").await, basic("u", "new"));
    assert_eq!(f.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_lookups_run_the_plugin_once() {
    let f = Fixture::new(
        &["reg.io"],
        "1h",
        "#!/bin/sh\necho call >> $DIR/calls\nsleep 0.3\ncat $DIR/response.json\n",
    );
    f.respond("Registry", None, auth(&[("reg.io", "u", "p")]));
    let p = std::sync::Arc::new(f.providers());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.lookup(&format!("reg.io/app{}", i % 3)).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), basic("u", "p"));
    }
    assert_eq!(f.calls(), 1);
}

fn failing(script: &str) -> (Fixture, CredentialProviders) {
    let f = Fixture::new(&["reg.io"], "1h", script);
    let p = f.providers().with_limits(Duration::from_millis(500), 4096);
    (f, p)
}

#[tokio::test]
async fn a_hanging_plugin_is_killed_with_its_children() {
    let (f, p) = failing("#!/bin/sh\nsleep 30 &\necho $! > $DIR/child\nwait\n");
    let started = Instant::now();
    let err = p.lookup_first("reg.io/a").await.unwrap_err();
    assert!(
        matches!(err, CredentialProviderError::Timeout { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let child: i32 = std::fs::read_to_string(f.path("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background `sleep` of the script was in its process group: gone (or a zombie
    // about to be reaped by init).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(), "the plugin's child {child} survived");
}

#[tokio::test]
async fn a_failed_run_stands_for_the_backoff() {
    let f = Fixture::new(
        &["reg.io"],
        "1h",
        "#!/bin/sh\necho call >> $DIR/calls\nexit 1\n",
    );
    let p = f.providers();
    assert!(p.lookup_first("reg.io/a").await.is_err());
    // Within the backoff: no credential, no new run (every request of a pull asks).
    assert_eq!(p.lookup("reg.io/a").await, None);
    assert_eq!(p.lookup("reg.io/a").await, None);
    assert_eq!(f.calls(), 1);
    // Another image is asked for.
    assert_eq!(p.lookup("reg.io/b").await, None);
    assert_eq!(f.calls(), 2);
}

#[tokio::test]
async fn oversized_failing_and_malformed_answers_are_typed_errors() {
    let (_f, p) = failing("#!/bin/sh\nhead -c 100000 /dev/zero\n");
    assert!(matches!(
        p.lookup_first("reg.io/a").await,
        Err(CredentialProviderError::TooLarge { limit: 4096, .. })
    ));
    let (_f, p) = failing("#!/bin/sh\necho oops\nexit 3\n");
    let err = p.lookup_first("reg.io/a").await.unwrap_err();
    assert!(matches!(err, CredentialProviderError::Exit { .. }), "{err}");
    assert!(err.to_string().contains('3'), "{err}");
    let (_f, p) = failing("#!/bin/sh\necho '{\"password\": \"s3cret\"'\n");
    let err = p.lookup_first("reg.io/a").await.unwrap_err();
    assert!(
        matches!(err, CredentialProviderError::Response { .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("s3cret"), "{err}");
    // The plugin's binary vanished after loading.
    let (f, p) = failing("#!/bin/sh\n");
    std::fs::remove_file(f.path("bin/test-provider")).unwrap();
    assert!(matches!(
        p.lookup_first("reg.io/a").await,
        Err(CredentialProviderError::Spawn { .. })
    ));
}

#[test]
fn debug_output_names_providers_only() {
    let f = Fixture::recording(&["reg.io"], "1h");
    let text = format!("{:?}", f.providers());
    assert!(text.contains("test-provider"), "{text}");
}

/// A registry on 127.0.0.1 asking for a bearer token from its own realm, which wants basic
/// credentials `u`/`right`; records the `Authorization` of every token request.
async fn bearer_registry() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(n) if n > 0 && head.len() < 64 << 10 => {
                            head.extend_from_slice(&buf[..n])
                        }
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let auth = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                use base64::Engine as _;
                let right = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("u:right")
                );
                let challenge = format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"stub\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let ok = |ty: &str, body: &str| {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ty}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let reply = if path.starts_with("/token") {
                    record.lock().unwrap().push(auth.clone());
                    if auth == right {
                        ok(
                            "application/json",
                            r#"{"token":"tok-abc","expires_in":300}"#,
                        )
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_owned()
                    }
                } else if path == "/v2/app/manifests/v1" && auth == "Bearer tok-abc" {
                    let manifest = format!(
                        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}},"layers":[]}}"#,
                        "0".repeat(64)
                    );
                    ok("application/vnd.oci.image.manifest.v1+json", &manifest)
                } else {
                    challenge
                };
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn provider_credentials_are_exchanged_for_a_bearer_token() {
    use crate::registry::{RegistryClient, RegistryConfig, RegistryError};
    let (addr, seen) = bearer_registry().await;
    let host = addr.to_string();
    let client_with = |password: &str| {
        let f = Fixture::recording(&[&host], "1h");
        f.respond("Registry", None, auth(&[(&host, "u", password)]));
        let client = RegistryClient::new(RegistryConfig {
            plain_http_hosts: vec![host.clone()],
            docker_config: None,
            retries: 0,
            credential_providers: Some(std::sync::Arc::new(f.providers())),
            ..RegistryConfig::default()
        })
        .unwrap();
        (f, client)
    };
    let image: crate::registry::Reference = format!("{host}/app:v1").parse().unwrap();

    let (f, client) = client_with("right");
    let manifest = client.resolve(&image).await.unwrap();
    assert_eq!(
        manifest.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(f.calls(), 1);
    use base64::Engine as _;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("u:right")
    );
    assert_eq!(seen.lock().unwrap().as_slice(), [want]);

    // A wrong password from the provider: refused at the realm, a typed error.
    let (_f, client) = client_with("wrong");
    assert!(matches!(
        client.resolve(&image).await,
        Err(RegistryError::Auth { .. })
    ));
}
