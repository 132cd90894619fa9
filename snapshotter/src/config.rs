//! The daemon's configuration file (`/etc/chunksnap/config.toml`, TOML).
//!
//! Every key is optional; the default of each is stated beside it (and in `docs/config.md`).
//! Unknown keys are an error, so a typo never silently falls back to a default. A missing
//! default file is fine (all defaults); a missing file named with `--config` is an error.
//! Command-line flags override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/chunksnap/config.toml";

/// Errors of loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("credential_provider_config and credential_provider_bin_dir must be set together")]
    CredentialProviderPair,
    #[error(transparent)]
    CredentialProviders(
        #[from] chunksnap_core::registry::credential_provider::CredentialProviderError,
    ),
}

/// The configuration; `Default` gives every documented default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// State root: `metadata.redb`, `snapshots/`, `chunks/`. Default `/var/lib/chunksnap`.
    pub root: PathBuf,
    /// gRPC unix socket containerd connects to. Default `/run/chunksnap/chunksnap.sock`.
    pub address: PathBuf,
    /// `/metrics` and `/healthz` listen address. Default `127.0.0.1:9883`.
    pub metrics_address: SocketAddr,
    /// Registry hosts (`host[:port]`) reached over plain HTTP. Default none.
    pub plain_http: Vec<String>,
    /// Registry hosts whose TLS certificates are not verified. Default none (always verify).
    pub insecure: Vec<String>,
    /// Registry mirrors: `host = ["mirror-host", …]`, tried in order before the host for
    /// artifacts, indexes and packs. Default none.
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// docker `config.json` with registry credentials (`auths`, `credHelpers`, `credsStore`).
    /// Default: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` if present.
    pub docker_config: Option<PathBuf>,
    /// Longest wait for the registry between two reads of a response (a stalled connection
    /// fails after this and is retried). Default 60.
    pub registry_timeout_seconds: u64,
    /// Range requests in flight per layer fetch. Default 8.
    pub fetch_parallelism: usize,
    /// Chunks closer than this in a pack are fetched in one Range request. Default 32 KiB.
    pub fetch_max_gap_bytes: u64,
    /// Largest single Range request. Default 4 MiB.
    pub fetch_max_request_bytes: u64,
    /// Every Range request may take this long, plus its size at `fetch_min_rate_bytes`; a
    /// slower answer fails the fetch (the layer falls back). Default 20.
    pub fetch_request_floor_seconds: u64,
    /// Slowest registry transfer rate tolerated beyond the floor, bytes/s. Default 64 KiB.
    pub fetch_min_rate_bytes: u64,
    /// Log filter (`error`…`trace`, or a `tracing` env-filter directive). Default `info`.
    pub log_level: String,
    /// Size budget of the chunk store in bytes; least recently used chunks are evicted
    /// beyond it. Default 10 GiB.
    pub store_budget_bytes: u64,
    /// Registry hosts (`host[:port]`, or `*` for all) whose remotely assembled layers are
    /// committed WITHOUT checking that they are the image's own layers (diffID). Whoever can
    /// push a chunksnap artifact next to a copy of an image can then change its files on this
    /// node. Default none (every layer is verified).
    pub insecure_skip_layer_verification: Vec<String>,
    /// kubelet `CredentialProviderConfig` file (the kubelet's `--image-credential-provider-config`):
    /// exec plugins asked for credentials the docker config lacks. Default none.
    pub credential_provider_config: Option<PathBuf>,
    /// Directory of the plugins it names (the kubelet's `--image-credential-provider-bin-dir`);
    /// required with `credential_provider_config`. Default none.
    pub credential_provider_bin_dir: Option<PathBuf>,
    /// containerd's socket, whose CRI ImageService pre-warms pull through. Default
    /// `/run/containerd/containerd.sock`.
    pub cri_address: PathBuf,
    /// The pre-warm API socket. Default `prewarm.sock` beside `address`.
    pub prewarm_address: Option<PathBuf>,
    /// Pre-warm pulls running at once on this node. Default 1.
    pub prewarm_concurrency: usize,
    /// Pre-warm requests waiting beyond those running; more are refused. Default 32.
    pub prewarm_queue: usize,
    /// Registry bytes one rollout's pre-warms may fetch on this node. Default 2 GiB.
    pub prewarm_rollout_budget_bytes: u64,
    /// Each pre-warm first waits a random time below this, in milliseconds. Default 5000.
    pub prewarm_jitter_ms: u64,
    /// Pre-warm images without a chunksnap artifact too (whole layers). Default false.
    pub prewarm_allow_full: bool,
    /// Longest one pre-warm pull may take, in seconds. Default 900.
    pub prewarm_timeout_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/chunksnap"),
            address: PathBuf::from("/run/chunksnap/chunksnap.sock"),
            metrics_address: SocketAddr::from(([127, 0, 0, 1], 9883)),
            plain_http: Vec::new(),
            insecure: Vec::new(),
            mirrors: Default::default(),
            docker_config: None,
            registry_timeout_seconds: 60,
            fetch_parallelism: 8,
            fetch_max_gap_bytes: 32 << 10,
            fetch_max_request_bytes: 4 << 20,
            fetch_request_floor_seconds: 20,
            fetch_min_rate_bytes: 64 << 10,
            log_level: "info".to_owned(),
            store_budget_bytes: 10 << 30,
            insecure_skip_layer_verification: Vec::new(),
            credential_provider_config: None,
            credential_provider_bin_dir: None,
            cri_address: PathBuf::from("/run/containerd/containerd.sock"),
            prewarm_address: None,
            prewarm_concurrency: 1,
            prewarm_queue: 32,
            prewarm_rollout_budget_bytes: 2 << 30,
            prewarm_jitter_ms: 5000,
            prewarm_allow_full: false,
            prewarm_timeout_seconds: 900,
        }
    }
}

