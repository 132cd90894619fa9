//! Benchmark cases: each is a directory `bench/cases/<name>/` whose `recipe.sh OUT` writes the
//! layer tars of `v1` and `v2` (see `docs/benchmarks.md` for the contract). This module runs the
//! recipes and pushes the images they describe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use crate::TestImages;
use crate::images::cache_dir;
use crate::oci::{BuiltImage, ImageSpec, LayerBlob, gzip_layer, push_image};

/// What the runs of a case measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Pull v2 onto a node that already has v1.
    Update,
    /// Pull v2 onto an empty node.
    Cold,
}

/// A case, its recipe run.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub mode: Mode,
    /// The file the container reads to prove it runs.
    pub read: String,
    /// Uncompressed layer tars, bottom first.
    pub v1: Vec<PathBuf>,
    pub v2: Vec<PathBuf>,
}

impl Case {
    /// Bytes of uncompressed layer data of a version.
    pub fn tar_bytes(layers: &[PathBuf]) -> Result<u64> {
        layers
            .iter()
            .map(|p| {
                Ok(std::fs::metadata(p)
                    .with_context(|| format!("{p:?}"))?
                    .len())
            })
            .sum()
    }

    /// v2 layers that v1 does not have (by path: recipes reuse the same tar for a kept layer).
    pub fn changed_layers(&self) -> Vec<(Option<&PathBuf>, &PathBuf)> {
        self.v2
            .iter()
            .enumerate()
            .filter(|(_, l)| !self.v1.contains(l))
            .map(|(i, l)| (self.v1.get(i).filter(|b| !self.v2.contains(b)), l))
            .collect()
    }
}

/// The harness's debian layer tars (building them if needed): the `.gz` the harness pushed,
/// minus the suffix.
pub async fn debian_tars(images: &TestImages) -> Result<(PathBuf, PathBuf)> {
    let tar_of = |img: &BuiltImage| -> Result<PathBuf> {
        let gz = &img
            .layers
            .first()
            .context("debian image without layers")?
            .path;
        let tar = gz.with_extension("");
        ensure!(tar.is_file(), "no cached tar next to {}", gz.display());
        Ok(tar)
    };
    let v1 = images.debian_v1().await?;
    let v2 = images.debian_v2().await?;
    Ok((tar_of(&v1)?, tar_of(&v2)?))
}

/// Runs `cases_dir/<name>/recipe.sh` into `work/<name>` and reads what it wrote.
pub fn load(
    cases_dir: &Path,
    name: &str,
    work: &Path,
    debian: &(PathBuf, PathBuf),
) -> Result<Case> {
    let recipe = cases_dir.join(name).join("recipe.sh");
    ensure!(recipe.is_file(), "no recipe {}", recipe.display());
    let out = work.join(name);
    std::fs::create_dir_all(&out)?;
    let status = Command::new("bash")
        .arg(&recipe)
        .arg(&out)
        .env("BENCH_CACHE", cache_dir().join("bench"))
        .env("BENCH_DEBIAN_V1_TAR", &debian.0)
        .env("BENCH_DEBIAN_V2_TAR", &debian.1)
        .status()
        .with_context(|| format!("running {}", recipe.display()))?;
    ensure!(status.success(), "{} failed: {status}", recipe.display());
    let lines = |file: &str| -> Result<Vec<String>> {
        let p = out.join(file);
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("{name}: reading {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    };
    let tars = |file: &str| -> Result<Vec<PathBuf>> {
        let v: Vec<PathBuf> = lines(file)?.into_iter().map(PathBuf::from).collect();
        ensure!(!v.is_empty(), "{name}: {file} lists no layers");
        for t in &v {
            ensure!(t.is_file(), "{name}: layer tar {} missing", t.display());
        }
        Ok(v)
    };
    let mode = match lines("mode")
        .ok()
        .and_then(|l| l.into_iter().next())
        .as_deref()
    {
        None | Some("update") => Mode::Update,
        Some("cold") => Mode::Cold,
        Some(other) => bail!("{name}: unknown mode {other:?}"),
    };
    let read = lines("read")
        .ok()
        .and_then(|l| l.into_iter().next())
        .unwrap_or_else(|| "/etc/os-release".into());
    Ok(Case {
        name: name.to_owned(),
        mode,
        read,
        v1: tars("v1.layers")?,
        v2: tars("v2.layers")?,
    })
}

/// Gzip blobs of layer tars, made once per process (`<tar>.gz` next to the tar, as the harness
/// caches them).
#[derive(Debug, Default)]
pub struct Blobs(Mutex<HashMap<PathBuf, LayerBlob>>);

impl Blobs {
    fn blob(&self, tar: &Path) -> Result<LayerBlob> {
        if let Some(b) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(tar) {
            return Ok(b.clone());
        }
        let gz = PathBuf::from(format!("{}.gz", tar.display()));
        // A cached gz may be reused only if it is newer than its tar.
        let fresh = match (std::fs::metadata(&gz), std::fs::metadata(tar)) {
            (Ok(g), Ok(t)) => g.modified()? >= t.modified()?,
            _ => false,
        };
        let blob = if fresh {
            LayerBlob {
                path: gz.clone(),
                digest: sha256_file(&gz)?,
                size: std::fs::metadata(&gz)?.len(),
                diff_id: sha256_file(tar)?,
            }
        } else {
            gzip_layer(tar, &gz)?
        };
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tar.to_owned(), blob.clone());
        Ok(blob)
    }

    /// Pushes `tars` as `repository:tag` straight to the registry's `upstream` (not counted);
    /// the image's reference uses `host` (the counting proxy).
    pub fn push_to(
        &self,
        upstream: SocketAddr,
        host: &str,
        repository: &str,
        tag: &str,
        tars: &[PathBuf],
    ) -> Result<BuiltImage> {
        let layers = tars
            .iter()
            .map(|t| self.blob(t))
            .collect::<Result<Vec<_>>>()?;
        let tmp = cache_dir().join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let layout = tempfile::Builder::new()
            .prefix("bench-layout.")
            .tempdir_in(tmp)?;
        push_image(
            layout.path(),
            &upstream.to_string(),
            host,
            repository,
            tag,
            layers,
            &ImageSpec {
                cmd: vec!["bash".into()],
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                ..Default::default()
            },
        )
    }

    /// The gzip blobs of `tars` (bottom first).
    pub fn blobs(&self, tars: &[PathBuf]) -> Result<Vec<LayerBlob>> {
        tars.iter().map(|t| self.blob(t)).collect()
    }
}

/// `sha256:<hex>` of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{Case, Mode};

    fn case(v1: &[&str], v2: &[&str]) -> Case {
        Case {
            name: "t".into(),
            mode: Mode::Update,
            read: "/etc/os-release".into(),
            v1: v1.iter().map(PathBuf::from).collect(),
            v2: v2.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn changed_layers_pair_with_the_replaced_layer() {
        let c = case(&["base", "app1"], &["base", "app2"]);
        let changed = c.changed_layers();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0, Some(&PathBuf::from("app1")));
        assert_eq!(changed[0].1, &PathBuf::from("app2"));
        // A new layer on top has no base to patch from.
        let c = case(&["base"], &["base", "extra"]);
        assert_eq!(c.changed_layers(), vec![(None, &PathBuf::from("extra"))]);
        // Nothing changed.
        assert!(case(&["a"], &["a"]).changed_layers().is_empty());
    }
}
