//! OCI registry access for the converter and the node: one cheap-to-clone [`RegistryClient`]
//! over `oci-client` that adds docker `config.json` credentials, per-host plain-HTTP/insecure
//! settings, timeouts, retries with backoff, digest verification, size caps, Range reads and the
//! referrers API with its tag-schema fallback ([`referrers`]); and the one rule choosing a
//! platform's manifest ([`choose_platform`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), chunksnap_core::registry::RegistryError> {
//! use chunksnap_core::registry::{RegistryClient, RegistryConfig};
//! let client = RegistryClient::new(RegistryConfig { plain_http_all: true, ..Default::default() })?;
//! let image = "127.0.0.1:5000/app:v1".parse().unwrap();
//! let manifest = client.resolve(&image).await?;
//! println!("{} {}", manifest.digest, manifest.media_type);
//! # Ok(()) }
//! ```

mod auth;
mod blobs;
pub mod credential_provider;
mod credentials;
mod direct;
mod direct_blobs;
mod error;
mod http;
mod manifests;
mod pace;
pub use blobs::{BlobStream, RepoRangeSource};
pub use error::RegistryError;
pub use manifests::parse_image_manifest;
mod platform;
pub use platform::{Platform, choose_platform};
pub mod referrers;
mod retry;
mod token;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;

pub use auth::default_docker_config;
pub use oci_client::Reference;

use chunksnap_format::artifact::OCI_INDEX_MEDIA_TYPE;
use chunksnap_format::digest::Digest;

/// Docker schema 2 manifest list media type.
pub const DOCKER_LIST_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 image manifest media type.
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The `User-Agent` of every registry request.
const USER_AGENT: &str = concat!("chunksnap/", env!("CARGO_PKG_VERSION"));
/// Manifests larger than this are refused (the distribution spec suggests 4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// (host, repository) pairs whose last credential is remembered for change detection.
const MAX_USED_ENTRIES: usize = 4096;

/// Media types we accept when resolving a reference.
const ACCEPTED_MANIFESTS: &[&str] = &[
    chunksnap_format::artifact::OCI_MANIFEST_MEDIA_TYPE,
    OCI_INDEX_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    DOCKER_LIST_MEDIA_TYPE,
];

/// Registry client settings. Every field has a usable default.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Use plain HTTP for every registry (tests, local registries). Default: false.
    pub plain_http_all: bool,
    /// Hosts (`host[:port]`) reached over plain HTTP. Default: none.
    pub plain_http_hosts: Vec<String>,
    /// Hosts whose TLS certificates are not verified. Default: none.
    pub insecure_hosts: Vec<String>,
    /// docker `config.json` to read credentials from. Default: [`default_docker_config`];
    /// `None` means anonymous access only.
    pub docker_config: Option<PathBuf>,
    /// kubelet credential-provider plugins, asked for images the docker config has no
    /// credential for. Default: none.
    pub credential_providers: Option<Arc<credential_provider::CredentialProviders>>,
    /// TCP connect timeout. Default: 10 s.
    pub connect_timeout: Duration,
    /// Timeout between reads of a response. Default: 60 s.
    pub read_timeout: Duration,
    /// Retries after a transient failure. Default: 4.
    pub retries: u32,
    /// First backoff wait; doubles each retry. Default: 200 ms.
    pub backoff: Duration,
    /// Reads the client holds whole (manifests, referrers, tags, tokens, indexes, artifacts)
    /// must, after this grace period, average at least `min_rate`. Default: 20 s.
    pub slow_grace: Duration,
    /// Minimum average rate of such reads after `slow_grace`, bytes/s. Default: 64 KiB/s.
    pub min_rate: u64,
    /// How long looked-up credentials are used before the docker config (which a pull-secret
    /// watcher may rewrite) and credential helpers are asked again. Default: 60 s.
    pub credentials_ttl: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            plain_http_all: false,
            plain_http_hosts: Vec::new(),
            insecure_hosts: Vec::new(),
            docker_config: default_docker_config(),
            credential_providers: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            retries: 4,
            backoff: Duration::from_millis(200),
            credentials_ttl: Duration::from_secs(60),
            slow_grace: Duration::from_secs(20),
            min_rate: 64 << 10,
        }
    }
}

/// A manifest or index as fetched: raw bytes (verified against `digest`) and its media type.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// The exact bytes the registry served.
    pub bytes: Bytes,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// `mediaType` of the document (inferred from its shape when absent).
    pub media_type: String,
}

