//! Registry credentials from Kubernetes pull secrets.
//!
//! This module owns the in-memory credential map built from `kubernetes.io/dockerconfigjson`
//! Secrets ([`PullSecrets`], host → [`Credential`]) and, in [`watch`], keeping it current with
//! a `kube` watcher and exporting it as a docker `config.json` for the host daemon.
//! Secret values never reach a log line or a `Debug` string.
//!
//! ```
//! use chunksnap::kube::k8s_secrets::PullSecrets;
//! let secrets = PullSecrets::default();
//! assert!(secrets.credentials_for("registry.example.com").is_none());
//! ```

pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

pub use watch::{SyncOptions, run, run_with_default_client};

/// Secret type holding a docker `config.json`.
pub const DOCKERCONFIGJSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// Key of the docker `config.json` in such a Secret's data.
pub const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

/// Errors of the pull-secret watcher.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("watching pull secrets: {0}")]
    Watch(#[from] kube::runtime::watcher::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A username and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Shared, cheaply cloned map of registry credentials from pull secrets.
///
/// Secrets are kept per `namespace/name`. When several match a host, the operator's
/// namespaces ([`PullSecrets::with_priority`]) rank first, in the order given, then by name;
/// the answer never depends on event order. Secrets of other namespaces (all-namespaces mode)
/// only count when they agree: a host whose credentials differ between two of them gets none
/// from them, so one tenant cannot choose the credentials the node uses for another's host.
#[derive(Clone, Default)]
pub struct PullSecrets {
    inner: Arc<RwLock<State>>,
}

#[derive(Default)]
struct State {
    /// `(namespace, name)` → the secret's registries.
    secrets: BTreeMap<(String, String), Vec<(HostPattern, Credential)>>,
    /// The operator's namespaces, highest precedence first.
    priority: Vec<String>,
}

impl State {
    /// Where secrets of `namespace` rank: their position in `priority`, else after them all.
    fn rank(&self, namespace: &str) -> usize {
        self.priority
            .iter()
            .position(|p| p == namespace)
            .unwrap_or(usize::MAX)
    }

    /// The credential for the entries `matching` selects, by the precedence above.
    fn resolve(&self, mut matching: impl FnMut(&HostPattern) -> bool) -> Option<&Credential> {
        let mut best: Option<(usize, &Credential)> = None;
        let mut conflict = false;
        for ((namespace, _), entries) in &self.secrets {
            let rank = self.rank(namespace);
            for (pattern, credential) in entries {
                if !matching(pattern) {
                    continue;
                }
                match best {
                    Some((r, _)) if r < rank => {}
                    Some((r, c)) if r == rank => {
                        conflict |= r == usize::MAX && c != credential;
                    }
                    _ => {
                        best = Some((rank, credential));
                        conflict = false;
                    }
                }
            }
        }
        match best {
            Some((usize::MAX, _)) if conflict => None,
            other => other.map(|(_, c)| c),
        }
    }
}

impl fmt::Debug for PullSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullSecrets")
            .field("hosts", &self.hosts())
            .finish()
    }
}

impl PullSecrets {
    /// An empty map whose secrets from `namespaces` take precedence, in this order, over those
    /// of any other namespace.
    pub fn with_priority(namespaces: Vec<String>) -> Self {
        let secrets = Self::default();
        secrets.write().priority = namespaces;
        secrets
    }

    /// Credentials for a registry `host[:port]` (`docker.io` and its aliases are one host).
    pub fn credentials_for(&self, host: &str) -> Option<Credential> {
        let (host, port) = split_port(&normalize_host(host));
        let state = self.read();
        state
            .resolve(|pattern| pattern.matches(&host, port.as_deref()))
            .cloned()
    }

    /// The registries credentials are known for (no secret values), sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .read()
            .secrets
            .values()
            .flatten()
            .map(|(pattern, _)| pattern.to_string())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// Number of secrets currently held.
    pub fn len(&self) -> usize {
        self.read().secrets.len()
    }

    /// Whether no secret is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces one Secret. Returns false (and holds nothing for it) when it is not a
    /// usable dockerconfigjson Secret.
    pub fn apply(&self, secret: &Secret) -> bool {
        let Some(key) = secret_key(secret) else {
            return false;
        };
        match parse_secret(secret) {
            Some(entries) => {
                self.write().secrets.insert(key, entries);
                true
            }
            None => {
                self.write().secrets.remove(&key);
                false
            }
        }
    }

