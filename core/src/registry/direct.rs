//! Requests to registries that ask for no authentication ("open" hosts), without `oci-client`'s
//! per-request probe.
//!
//! `oci-client` caches bearer tokens but not the answer "this registry needs none": once a
//! host's credentials are stored in it (which every manifest pull does), every later request is
//! preceded by `GET /v2/`, doubling the round trips of a node's prepare on a plain distribution
//! registry. Here each host is probed once (per credentials TTL): a `200` to `GET /v2/` without
//! a `WWW-Authenticate` challenge marks it open. For open hosts the client never stores
//! credentials in `oci-client` (so its blob and referrers requests go out without a probe) and
//! the two calls that would store them, manifest GETs and tag listing, are made here. Any other
//! answer, or a failed probe, keeps the host on `oci-client`'s own authentication path (open
//! hosts use separate `oci-client` clients, so a host's past on that path never brings the probe
//! back).
//!
//! Hosts that ask for credentials get the same requests with an `Authorization` header (see
//! [`super::token`]): every manifest, referrers and tag answer is read here, chunk by chunk,
//! under a size cap, which `oci-client` (reading answers whole) cannot do.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use oci_client::errors::OciDistributionError;

use reqwest::header::HeaderValue;

use super::http::{answer, authorized, fetch, scheme, send};
use super::token::Challenge;
use super::{Reference, RegistryConfig, RegistryError};

/// Plain `reqwest` clients configured like the `oci-client` ones, and the probe results.
pub(super) struct Direct {
    secure: reqwest::Client,
    insecure: reqwest::Client,
    /// host → (when probed, open?, the challenge it answered with).
    probed: Mutex<HashMap<String, Probe>>,
}

#[derive(Clone)]
struct Probe {
    at: Instant,
    open: bool,
    challenge: Option<Challenge>,
}

impl Direct {
    pub(super) fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let build = |accept_invalid| {
            reqwest::Client::builder()
                .danger_accept_invalid_certs(accept_invalid)
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.read_timeout)
                .user_agent(super::USER_AGENT)
                .build()
                .map_err(|e| RegistryError::Client(e.to_string()))
        };
        Ok(Self {
            secure: build(false)?,
            insecure: build(true)?,
            probed: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn http(&self, config: &RegistryConfig, host: &str) -> &reqwest::Client {
        if config.insecure_hosts.iter().any(|h| h == host) {
            &self.insecure
        } else {
            &self.secure
        }
    }

    /// Whether `host` asks for no authentication, probing it when the last answer is older
    /// than `ttl`.
    pub(super) async fn is_open(&self, config: &RegistryConfig, host: &str, ttl: Duration) -> bool {
        let cached = self.probed.lock().ok().and_then(|m| m.get(host).cloned());
        if let Some(p) = cached
            && p.at.elapsed() < ttl
        {
            return p.open;
        }
        let url = format!("{}://{host}/v2/", scheme(config, host));
        // Only the status and headers are looked at; the body is never read.
        let (open, challenge) = match self.http(config, host).get(&url).send().await {
            Ok(resp) => {
                let header = resp.headers().get(reqwest::header::WWW_AUTHENTICATE);
                (
                    resp.status() == reqwest::StatusCode::OK && header.is_none(),
                    header.and_then(Challenge::parse),
                )
            }
            Err(e) => {
                // Not remembered: the next request probes again. Meanwhile the host is treated
                // as one that may need credentials (at worst one probe per request, as before).
                tracing::debug!(host, error = %e, "registry probe failed");
                return false;
            }
        };
        tracing::debug!(host, open, "registry probed");
        if let Ok(mut m) = self.probed.lock() {
            let at = Instant::now();
            m.insert(
                host.to_owned(),
                Probe {
                    at,
                    open,
                    challenge,
                },
            );
        }
        open
    }

    /// How `host` asked for credentials at its last probe, if it did in a scheme we speak.
    pub(super) fn challenge(&self, host: &str) -> Option<Challenge> {
        self.probed
            .lock()
            .ok()
            .and_then(|m| m.get(host).and_then(|p| p.challenge.clone()))
    }

    /// Forgets what `host` answered (it refused a request), so the next request probes again.
    pub(super) fn forget(&self, host: &str) {
        if let Ok(mut m) = self.probed.lock() {
            m.remove(host);
        }
    }

    /// `GET` of the manifest `image` names, accepting `accept`, reading at most `max` bytes.
    pub(super) async fn manifest(
        &self,
        config: &RegistryConfig,
        image: &Reference,
        accept: &[&str],
        max: usize,
        auth: Option<&HeaderValue>,
    ) -> Result<Bytes, OciDistributionError> {
        let host = image.resolve_registry();
        let reference = image.digest().or(image.tag()).unwrap_or("latest");
        let url = format!(
            "{}://{host}/v2/{}/manifests/{reference}",
            scheme(config, host),
            image.repository()
        );
        let req = self
            .http(config, host)
            .get(&url)
            .header(reqwest::header::ACCEPT, accept.join(", "));
        send(authorized(req, auth), &url, max).await
    }

    /// The OCI referrers API answer for the manifest `image` names by digest (`GET
    /// /v2/<name>/referrers/<digest>`), read under `max` bytes; `None` when the registry has no
    /// such API (404).
    pub(super) async fn referrers(
        &self,
        config: &RegistryConfig,
        image: &Reference,
        artifact_type: Option<&str>,
        max: usize,
        auth: Option<&HeaderValue>,
    ) -> Result<Option<Bytes>, OciDistributionError> {
        let host = image.resolve_registry();
        let digest = image.digest().ok_or_else(|| {
            OciDistributionError::GenericError(Some("referrers of a tag".to_owned()))
        })?;
        let url = format!(
            "{}://{host}/v2/{}/referrers/{digest}",
            scheme(config, host),
            image.repository()
        );
        let mut req = self.http(config, host).get(&url).header(
            reqwest::header::ACCEPT,
            chunksnap_format::artifact::OCI_INDEX_MEDIA_TYPE,
        );
        if let Some(t) = artifact_type {
            req = req.query(&[("artifactType", t)]);
        }
        let (status, body) = fetch(authorized(req, auth), max).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        answer(status, body, &url).map(Some)
    }

    /// One page of `image`'s repository tags: up to `n` after `last`.
    pub(super) async fn tags_page(
        &self,
        config: &RegistryConfig,
        image: &Reference,
        n: usize,
        last: Option<&str>,
        auth: Option<&HeaderValue>,
    ) -> Result<Vec<String>, OciDistributionError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let host = image.resolve_registry();
        let url = format!(
            "{}://{host}/v2/{}/tags/list",
            scheme(config, host),
            image.repository()
        );
        let mut query = vec![("n", n.to_string())];
        if let Some(last) = last {
            query.push(("last", last.to_owned()));
        }
        let req = self.http(config, host).get(&url).query(&query);
        let body = send(authorized(req, auth), &url, super::MAX_MANIFEST_SIZE).await?;
        if body.len() > super::MAX_MANIFEST_SIZE {
            return Err(OciDistributionError::GenericError(Some(format!(
                "tag list larger than {} bytes",
                super::MAX_MANIFEST_SIZE
            ))));
        }
        let list: TagList = serde_json::from_slice(&body)
            .map_err(|e| OciDistributionError::GenericError(Some(format!("tag list: {e}"))))?;
        Ok(list.tags.unwrap_or_default())
    }
}