impl Config {
    /// Parses TOML text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Registry client settings from this config; loads and validates the credential
    /// provider config, if any.
    pub fn registry(&self) -> Result<chunksnap_core::registry::RegistryConfig, ConfigError> {
        let mut r = chunksnap_core::registry::RegistryConfig {
            plain_http_hosts: self.plain_http.clone(),
            insecure_hosts: self.insecure.clone(),
            read_timeout: std::time::Duration::from_secs(self.registry_timeout_seconds.max(1)),
            ..Default::default()
        };
        if self.docker_config.is_some() {
            r.docker_config = self.docker_config.clone();
        }
        r.credential_providers = self.credential_providers()?;
        Ok(r)
    }

    fn credential_providers(
        &self,
    ) -> Result<
        Option<std::sync::Arc<chunksnap_core::registry::credential_provider::CredentialProviders>>,
        ConfigError,
    > {
        use chunksnap_core::registry::credential_provider::CredentialProviders;
        match (
            &self.credential_provider_config,
            &self.credential_provider_bin_dir,
        ) {
            (None, None) => Ok(None),
            (Some(config), Some(bin_dir)) => {
                let providers = CredentialProviders::load(config, bin_dir)?;
                tracing::info!(providers = ?providers.names(), "kubelet credential providers loaded");
                Ok(Some(std::sync::Arc::new(providers)))
            }
            _ => Err(ConfigError::CredentialProviderPair),
        }
    }

    /// Fetch tuning from this config.
    pub fn fetch(&self) -> chunksnap_core::fetch::FetchOptions {
        chunksnap_core::fetch::FetchOptions {
            max_gap: self.fetch_max_gap_bytes,
            max_request: self.fetch_max_request_bytes.max(1 << 20),
            parallelism: self.fetch_parallelism.max(1),
            request_floor: std::time::Duration::from_secs(self.fetch_request_floor_seconds),
            min_rate: self.fetch_min_rate_bytes.max(1),
            ..Default::default()
        }
    }

    /// The directory the chunk store is opened on: the state root (the store keeps its
    /// chunks in `<root>/chunks/`).
    pub fn chunks_dir(&self) -> PathBuf {
        self.root.clone()
    }

