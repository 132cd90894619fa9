//! Registry credentials from kubelet credential-provider exec plugins (e.g.
//! `ecr-credential-provider`), configured with the kubelet's own `CredentialProviderConfig` file
//! and plugin directory, and run and cached as the kubelet does
//! (`pkg/credentialprovider/plugin/plugin.go`):
//!
//! - a provider is asked only for images its `matchImages` name ([`matching`]); the request's
//!   `image` is `host[:port]/repository`, as the kubelet sends it (no tag or digest);
//! - a response is cached under its `cacheKeyType` (the image, its registry host, or one global
//!   entry) for its `cacheDuration`; a missing duration means the provider's
//!   `defaultCacheDuration`, an explicit zero (or a zero default) means not cached. Lookups try
//!   the image's entry, then its registry's, then the global one; an expired entry makes the
//!   next lookup run the plugin again, which is how rotated credentials arrive;
//! - of the response's `auth` map, the most specific pattern naming the image wins (the kubelet's
//!   keyring order: patterns sorted in reverse), and username/password become HTTP basic
//!   credentials, which the registry client also uses for a bearer token exchange;
//! - one plugin run per provider at a time: concurrent lookups wait for it and then use its
//!   cached answer (the kubelet's singleflight, extended across images of one registry).
//!
//! A failing plugin (timeout, exit status, bad output: [`CredentialProviderError`]) is logged
//! without its output and yields no credential, as in the kubelet; the image then gets no
//! credential from that provider for [`FAILURE_BACKOFF`] without another run.

mod config;
mod exec;
pub mod matching;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;

use config::ProviderSpec;
use exec::{KeyType, Limits};

/// The kubelet's catch-all timeout of one plugin run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest plugin answer read (real ones are well under 64 KiB).
pub const MAX_OUTPUT: usize = 1 << 20;
/// Cache entries kept per provider before expired ones are dropped (and, if none expired, all).
const MAX_CACHE_ENTRIES: usize = 4096;
/// How long a failed run stands for the image: the registry client asks on every request of
/// a pull, which must not each wait for (or spawn) a failing plugin.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// Errors of loading the provider config or running a plugin. Messages name the file, plugin
/// and status, never a credential or the plugin's output.
#[derive(Debug, thiserror::Error)]
pub enum CredentialProviderError {
    /// The config file cannot be read.
    #[error("credential provider config {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a valid `CredentialProviderConfig` (or a plugin is missing).
    #[error("credential provider config {}: {detail}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The plugin could not be started, or its pipes failed.
    #[error("credential provider {plugin}: cannot run it: {source}")]
    Spawn {
        /// Provider name.
        plugin: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The plugin did not finish in time and was killed.
    #[error("credential provider {plugin}: no answer within {timeout:?}; killed")]
    Timeout {
        /// Provider name.
        plugin: String,
        /// The limit.
        timeout: Duration,
    },
    /// The plugin wrote more than the answer cap and was killed.
    #[error("credential provider {plugin}: answer larger than {limit} bytes; killed")]
    TooLarge {
        /// Provider name.
        plugin: String,
        /// The cap.
        limit: usize,
    },
    /// The plugin failed.
    #[error("credential provider {plugin}: {status}")]
    Exit {
        /// Provider name.
        plugin: String,
        /// Its exit status.
        status: String,
    },
    /// The plugin's answer is not a valid `CredentialProviderResponse`.
    #[error("credential provider {plugin}: {detail}")]
    Response {
        /// Provider name.
        plugin: String,
        /// What is wrong (never quoting the answer).
        detail: String,
    },
}

/// A response's credentials, patterns in the kubelet's lookup order (most specific first).
type Credentials = std::sync::Arc<Vec<(String, RegistryAuth)>>;

struct Entry {
    credentials: Credentials,
    expires: Instant,
}

struct Provider {
    spec: ProviderSpec,
    cache: Mutex<HashMap<String, Entry>>,
    /// Held while the plugin runs.
    running: tokio::sync::Mutex<()>,
}

/// The providers of one config file, each with its cache.
pub struct CredentialProviders {
    providers: Vec<Provider>,
    limits: Limits,
}

impl std::fmt::Debug for CredentialProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the caches hold credentials.
        f.debug_struct("CredentialProviders")
            .field("providers", &self.names())
            .field("timeout", &self.limits.timeout)
            .finish_non_exhaustive()
    }
}

impl CredentialProviders {
    /// Reads and validates the kubelet `CredentialProviderConfig` at `config` (YAML or JSON);
    /// plugins are `bin_dir/<name>` (the kubelet's `--image-credential-provider-bin-dir`).
    pub fn load(config: &Path, bin_dir: &Path) -> Result<Self, CredentialProviderError> {
        let providers = config::load(config, bin_dir)?
            .into_iter()
            .map(|spec| Provider {
                spec,
                cache: Mutex::new(HashMap::new()),
                running: tokio::sync::Mutex::new(()),
            })
            .collect();
        Ok(Self {
            providers,
            limits: Limits {
                timeout: DEFAULT_TIMEOUT,
                max_output: MAX_OUTPUT,
            },
        })
    }

    /// The same with another plugin timeout and answer cap.
    pub fn with_limits(mut self, timeout: Duration, max_output: usize) -> Self {
        self.limits = Limits {
            timeout,
            max_output,
        };
        self
    }

