//! Credentials from a kubelet credential-provider exec plugin only: a docker-registry behind
//! htpasswd (HTTP basic) serves converted images; chunksnap has no docker config and asks a
//! provider script (which records its requests and answers with a response file the test
//! rewrites). Checked: remote assembly with the provider's credential, one plugin run for
//! every request within its cache duration, a rotated password (registry restarted with a new
//! htpasswd) refused while the cached credential lives (the layers fall back to containerd's
//! own pull, which has the new password) and picked up once the cache expires, and no
//! password in either daemon's log.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::auth_registry::AuthRegistry;
use chunksnap_e2e::util::free_port;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{AuthConfig, ImageSpec, PullImageRequest};

use super::common::{FaultyNode, convert, unique_image};

const USER: &str = "e2e";
const PASSWORD_1: &str = "s3cret-pass";
/// bcrypt (cost 4) of [`PASSWORD_1`].
const HASH_1: &str = "$2b$04$sJaoBQKAqW6rpwv9pNMHEeWNV86WdXsw7nh1T234C5RGjbu0RDElq";
const PASSWORD_2: &str = "r0tated-pass";
/// bcrypt (cost 4) of [`PASSWORD_2`].
const HASH_2: &str = "$2b$04$XHrAqJ785h8ggU1EG79iv.eh0UFdfaYyO6dCqgzV6mYw/Uk/OgX2S";
/// The provider's `cacheDuration`: long enough to cover two pulls on a loaded machine.
const CACHE_SECONDS: u64 = 60;

/// The provider's files: the plugin directory, its config, the response it answers with.
struct Provider {
    dir: std::path::PathBuf,
}

impl Provider {
    fn create(dir: &Path, host: &str) -> Result<Self> {
        let bin = dir.join("plugins");
        std::fs::create_dir_all(&bin)?;
        let script = bin.join("test-credential-provider");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat > {d}/last-request.json\necho call >> {d}/calls\ncat {d}/response.json\n",
                d = dir.display()
            ),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(
            dir.join("credential-providers.yaml"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n\
                 - name: test-credential-provider\n  matchImages:\n  - \"{host}\"\n  \
                 defaultCacheDuration: 10m\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
            ),
        )?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn answer(&self, host: &str, password: &str) -> Result<()> {
        let response = serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderResponse",
            "cacheKeyType": "Registry",
            "cacheDuration": format!("{CACHE_SECONDS}s"),
            "auth": { host: { "username": USER, "password": password } },
        });
        // Temp + rename: the plugin may run at any time.
        let tmp = self.dir.join("response.json.tmp");
        std::fs::write(&tmp, response.to_string())?;
        std::fs::rename(tmp, self.dir.join("response.json"))?;
        Ok(())
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.dir.join("calls"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// The chunksnap config naming the provider and no docker config.
    fn daemon_config(&self) -> String {
        format!(
            "docker_config = \"{}\"\ncredential_provider_config = \"{}\"\n\
             credential_provider_bin_dir = \"{}\"\n",
            self.dir.join("no-docker-config.json").display(),
            self.dir.join("credential-providers.yaml").display(),
            self.dir.join("plugins").display()
        )
    }
}

/// A CRI pull of `reference` with containerd's own credentials.
async fn pull(node: &FaultyNode, reference: &str, password: &str) -> Result<()> {
    let mut images = ImageServiceClient::new(node.env.containerd.channel().await?);
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.to_owned(),
                ..Default::default()
            }),
            auth: Some(AuthConfig {
                username: USER.into(),
                password: password.into(),
                ..Default::default()
            }),
            sandbox_config: None,
        })
        .await
        .with_context(|| format!("CRI PullImage {reference} with credentials"))?;
    Ok(())
}

