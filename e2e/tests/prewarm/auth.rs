//! A pre-warm from a registry that wants credentials: the daemon passes those of its docker
//! config to containerd as the CRI `AuthConfig` (containerd has none of its own), and neither
//! log shows them.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::util::{Poller, free_port, http_get_status};

use super::{PrewarmNode, app_images};

const USER: &str = "e2e";
const PASSWORD: &str = "s3cret-pass";
/// bcrypt (cost 4) of [`PASSWORD`].
const HASH: &str = "$2b$04$sJaoBQKAqW6rpwv9pNMHEeWNV86WdXsw7nh1T234C5RGjbu0RDElq";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarm_passes_the_daemons_credentials_to_cri() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("chunksnap-e2e-prewarm-auth-")
        .tempdir()?;
    let auth_host = format!("127.0.0.1:{}", free_port()?);
    let docker_config = dir.path().join("docker-config.json");
    std::fs::write(
        &docker_config,
        serde_json::json!({ "auths": { &auth_host: { "username": USER, "password": PASSWORD } } })
            .to_string(),
    )?;
    let node = PrewarmNode::start_with(
        std::slice::from_ref(&auth_host),
        &format!("docker_config = {docker_config:?}\n"),
    )
    .await?;
    let (v1, v2, _) = app_images(&node.env.images, "prewarm-auth").await?;
    // `app_images` converted v1 and v2 through the open registry; the authenticated one
    // serves the same storage.
    let _auth =
        AuthRegistry::start(dir.path(), &auth_host, &node.env.registry.storage_dir()).await?;
    let on_auth = |r: &str| r.replacen(&node.env.registry.host(), &auth_host, 1);
    let cri = node.env.containerd.cri().await?;

    // containerd alone cannot pull from it.
    ensure!(
        cri.pull_image(&on_auth(&v1.reference)).await.is_err(),
        "the authenticated registry let containerd pull without credentials"
    );
    let out = node
        .chunksnap
        .node_command(&["prefetch", "--pull", &on_auth(&v2.reference)])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("Prewarmed prewarm-auth:v2:"),
        "prefetch --pull through the authenticated registry: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tags = cri.list_image_tags().await?;
    ensure!(
        tags.contains(&on_auth(&v2.reference)),
        "CRI ListImages lacks v2: {tags:?}"
    );
    ensure!(node.prewarms("pulled").await? == 1.0, "pulled not counted");
    for (name, path) in [
        ("chunksnap", node.chunksnap.log_path()),
        ("containerd", node.env.containerd.log_path()),
    ] {
        let text = std::fs::read_to_string(&path)?;
        ensure!(
            !text.contains(PASSWORD),
            "{name} log {} shows the password",
            path.display()
        );
    }
    Ok(())
}

/// A second docker-registry serving the node registry's storage, behind htpasswd auth.
struct AuthRegistry(Child);

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl AuthRegistry {
    async fn start(dir: &std::path::Path, host: &str, storage: &std::path::Path) -> Result<Self> {
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{USER}:{HASH}\n"))?;
        let config = dir.join("auth-registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: e2e\n    path: {}\n",
                storage.display(),
                htpasswd.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("auth-registry.log"))?;
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn docker-registry")?;
        let registry = Self(child);
        let url = format!("http://{host}/v2/");
        let mut poll = Poller::new("auth registry GET /v2/", Duration::from_secs(30));
        // 401: up, and asking for credentials.
        while http_get_status(&url).await.ok() != Some(401) {
            poll.tick().await?;
        }
        Ok(registry)
    }
}