    /// The providers' names, in config order.
    pub fn names(&self) -> Vec<&str> {
        self.providers
            .iter()
            .map(|p| p.spec.name.as_str())
            .collect()
    }

    /// The credential for `image` (`host[:port]/repository`): the first provider, in config
    /// order, whose `matchImages` name the image and whose answer has a credential for it.
    /// `None` when none has one; plugin failures are logged and skipped.
    pub async fn lookup(&self, image: &str) -> Option<RegistryAuth> {
        for p in &self.providers {
            if !p.allows(image) {
                continue;
            }
            match p.provide(image, self.limits).await {
                Ok(Some(auth)) => return Some(auth),
                Ok(None) => {}
                Err(e) => tracing::warn!(image, error = %e, "credential provider failed"),
            }
        }
        None
    }

    /// [`lookup`](Self::lookup) of the first provider only, with its error.
    #[cfg(test)]
    async fn lookup_first(
        &self,
        image: &str,
    ) -> Result<Option<RegistryAuth>, CredentialProviderError> {
        match self.providers.first() {
            Some(p) if p.allows(image) => p.provide(image, self.limits).await,
            _ => Ok(None),
        }
    }
}

impl Provider {
    fn allows(&self, image: &str) -> bool {
        self.spec
            .match_images
            .iter()
            .any(|m| matching::matches(m, image).unwrap_or(false))
    }

    async fn provide(
        &self,
        image: &str,
        limits: Limits,
    ) -> Result<Option<RegistryAuth>, CredentialProviderError> {
        if let Some(c) = self.cached(image) {
            return Ok(select(&c, image));
        }
        let _running = self.running.lock().await;
        // Whoever ran the plugin while we waited may have cached what we need.
        if let Some(c) = self.cached(image) {
            return Ok(select(&c, image));
        }
        tracing::debug!(provider = %self.spec.name, image, "running credential provider");
        let response = match exec::run(&self.spec, image, limits).await {
            Ok(r) => r,
            Err(e) => {
                self.store(image_key(image), Credentials::default(), FAILURE_BACKOFF);
                return Err(e);
            }
        };
        let mut credentials = response.auth;
        // The kubelet's keyring order: reverse-sorted keys, so `host/team` precedes `host`.
        credentials.sort_by(|a, b| normalize(&b.0).cmp(normalize(&a.0)));
        let credentials: Credentials = std::sync::Arc::new(credentials);
        let ttl = response.cache_duration.unwrap_or(self.spec.default_cache);
        if !ttl.is_zero() {
            let key = match response.key_type {
                KeyType::Image => image_key(image),
                KeyType::Registry => registry_key(image),
                KeyType::Global => GLOBAL_KEY.to_owned(),
            };
            self.store(key, credentials.clone(), ttl);
        }
        Ok(select(&credentials, image))
    }

    /// The unexpired entry for `image`, its registry, or the global one (the kubelet's order).
    fn cached(&self, image: &str) -> Option<Credentials> {
        let mut cache = self.cache.lock().ok()?;
        let now = Instant::now();
        for key in [image_key(image), registry_key(image), GLOBAL_KEY.to_owned()] {
            match cache.get(&key) {
                Some(e) if e.expires > now => return Some(e.credentials.clone()),
                Some(_) => {
                    cache.remove(&key);
                }
                None => {}
            }
        }
        None
    }

    fn store(&self, key: String, credentials: Credentials, ttl: Duration) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= MAX_CACHE_ENTRIES {
            cache.retain(|_, e| e.expires > now);
            if cache.len() >= MAX_CACHE_ENTRIES {
                cache.clear();
            }
        }
        let expires = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(1 << 32));
        cache.insert(
            key,
            Entry {
                credentials,
                expires,
            },
        );
    }
}

const GLOBAL_KEY: &str = "global";

fn image_key(image: &str) -> String {
    format!("image:{image}")
}

fn registry_key(image: &str) -> String {
    format!("registry:{}", image.split('/').next().unwrap_or(image))
}

/// A response key as the kubelet's keyring indexes it: scheme and a trailing `/` dropped.
fn normalize(pattern: &str) -> &str {
    let p = pattern
        .strip_prefix("https://")
        .or_else(|| pattern.strip_prefix("http://"))
        .unwrap_or(pattern);
    p.strip_suffix('/').unwrap_or(p)
}

/// The first credential whose pattern names `image`; Docker Hub's legacy key
/// `index.docker.io/v1` serves Docker Hub images no other key names. Empty username and
/// password mean none.
fn select(credentials: &[(String, RegistryAuth)], image: &str) -> Option<RegistryAuth> {
    let hub = matches!(
        image.split('/').next(),
        Some("docker.io" | "index.docker.io" | "registry-1.docker.io")
    );
    let found = credentials
        .iter()
        .find(|(p, _)| matching::matches(normalize(p), image).unwrap_or(false))
        .or_else(|| {
            credentials
                .iter()
                .find(|(p, _)| hub && normalize(p) == "index.docker.io/v1")
        })
        .map(|(_, a)| a.clone());
    match found {
        Some(RegistryAuth::Basic(u, p)) if u.is_empty() && p.is_empty() => None,
        other => other,
    }
}

#[cfg(test)]
mod tests;
