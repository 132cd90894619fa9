//! Measurements that shell out to tools: `chunkconv convert|extract`, `casync make`, `zstd`,
//! GNU `tar`, `du`, each timed (wall clock) with peak RSS from `/usr/bin/time`. Blocking code:
//! call from `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::chunksnap::bin_dir;

/// One timed command.
#[derive(Debug, Clone)]
pub struct Timed {
    pub seconds: f64,
    /// Peak resident set size in bytes (`/usr/bin/time` `%M`).
    pub max_rss: u64,
    pub stdout: Vec<u8>,
}

/// Runs `prog args` under `/usr/bin/time`, fails on a non-zero exit.
pub fn timed(prog: &Path, args: &[&str]) -> Result<Timed> {
    let rss_file = tempfile::NamedTempFile::new()?;
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file.path())
        .arg(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {}", prog.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{} {} failed ({}): {}",
        prog.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let kb: u64 = std::fs::read_to_string(rss_file.path())?
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("parsing /usr/bin/time output")?;
    Ok(Timed {
        seconds,
        max_rss: kb * 1024,
        stdout: out.stdout,
    })
}

/// A `chunkconv convert` run.
#[derive(Debug, Clone)]
pub struct ConvertRun {
    pub seconds: f64,
    pub max_rss: u64,
    pub bytes_pushed: u64,
    pub new_chunks: u64,
    pub chunks: u64,
}

/// `chunkconv convert --plain-http --json [--chunk-avg AVG] REF`.
pub fn convert(reference: &str, chunk_avg: Option<u64>) -> Result<ConvertRun> {
    let avg = chunk_avg.map(|a| a.to_string());
    let mut args = vec!["convert", "--plain-http", "--json"];
    if let Some(a) = &avg {
        args.extend(["--chunk-avg", a]);
    }
    args.push(reference);
    let t = timed(&bin_dir()?.join("chunkconv"), &args)?;
    let v: Value = serde_json::from_slice(&t.stdout).context("chunkconv --json output")?;
    let total = |k: &str| v["totals"][k].as_u64().unwrap_or(0);
    Ok(ConvertRun {
        seconds: t.seconds,
        max_rss: t.max_rss,
        bytes_pushed: total("bytes_pushed"),
        new_chunks: total("new_chunks"),
        chunks: total("chunks"),
    })
}

/// `chunkconv extract --plain-http --store STORE REF DIR`: seconds and the chunk bytes it fetched.
/// `chunkconv extract --json`: (process seconds, bytes fetched, seconds inside the assembler).
pub fn extract(reference: &str, store: &Path, dir: &Path) -> Result<(f64, u64, f64)> {
    let store = store.to_string_lossy();
    let dir = dir.to_string_lossy();
    let t = timed(
        &bin_dir()?.join("chunkconv"),
        &[
            "extract",
            "--plain-http",
            "--json",
            "--store",
            &store,
            reference,
            &dir,
        ],
    )?;
    let v: Value = serde_json::from_slice(&t.stdout).context("chunkconv extract --json")?;
    let layers = v["layers"].as_array().cloned().unwrap_or_default();
    let fetched = layers
        .iter()
        .filter_map(|l| l["fetched_bytes"].as_u64())
        .sum();
    let assembling = layers
        .iter()
        .filter_map(|l| l["assemble_seconds"].as_f64())
        .sum();
    Ok((t.seconds, fetched, assembling))
}

/// GNU tar applying gzip layers in order into `dir` (what containerd's applier does).
pub fn tar_extract(gz_layers: &[PathBuf], dir: &Path) -> Result<f64> {
    let mut total = 0.0;
    for gz in gz_layers {
        let t = timed(
            Path::new("/usr/bin/tar"),
            &["-xzpf", &gz.to_string_lossy(), "-C", &dir.to_string_lossy()],
        )?;
        total += t.seconds;
    }
    Ok(total)
}

/// `casync make --store=STORE INDEX TAR` with casync's defaults; seconds.
pub fn casync_make(store: &Path, index: &Path, tar: &Path) -> Result<Timed> {
    timed(
        Path::new("/usr/bin/casync"),
        &[
            "make",
            &format!("--store={}", store.display()),
            &index.to_string_lossy(),
            &tar.to_string_lossy(),
        ],
    )
}

/// Bytes of the files under `dir` (apparent sizes): a casync store's chunk bytes.
pub fn file_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// `du -s --block-size=1 DIR` (disk blocks used, hardlinks once); 0 if `dir` is missing.
pub fn du(dir: &Path) -> Result<u64> {
    if !dir.exists() {
        return Ok(0);
    }
    let out = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(dir)
        .output()
        .context("running du")?;
    // du may complain about files vanishing under it; its total is still printed.
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| {
            format!(
                "du {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Size of `zstd -19 --long=W [--patch-from=BASE] NEW`: the floor for shipping NEW to a node
/// that has BASE. The window W (27, or more for large inputs, up to 31) spans BASE and NEW, as
/// `--patch-from` needs to reach back over the whole reference.
pub fn zstd_size(base: Option<&Path>, new: &Path, out: &Path) -> Result<u64> {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let span = base.map_or(0, size) + size(new);
    let window = (u64::BITS - span.leading_zeros()).clamp(27, 31);
    let mut cmd = Command::new("zstd");
    cmd.args(["-q", "-f", "-19", &format!("--long={window}")]);
    if window > 27 {
        cmd.arg("--memory=2048MiB");
    }
    if let Some(b) = base {
        cmd.arg(format!("--patch-from={}", b.display()));
    }
    let o = cmd
        .arg(new)
        .arg("-o")
        .arg(out)
        .output()
        .context("running zstd")?;
    ensure!(
        o.status.success(),
        "zstd: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let n = std::fs::metadata(out)?.len();
    let _ = std::fs::remove_file(out);
    Ok(n)
}

/// `chunkconv inspect --json REF`: the tar-split bytes of the index of each layer in `layers`.
pub fn inspect_tar_split_bytes(reference: &str, layers: &[String]) -> Result<u64> {
    let t = timed(
        &bin_dir()?.join("chunkconv"),
        &["inspect", "--plain-http", "--json", reference],
    )?;
    let v: Value = serde_json::from_slice(&t.stdout).context("chunkconv inspect --json")?;
    let manifests = v.as_array().context("inspect: not a list")?;
    Ok(manifests
        .iter()
        .flat_map(|m| m["layers"].as_array().cloned().unwrap_or_default())
        .filter(|l| layers.iter().any(|d| l["digest"].as_str() == Some(d)))
        .filter_map(|l| l["tar_split_bytes"].as_u64())
        .sum())
}

/// `chunkconv extract --tar REF DIR` (fresh store): the tars it wrote, bottom layer first.
pub fn extract_tars(reference: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let store = dir.join("store");
    let out = dir.join("tars");
    std::fs::create_dir_all(&out)?;
    timed(
        &bin_dir()?.join("chunkconv"),
        &[
            "extract",
            "--plain-http",
            "--tar",
            "--store",
            &store.to_string_lossy(),
            reference,
            &out.to_string_lossy(),
        ],
    )?;
    let mut tars: Vec<PathBuf> = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    // `NN-<diffID>.tar`: NN is the layer's position.
    tars.sort();
    Ok(tars)
}

/// Whether two files hold the same bytes.
pub fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}
