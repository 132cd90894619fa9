//! Turning layer tars into an OCI image and pushing it: gzip like docker (no name, mtime 0),
//! digests and diff ids, an OCI layout directory, then `skopeo copy --preserve-digests` to the
//! registry. Blocking code: call from `spawn_blocking`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

/// A pushed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// `HOST/repo:tag`, pullable through the registry proxy.
    pub reference: String,
    pub repository: String,
    pub tag: String,
    /// `sha256:...` of the image manifest.
    pub manifest_digest: String,
    pub config_digest: String,
    /// Compressed layer blobs, bottom first.
    pub layers: Vec<LayerBlob>,
}

impl BuiltImage {
    /// `HOST/repo@sha256:...`.
    pub fn digest_reference(&self) -> String {
        let host = self.reference.split('/').next().unwrap_or_default();
        format!("{host}/{}@{}", self.repository, self.manifest_digest)
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

/// One gzip layer blob on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    pub path: PathBuf,
    /// `sha256:` of the compressed blob.
    pub digest: String,
    pub size: u64,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn digest_of(hash: Sha256) -> String {
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// Gzips `tar` into `out` (default level, no name, mtime 0: reproducible) and returns the blob.
pub fn gzip_layer(tar: &Path, out: &Path) -> Result<LayerBlob> {
    let tmp = out.with_extension("tmp");
    let mut input = BufReader::new(File::open(tar).with_context(|| format!("open {tar:?}"))?);
    let file = BufWriter::new(File::create(&tmp)?);
    let hashing = HashingWriter {
        inner: file,
        hash: Sha256::new(),
        len: 0,
    };
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(hashing, flate2::Compression::default());
    let mut diff = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        diff.update(&buf[..n]);
        gz.write_all(&buf[..n])?;
    }
    let mut hashing = gz.finish()?;
    hashing.flush()?;
    let blob = LayerBlob {
        path: out.to_owned(),
        digest: digest_of(hashing.hash),
        size: hashing.len,
        diff_id: digest_of(diff),
    };
    drop(hashing.inner);
    std::fs::rename(&tmp, out)?;
    Ok(blob)
}

/// Image config fields beyond the layers.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

/// Writes an OCI layout for `layers` under `layout` and pushes it to `upstream/repo:tag` with
/// skopeo over plain HTTP. `public_host` is the host the returned reference uses.
pub fn push_image(
    layout: &Path,
    upstream: &str,
    public_host: &str,
    repository: &str,
    tag: &str,
    layers: Vec<LayerBlob>,
    spec: &ImageSpec,
) -> Result<BuiltImage> {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let put = |bytes: &[u8]| -> Result<(String, u64)> {
        let d = digest_of(Sha256::new_with_prefix(bytes));
        std::fs::write(blobs.join(&d[7..]), bytes)?;
        Ok((d, bytes.len() as u64))
    };
    for l in &layers {
        let dst = blobs.join(&l.digest[7..]);
        if !dst.exists() {
            std::fs::hard_link(&l.path, &dst)
                .or_else(|_| std::fs::copy(&l.path, &dst).map(|_| ()))
                .with_context(|| format!("link {:?} into layout", l.path))?;
        }
    }
    let mut container = json!({});
    if !spec.entrypoint.is_empty() {
        container["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.cmd.is_empty() {
        container["Cmd"] = json!(spec.cmd);
    }
    if !spec.env.is_empty() {
        container["Env"] = json!(spec.env);
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2025-05-20T00:00:00Z",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| json!({"created": "2025-05-20T00:00:00Z", "created_by": "chunksnap-e2e"})).collect::<Vec<_>>(),
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{upstream}/{repository}:{tag}"))
        .output()
        .context("run skopeo")?;
    if !out.status.success() {
        bail!(
            "skopeo copy to {upstream}/{repository}:{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(BuiltImage {
        reference: format!("{public_host}/{repository}:{tag}"),
        repository: repository.into(),
        tag: tag.into(),
        manifest_digest,
        config_digest,
        layers,
    })
}