async fn counts(node: &FaultyNode) -> Result<(f64, f64)> {
    Ok((
        node.prepares("remote").await?,
        node.prepares("fallback").await?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_from_a_kubelet_credential_provider_with_expiry_and_rotation() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("chunksnap-e2e-credprov-")
        .tempdir()?;
    let auth_host = format!("127.0.0.1:{}", free_port()?);
    let provider = Provider::create(dir.path(), &auth_host)?;
    provider.answer(&auth_host, PASSWORD_1)?;
    let node = FaultyNode::start_opts(
        &provider.daemon_config(),
        None,
        std::slice::from_ref(&auth_host),
    )
    .await?;

    // Three images, pushed and converted through the open registry, pulled through the one
    // that wants credentials (same storage).
    let mut refs = Vec::new();
    for (seed, name) in [(11, "cred-a"), (12, "cred-b"), (13, "cred-c")] {
        let img = unique_image(&node.env, name, seed, 2, 300 << 10).await?;
        convert(&img.reference).await?;
        refs.push(
            img.reference
                .replacen(&node.env.registry.host(), &auth_host, 1),
        );
    }
    let storage = node.env.registry.storage_dir();
    let registry = AuthRegistry::start(dir.path(), &auth_host, &storage, USER, HASH_1).await?;
    let log_hint = || format!("log {}", node.chunksnap.log_path().display());

    // 1. The provider's credential: both layers assembled remotely, one plugin run for all
    //    of the pull's registry requests.
    let first_call = Instant::now();
    pull(&node, &refs[0], PASSWORD_1).await?;
    // The plugin ran between `first_call` and now, so its answer expires in between too.
    let first_done = Instant::now();
    let (remote, fallback) = counts(&node).await?;
    eprintln!("provider credential: {remote} remote, {fallback} fallback prepares");
    ensure!(
        remote == 2.0 && fallback == 0.0,
        "the provider's credential was not used: {remote} remote, {fallback} fallback; {}",
        log_hint()
    );
    ensure!(provider.calls() == 1, "{} plugin runs", provider.calls());
    let request: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("last-request.json"))?)?;
    let repository = refs[0]
        .rsplit_once(':')
        .map(|(r, _)| r.to_owned())
        .context("reference without tag")?;
    ensure!(
        request
            == serde_json::json!({
                "kind": "CredentialProviderRequest",
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "image": repository,
            }),
        "unexpected request {request}"
    );

    // 2. Rotation: the registry now wants another password and the provider answers with it,
    //    but chunksnap's cached credential lives on: refused, the layers fall back to
    //    containerd's pull (which has the new password) and the pull still succeeds.
    drop(registry);
    let _registry = AuthRegistry::start(dir.path(), &auth_host, &storage, USER, HASH_2).await?;
    provider.answer(&auth_host, PASSWORD_2)?;
    pull(&node, &refs[1], PASSWORD_2).await?;
    let (remote, fallback) = counts(&node).await?;
    eprintln!("stale cached credential: {remote} remote, {fallback} fallback prepares");
    ensure!(
        first_call.elapsed() < Duration::from_secs(CACHE_SECONDS),
        "the first two pulls outlasted the provider's cache duration; the check below would not \
         test a stale credential"
    );
    ensure!(
        remote == 2.0 && fallback == 2.0,
        "a refused credential did not fall back: {remote} remote, {fallback} fallback; {}",
        log_hint()
    );
    ensure!(
        provider.calls() == 1,
        "{} plugin runs within the cache duration",
        provider.calls()
    );

    // 3. Expiry (what is under test here is the passing of time): the next pull asks the
    //    provider again and is assembled remotely with the rotated password.
    tokio::time::sleep_until((first_done + Duration::from_secs(CACHE_SECONDS + 1)).into()).await;
    pull(&node, &refs[2], PASSWORD_2).await?;
    let (remote, fallback) = counts(&node).await?;
    eprintln!("after expiry: {remote} remote, {fallback} fallback prepares");
    ensure!(
        provider.calls() == 2,
        "{} plugin runs after the cache expired",
        provider.calls()
    );
    ensure!(
        remote == 4.0 && fallback == 2.0,
        "the rotated credential was not used: {remote} remote, {fallback} fallback; {}",
        log_hint()
    );

    let logs = [
        ("chunksnap", node.chunksnap.log_path()),
        ("containerd", node.env.containerd.log_path()),
    ];
    for (name, path) in logs {
        let text = std::fs::read_to_string(&path)?;
        for secret in [PASSWORD_1, PASSWORD_2] {
            ensure!(
                !text.contains(secret),
                "{name} log {} shows a password",
                path.display()
            );
        }
    }
    Ok(())
}
