//! Test images built from real content and pushed to a test [`Registry`]:
//! - `debian:v1`: a debootstrap `minbase` bookworm rootfs, one layer;
//! - `debian:v2`: the same after `apt-get upgrade` from bookworm-security, one layer;
//! - `features:v1`: two crafted layers with every tar feature, whiteouts and an opaque dir;
//! - `pause:v1`: a static sleeper used as CRI's sandbox image.
//!
//! Slow inputs (rootfs tarballs, gzip layers, the pause binary) are cached under
//! `target/e2e-cache/`, keyed by a hash of the recipe (script source), and built under an
//! exclusive file lock so parallel tests and processes build each at most once. Deleting the cache
//! is always safe.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::Registry;
use crate::oci::{BuiltImage, ImageSpec, LayerBlob, gzip_layer, push_image};

const DEBIAN_SCRIPT: &str = include_str!("../images/debian.sh");
const PAUSE_SOURCE: &str = include_str!("../images/pause.c");

/// Builds and pushes the test images to one registry.
#[derive(Debug, Clone)]
pub struct TestImages {
    upstream: String,
    public_host: String,
    cache: PathBuf,
}

/// `target/e2e-cache` of this workspace (or `$CHUNKSNAP_E2E_CACHE`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CHUNKSNAP_E2E_CACHE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-cache"),
        PathBuf::from,
    )
}

fn recipe_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..12].to_owned()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

impl TestImages {
    pub fn new(registry: &Registry) -> Result<Self> {
        let cache = cache_dir();
        std::fs::create_dir_all(cache.join("tmp"))?;
        Ok(Self {
            upstream: registry.upstream().to_string(),
            public_host: registry.host(),
            cache,
        })
    }

    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// Runs `build(tmp_out)` unless `name` is cached; returns the cached path.
    fn cached(&self, name: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let out = self.cache.join(name);
        let lock = File::create(self.cache.join(format!("{name}.lock")))?;
        let _lock = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .context("lock e2e cache")?;
        if !out.exists() {
            let tmp = self.cache.join(format!("{name}.partial"));
            let _ = std::fs::remove_file(&tmp);
            build(&tmp).with_context(|| format!("build {name}"))?;
            std::fs::rename(&tmp, &out)?;
        }
        Ok(out)
    }

    /// gzip layer of a cached tar, itself cached next to it.
    fn cached_layer(&self, tar: &Path) -> Result<LayerBlob> {
        let name = tar
            .file_name()
            .and_then(|n| n.to_str())
            .context("tar name")?;
        let gz = format!("{name}.gz");
        let mut blob = None;
        let path = self.cached(&gz, |tmp| {
            blob = Some(gzip_layer(tar, tmp)?);
            Ok(())
        })?;
        match blob {
            Some(mut b) => {
                b.path = path;
                Ok(b)
            }
            None => layer_of_gz(tar, &path),
        }
    }

    fn push(
        &self,
        repository: &str,
        tag: &str,
        layers: Vec<LayerBlob>,
        spec: &ImageSpec,
    ) -> Result<BuiltImage> {
        let layout = tempfile::Builder::new()
            .prefix("layout.")
            .tempdir_in(self.cache.join("tmp"))?;
        push_image(
            layout.path(),
            &self.upstream,
            &self.public_host,
            repository,
            tag,
            layers,
            spec,
        )
    }

    fn debian_tar(&self, version: &str) -> Result<PathBuf> {
        let key = recipe_key(&[DEBIAN_SCRIPT, version]);
        let name = format!("debian-{version}-{key}.tar");
        match version {
            "v1" => self.cached(&name, |tmp| run_script(&["v1".as_ref(), tmp.as_os_str()])),
            "v2" => {
                let v1 = self.debian_tar("v1")?;
                self.cached(&name, |tmp| {
                    run_script(&["v2".as_ref(), v1.as_os_str(), tmp.as_os_str()])
                })
            }
            other => bail!("no debian recipe {other}"),
        }
    }

    /// `debian:v1`: debootstrap minbase bookworm, one layer.
    pub async fn debian_v1(&self) -> Result<BuiltImage> {
        self.debian("v1").await
    }

    /// `debian:v2`: v1 + bookworm-security upgrades (at the 2025-05-20 snapshot: perl-base,
    /// liblzma5, libapt-pkg6.0, apt, libpcre2-8-0 and more), one layer.
    pub async fn debian_v2(&self) -> Result<BuiltImage> {
        self.debian("v2").await
    }