impl RawManifest {
    /// Whether this is an image index / manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX_MEDIA_TYPE || self.media_type == DOCKER_LIST_MEDIA_TYPE
    }
}

/// One platform's image manifest, resolved and parsed.
#[derive(Debug, Clone)]
pub struct PlatformManifest {
    /// `os/arch[/variant]`, when the index said so.
    pub platform: Option<String>,
    /// The manifest as fetched.
    pub raw: RawManifest,
    /// The parsed image manifest (config and layers).
    pub manifest: OciImageManifest,
}

/// The `oci-client` clients (verifying TLS, and not, for insecure hosts). Rebuilt when a
/// host's credentials change, since `oci-client` keeps the first credentials it sees.
struct Clients {
    secure: oci_client::Client,
    insecure: Option<oci_client::Client>,
}

/// One of [`Clients`], kept alive while an operation uses it.
pub(crate) struct ClientHandle {
    clients: Arc<Clients>,
    insecure: bool,
    /// The `Authorization` header of [`direct`] requests to a host that asks for credentials.
    authorization: Option<reqwest::header::HeaderValue>,
}

impl std::ops::Deref for ClientHandle {
    type Target = oci_client::Client;
    fn deref(&self) -> &oci_client::Client {
        match (&self.clients.insecure, self.insecure) {
            (Some(c), true) => c,
            _ => &self.clients.secure,
        }
    }
}

struct Inner {
    config: RegistryConfig,
    clients: std::sync::RwLock<Arc<Clients>>,
    /// Clients for hosts probed as open: no credentials are ever stored in them, so a host
    /// once served through `clients` (probed as challenging, or unreachable at the probe)
    /// does not bring the per-request probe back when it is open again.
    open_clients: Arc<Clients>,
    auth: Mutex<HashMap<String, (std::time::Instant, RegistryAuth)>>,
    /// The credential last used per (host, repository): a change reconnects.
    used: Mutex<HashMap<(String, String), RegistryAuth>>,
    direct: direct::Direct,
    tokens: token::Tokens,
}

fn build_clients(config: &RegistryConfig) -> Result<Clients, RegistryError> {
    let build = |accept_invalid| {
        let protocol = if config.plain_http_all {
            ClientProtocol::Http
        } else if config.plain_http_hosts.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(config.plain_http_hosts.clone())
        };
        oci_client::Client::try_from(ClientConfig {
            protocol,
            accept_invalid_certificates: accept_invalid,
            // We resolve indexes ourselves, per platform.
            platform_resolver: None,
            connect_timeout: Some(config.connect_timeout),
            read_timeout: Some(config.read_timeout),
            user_agent: USER_AGENT,
            ..Default::default()
        })
        .map_err(|e| RegistryError::Client(e.to_string()))
    };
    Ok(Clients {
        secure: build(false)?,
        insecure: if config.insecure_hosts.is_empty() {
            None
        } else {
            Some(build(true)?)
        },
    })
}