    /// Forgets one Secret.
    pub fn delete(&self, secret: &Secret) {
        if let Some(key) = secret_key(secret) {
            self.write().secrets.remove(&key);
        }
    }

    /// Replaces the Secrets a watch scope covers (a namespace or all when `None`, one name or
    /// all when `None`) with `secrets`, as after a fresh list.
    pub fn replace_scope(&self, namespace: Option<&str>, name: Option<&str>, secrets: &[Secret]) {
        let fresh: Vec<_> = secrets
            .iter()
            .filter_map(|s| Some((secret_key(s)?, parse_secret(s)?)))
            .collect();
        let mut state = self.write();
        state.secrets.retain(|(ns, n), _| {
            let in_scope =
                namespace.is_none_or(|want| want == ns) && name.is_none_or(|want| want == n);
            !in_scope
        });
        state.secrets.extend(fresh);
    }

    /// The credentials as a docker `config.json` (`{"auths": {host: {"auth": …}}}`), one per
    /// host pattern by the precedence of [`Self::credentials_for`]. Holds secrets: write it 0600.
    pub fn to_docker_config_json(&self) -> String {
        let state = self.read();
        let patterns: std::collections::BTreeSet<&HostPattern> =
            state.secrets.values().flatten().map(|(p, _)| p).collect();
        let mut auths: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for pattern in patterns {
            if let Some(credential) = state.resolve(|p| p == pattern) {
                let auth =
                    BASE64.encode(format!("{}:{}", credential.username, credential.password));
                auths.insert(pattern.to_string(), serde_json::json!({ "auth": auth }));
            }
        }
        serde_json::json!({ "auths": auths }).to_string()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves whole entries only; keep serving them.
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn secret_key(secret: &Secret) -> Option<(String, String)> {
    Some((
        secret.metadata.namespace.clone().unwrap_or_default(),
        secret.metadata.name.clone()?,
    ))
}

/// Credentials of a dockerconfigjson Secret; `None` for other types or unreadable data
/// (logged by name only).
fn parse_secret(secret: &Secret) -> Option<Vec<(HostPattern, Credential)>> {
    if secret.type_.as_deref() != Some(DOCKERCONFIGJSON_TYPE) {
        return None;
    }
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
    let data = secret.data.as_ref()?.get(DOCKERCONFIGJSON_KEY)?;
    match parse_docker_config(&data.0) {
        Ok(entries) => Some(entries),
        Err(reason) => {
            tracing::warn!(%namespace, secret = %name, %reason, "ignoring unreadable pull secret");
            None
        }
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
}

/// Parses a docker `config.json`. Entries without a username and password (e.g. only an
/// `identitytoken`) are skipped. Error messages never quote the input.
fn parse_docker_config(json: &[u8]) -> Result<Vec<(HostPattern, Credential)>, &'static str> {
    let config: DockerConfig =
        serde_json::from_slice(json).map_err(|_| "not a docker config.json")?;
    let mut entries: Vec<(HostPattern, Credential)> = config
        .auths
        .into_iter()
        .filter_map(|(registry, entry)| {
            let credential = match (entry.username, entry.password, entry.auth) {
                (Some(username), Some(password), _) if !username.is_empty() => {
                    Credential { username, password }
                }
                (_, _, Some(auth)) => {
                    let decoded = String::from_utf8(BASE64.decode(auth.trim()).ok()?).ok()?;
                    let (username, password) = decoded.split_once(':')?;
                    Credential {
                        username: username.to_owned(),
                        password: password.to_owned(),
                    }
                }
                _ => return None,
            };
            Some((HostPattern::parse(&registry)?, credential))
        })
        .collect();
    // The JSON map has no order; keep the result deterministic.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// A registry key of a docker config: `host[:port]`, optionally `*.`-prefixed (one label),
/// as the kubelet matches them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HostPattern {
    host: String,
    port: Option<String>,
}

impl HostPattern {
    fn parse(key: &str) -> Option<Self> {
        let normalized = normalize_host(key);
        if normalized.is_empty() {
            return None;
        }
        let (host, port) = split_port(&normalized);
        Some(HostPattern { host, port })
    }

    fn matches(&self, host: &str, port: Option<&str>) -> bool {
        if self.port.as_deref() != port {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(domain) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
            None => self.host == host,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; drops scheme and path, lowercases.
fn normalize_host(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

fn split_port(host: &str) -> (String, Option<String>) {
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (name.to_owned(), Some(port.to_owned()))
        }
        _ => (host.to_owned(), None),
    }
}

#[cfg(test)]
mod tests;