    /// The pre-warm API socket: `prewarm_address`, else `prewarm.sock` beside `address`.
    pub fn prewarm_socket(&self) -> PathBuf {
        self.prewarm_address.clone().unwrap_or_else(|| {
            self.address
                .parent()
                .unwrap_or_else(|| Path::new("/"))
                .join("prewarm.sock")
        })
    }

    /// The daemon's pre-warm limits.
    pub fn prewarm(&self) -> crate::prewarm::service::PrewarmOptions {
        crate::prewarm::service::PrewarmOptions {
            concurrency: self.prewarm_concurrency.max(1),
            queue: self.prewarm_queue,
            rollout_budget_bytes: self.prewarm_rollout_budget_bytes,
            jitter: std::time::Duration::from_millis(self.prewarm_jitter_ms),
            allow_full: self.prewarm_allow_full,
            timeout: std::time::Duration::from_secs(self.prewarm_timeout_seconds.max(1)),
        }
    }

    /// Where layer indexes are kept for seeding (`<root>/indexes`).
    pub fn index_dir(&self) -> PathBuf {
        self.root.join("indexes")
    }

    /// Loads `explicit` (must exist) or else [`DEFAULT_CONFIG_PATH`] (may be missing).
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match explicit {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_partial_and_unknown_keys() {
        let p = Path::new("t.toml");
        assert_eq!(Config::parse("", p).unwrap(), Config::default());
        let c = Config::parse(
            "root = \"/r\"\nplain_http = [\"127.0.0.1:5000\"]\nstore_budget_bytes = 5\n",
            p,
        )
        .unwrap();
        assert_eq!(c.root, Path::new("/r"));
        assert_eq!(c.plain_http, ["127.0.0.1:5000"]);
        assert_eq!(c.store_budget_bytes, 5);
        assert_eq!(c.address, Config::default().address);
        assert!(Config::parse("roots = \"/r\"", p).is_err());
        assert!(Config::parse("metrics_address = \"nope\"", p).is_err());
    }

    #[test]
    fn credential_provider_keys() {
        let p = Path::new("t.toml");
        let dir = tempfile::tempdir().unwrap();
        let only = format!(
            "credential_provider_config = \"{}\"",
            dir.path().join("c.yaml").display()
        );
        let c = Config::parse(&only, p).unwrap();
        assert!(matches!(
            c.registry(),
            Err(ConfigError::CredentialProviderPair)
        ));
        let both = format!(
            "{only}\ncredential_provider_bin_dir = \"{}\"",
            dir.path().display()
        );
        // Both set, the file missing: the daemon must not start.
        assert!(matches!(
            Config::parse(&both, p).unwrap().registry(),
            Err(ConfigError::CredentialProviders(_))
        ));
        assert!(
            Config::default()
                .registry()
                .unwrap()
                .credential_providers
                .is_none()
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "log_level = \"debug\"").unwrap();
        assert_eq!(Config::load(Some(&f)).unwrap().log_level, "debug");
    }

    #[test]
    fn prewarm_keys_and_socket() {
        let p = Path::new("t.toml");
        let c = Config::parse("address = \"/run/x/cs.sock\"\n", p).unwrap();
        assert_eq!(c.prewarm_socket(), Path::new("/run/x/prewarm.sock"));
        let c = Config::parse(
            "prewarm_address = \"/p.sock\"\nprewarm_concurrency = 0\nprewarm_jitter_ms = 250\n\
             prewarm_rollout_budget_bytes = 7\nprewarm_allow_full = true\n",
            p,
        )
        .unwrap();
        assert_eq!(c.prewarm_socket(), Path::new("/p.sock"));
        let o = c.prewarm();
        assert_eq!(o.concurrency, 1, "at least one pull at a time");
        assert_eq!(o.jitter, std::time::Duration::from_millis(250));
        assert_eq!(o.rollout_budget_bytes, 7);
        assert!(o.allow_full);
    }

    #[test]
    fn the_documented_example_is_the_defaults() {
        let doc = include_str!("../../docs/config.md");
        let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
        let end = start + doc[start..].find("```").unwrap();
        let example = Config::parse(&doc[start..end], Path::new("docs/config.md")).unwrap();
        assert_eq!(example, Config::default());
    }
}
