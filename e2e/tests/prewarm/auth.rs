//! A pre-warm from a registry that wants credentials: the daemon passes those of its docker
//! config to containerd as the CRI `AuthConfig` (containerd has none of its own), and neither
//! log shows them.

use anyhow::{Result, ensure};
use chunksnap_e2e::util::free_port;

use chunksnap_e2e::auth_registry::AuthRegistry;

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
    let _auth = AuthRegistry::start(
        dir.path(),
        &auth_host,
        &node.env.registry.storage_dir(),
        USER,
        HASH,
    )
    .await?;
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