/// Registry access; clones share connections, tokens and the credential cache.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client with `config`. reqwest is built without a TLS crypto provider; if the process has
    /// not installed one, rustls' ring provider is installed (binaries do this first anyway).
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: some provider is then in place.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let clients = build_clients(&config)?;
        let open_clients = Arc::new(build_clients(&config)?);
        let direct = direct::Direct::new(&config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                clients: std::sync::RwLock::new(Arc::new(clients)),
                open_clients,
                auth: Mutex::new(HashMap::new()),
                used: Mutex::new(HashMap::new()),
                direct,
                tokens: token::Tokens::default(),
            }),
        })
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// Parses an image reference (`host/repo:tag`, `host/repo@sha256:…`).
    pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
        s.parse()
            .map_err(|_| RegistryError::InvalidReference(s.to_owned()))
    }

    /// The `oci-client` for `image`'s host with its credentials registered, unless the host asks
    /// for none (see [`direct`]). When the credential for the image's repository changed since
    /// its last use, fresh clients replace the old ones (operations in flight keep theirs).
    async fn prepare(
        &self,
        image: &Reference,
    ) -> Result<(ClientHandle, RegistryAuth), RegistryError> {
        let host = image.resolve_registry().to_owned();
        let auth = self.credentials_for(image).await?;
        let key = (host.clone(), image.repository().to_owned());
        let previous = self.inner.used.lock().ok().and_then(|mut m| {
            if m.len() >= MAX_USED_ENTRIES {
                // Only change detection is lost: a stale token is refused and dropped anyway.
                m.clear();
            }
            m.insert(key, auth.clone())
        });
        if previous.is_some_and(|old| old != auth) {
            tracing::info!(host = %host, "registry credentials changed; reconnecting");
            let fresh = Arc::new(build_clients(&self.inner.config)?);
            if let Ok(mut c) = self.inner.clients.write() {
                *c = fresh;
            }
            if let Ok(mut m) = self.inner.auth.lock() {
                m.clear();
            }
            if let Ok(mut m) = self.inner.used.lock() {
                m.retain(|(h, _), _| h != &host);
                m.insert((host.clone(), image.repository().to_owned()), auth.clone());
            }
            self.inner.tokens.forget(&host);
        }
        let config = &self.inner.config;
        let open = self
            .inner
            .direct
            .is_open(config, &host, config.credentials_ttl)
            .await;
        let clients = if open {
            self.inner.open_clients.clone()
        } else {
            self.inner
                .clients
                .read()
                .map(|c| c.clone())
                .map_err(|_| RegistryError::Client("client lock poisoned".into()))?
        };
        let mut handle = ClientHandle {
            insecure: config.insecure_hosts.contains(&host),
            clients,
            authorization: None,
        };
        if !open {
            handle.store_auth_if_needed(&host, &auth).await;
            if let Some(c) = self.credential(image, &auth).await? {
                // `oci-client` then uses it for blobs instead of asking the realm itself.
                handle
                    .tokens
                    .insert(image, oci_client::RegistryOperation::Pull, c.oci.clone())
                    .await;
                handle.authorization = Some(c.header);
            }
        }
        Ok((handle, auth))
    }

    /// The credential for `image`: the docker config's for its host (looked up again after
    /// `credentials_ttl`), else, if it has none, the credential providers' (cached by their
    /// own rules, so asking them on every request is cheap).
    async fn credentials_for(&self, image: &Reference) -> Result<RegistryAuth, RegistryError> {
        let host = image.resolve_registry().to_owned();
        let cached = self
            .inner
            .auth
            .lock()
            .ok()
            .and_then(|m| m.get(&host).cloned());
        let docker = match cached {
            Some((at, a)) if at.elapsed() < self.inner.config.credentials_ttl => a,
            _ => {
                let path = self.inner.config.docker_config.clone();
                let h = host.clone();
                // May spawn a credential helper: keep it off the async threads.
                let a = tokio::task::spawn_blocking(move || auth::lookup(path.as_deref(), &h))
                    .await
                    .map_err(|e| RegistryError::Task(e.to_string()))??;
                if let Ok(mut m) = self.inner.auth.lock() {
                    m.insert(host, (std::time::Instant::now(), a.clone()));
                }
                a
            }
        };
        if docker != RegistryAuth::Anonymous {
            return Ok(docker);
        }
        let Some(providers) = &self.inner.config.credential_providers else {
            return Ok(docker);
        };
        // What the kubelet sends: the image's repository with its registry, no tag or digest.
        let name = format!("{}/{}", image.registry(), image.repository());
        Ok(providers
            .lookup(&name)
            .await
            .unwrap_or(RegistryAuth::Anonymous))
    }

    /// The pull credential for `image` under the challenge its host answered the probe with
    /// (none known: the request goes out without one, and a refusal probes again).
    async fn credential(
        &self,
        image: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Option<token::Credential>, RegistryError> {
        let host = image.resolve_registry();
        let Some(challenge) = self.inner.direct.challenge(host) else {
            return Ok(None);
        };
        let http = self.inner.direct.http(&self.inner.config, host);
        let got = pace::within(
            &self.inner.config,
            "authenticate",
            host,
            self.retry("authenticate", host, || {
                self.inner.tokens.pull(http, image, auth, &challenge)
            }),
        )
        .await;
        self.forget_if_refused(image, got)?
    }

    async fn retry<T, F, Fut>(&self, op: &'static str, what: &str, f: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        retry::with_retry(
            op,
            what,
            self.inner.config.retries,
            self.inner.config.backoff,
            f,
        )
        .await
    }

    /// Passes `result` on; an authorization refusal from a host probed as open makes the next
    /// request probe it again (it may have started asking for credentials).
    fn forget_if_refused<T>(
        &self,
        image: &Reference,
        result: Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        if let Err(RegistryError::Auth { .. }) = &result {
            self.inner.direct.forget(image.resolve_registry());
            self.inner.tokens.forget(image.resolve_registry());
        }
        result
    }
}
