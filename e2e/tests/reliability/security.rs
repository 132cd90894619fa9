//! Security checks: the gRPC socket is 0660 and root-owned; chunksnap reads packs from a
//! registry that requires credentials (HTTP basic, htpasswd) using a docker `config.json`,
//! and neither chunksnap's log nor containerd's ever shows the password.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::util::free_port;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{AuthConfig, ImageSpec, PullImageRequest};

use chunksnap_e2e::auth_registry::AuthRegistry;

use super::common::{FaultyNode, convert, unique_image};

const USER: &str = "e2e";
const PASSWORD: &str = "s3cret-pass";
/// bcrypt (cost 4) of [`PASSWORD`].
const HASH: &str = "$2b$04$sJaoBQKAqW6rpwv9pNMHEeWNV86WdXsw7nh1T234C5RGjbu0RDElq";

fn base64(s: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn base64")?;
    child
        .stdin
        .take()
        .context("base64 stdin")?
        .write_all(s.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "base64 failed");
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn socket_permissions_and_registry_credentials_stay_secret() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("chunksnap-e2e-auth-")
        .tempdir()?;
    let port = free_port()?;
    let auth_host = format!("127.0.0.1:{port}");
    let encoded = base64(&format!("{USER}:{PASSWORD}"))?;
    let docker_config = dir.path().join("docker-config.json");
    std::fs::write(
        &docker_config,
        serde_json::to_vec(
            &serde_json::json!({"auths": {auth_host.clone(): {"auth": encoded.clone()}}}),
        )?,
    )?;
    let config = format!("docker_config = \"{}\"\n", docker_config.display());
    let node = FaultyNode::start_opts(&config, None, std::slice::from_ref(&auth_host)).await?;

    let md = std::fs::metadata(node.chunksnap.socket())?;
    ensure!(
        md.permissions().mode() & 0o7777 == 0o660,
        "socket mode {:o}, want 660",
        md.permissions().mode() & 0o7777
    );
    ensure!(
        md.uid() == 0 && md.gid() == 0,
        "socket owned by {}:{}",
        md.uid(),
        md.gid()
    );

    // Push and convert through the open registry, then pull through the one that wants
    // credentials (same storage).
    let img = unique_image(&node.env, "auth", 1, 2, 300 << 10).await?;
    convert(&img.reference).await?;
    let _auth = AuthRegistry::start(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &node.env.registry.storage_dir(),
        USER,
        HASH,
    )
    .await?;
    let reference = img
        .reference
        .replacen(&node.env.registry.host(), &auth_host, 1);
    let mut images = ImageServiceClient::new(node.env.containerd.channel().await?);
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            auth: Some(AuthConfig {
                username: USER.into(),
                password: PASSWORD.into(),
                ..Default::default()
            }),
            sandbox_config: None,
        })
        .await
        .with_context(|| format!("CRI PullImage {reference} with credentials"))?;
    let (remote, fallback) = (
        node.prepares("remote").await?,
        node.prepares("fallback").await?,
    );
    eprintln!("authenticated registry: {remote} remote, {fallback} fallback prepares");
    ensure!(
        remote == 2.0 && fallback == 0.0,
        "chunksnap did not read the packs with the docker config credentials: {remote} remote, \
         {fallback} fallback; log {}",
        node.chunksnap.log_path().display()
    );

    let logs = [
        ("chunksnap", node.chunksnap.log_path()),
        ("containerd", node.env.containerd.log_path()),
    ];
    for (name, path) in logs {
        let text = std::fs::read_to_string(&path)?;
        ensure!(!text.is_empty(), "{name} log is empty");
        for secret in [PASSWORD, encoded.as_str()] {
            ensure!(
                !text.contains(secret),
                "{name} log {} shows a credential",
                path.display()
            );
        }
    }
    Ok(())
}