    async fn debian(&self, version: &'static str) -> Result<BuiltImage> {
        let this = self.clone();
        blocking(move || {
            let tar = this.debian_tar(version)?;
            let layer = this.cached_layer(&tar)?;
            this.push(
                "debian",
                version,
                vec![layer],
                &ImageSpec {
                    cmd: vec!["bash".into()],
                    env: vec![
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    ],
                    ..Default::default()
                },
            )
        })
        .await
    }

    /// `features:v1`: see [`crate::features`].
    pub async fn features(&self) -> Result<BuiltImage> {
        let this = self.clone();
        blocking(move || {
            let key = recipe_key(&[include_str!("features.rs")]);
            let mut layers = Vec::new();
            for (i, build) in [crate::features::layer1, crate::features::layer2]
                .into_iter()
                .enumerate()
            {
                let tar = this.cached(&format!("features-{}-{key}.tar", i + 1), |tmp| {
                    std::fs::write(tmp, build()?)?;
                    Ok(())
                })?;
                layers.push(this.cached_layer(&tar)?);
            }
            this.push("features", "v1", layers, &ImageSpec::default())
        })
        .await
    }

    /// Pushes an image made of the given uncompressed layer tars (bottom first) as
    /// `repository:tag`; layers are gzipped into the cache, keyed by their content.
    pub async fn push_tars(
        &self,
        repository: &str,
        tag: &str,
        tars: Vec<Vec<u8>>,
        spec: ImageSpec,
    ) -> Result<BuiltImage> {
        let this = self.clone();
        let (repository, tag) = (repository.to_owned(), tag.to_owned());
        blocking(move || {
            let mut layers = Vec::new();
            for tar in tars {
                let key = hex::encode(Sha256::digest(&tar));
                let path = this.cached(&format!("custom-{key}.tar"), |tmp| {
                    std::fs::write(tmp, &tar)?;
                    Ok(())
                })?;
                layers.push(this.cached_layer(&path)?);
            }
            this.push(&repository, &tag, layers, &spec)
        })
        .await
    }

    /// `pause:v1`: a static binary that sleeps until SIGTERM; CRI's sandbox image.
    pub async fn pause(&self) -> Result<BuiltImage> {
        let this = self.clone();
        blocking(move || {
            let key = recipe_key(&[PAUSE_SOURCE]);
            let tar = this.cached(&format!("pause-{key}.tar"), |tmp| {
                let dir = tempfile::tempdir_in(this.cache.join("tmp"))?;
                let src = dir.path().join("pause.c");
                std::fs::write(&src, PAUSE_SOURCE)?;
                let bin = dir.path().join("pause");
                let out = Command::new("cc")
                    .args(["-static", "-Os", "-o"])
                    .arg(&bin)
                    .arg(&src)
                    .output()
                    .context("run cc")?;
                if !out.status.success() {
                    bail!("cc pause.c: {}", String::from_utf8_lossy(&out.stderr));
                }
                let mut b = tar::Builder::new(File::create(tmp)?);
                let mut h = tar::Header::new_ustar();
                h.set_mode(0o755);
                h.set_mtime(1_700_000_000);
                h.set_size(std::fs::metadata(&bin)?.len());
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, "pause", File::open(&bin)?)?;
                b.into_inner()?.sync_all()?;
                Ok(())
            })?;
            let layer = this.cached_layer(&tar)?;
            this.push(
                "pause",
                "v1",
                vec![layer],
                &ImageSpec {
                    entrypoint: vec!["/pause".into()],
                    ..Default::default()
                },
            )
        })
        .await
    }
}

fn run_script(args: &[&std::ffi::OsStr]) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/debian.sh");
    let out = Command::new("sh")
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        bail!(
            "{} {args:?} failed: {}\n{tail}",
            script.display(),
            out.status
        );
    }
    Ok(())
}

/// Digests of an existing cached gzip layer (and the diff id of its tar).
fn layer_of_gz(tar: &Path, gz: &Path) -> Result<LayerBlob> {
    Ok(LayerBlob {
        path: gz.to_owned(),
        digest: sha256_file(gz)?,
        size: std::fs::metadata(gz)?.len(),
        diff_id: sha256_file(tar)?,
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}
