//! `chunkconv extract`: assembles an image's root filesystem from its chunksnap artifact,
//! without containerd.
//!
//! Resolves the image to one platform manifest, finds its artifact, and for each layer in image
//! order loads the layer index, fetches the chunks the store lacks (coalesced Range reads of the
//! packs, each chunk verified) and applies the layer into the destination with
//! [`WhiteoutMode::Apply`] (whiteouts delete, as containerd's own applier does). With no store
//! directory a temporary store is used and removed afterwards.

use std::path::Path;
use std::sync::Arc;

use chunksnap_core::assemble::{AssembleError, AssembleStats, WhiteoutMode, assemble_layer};
use chunksnap_core::fetch::{FetchError, FetchOptions, FetchStats, Inflight, fetch_missing};
use chunksnap_core::registry::{
    Platform, PlatformManifest, Reference, RegistryClient, RepoRangeSource, choose_platform,
};
use chunksnap_core::store::{ChunkStore, StoreError};
use chunksnap_core::verify::write_tar;
use chunksnap_format::digest::Digest;
use serde::Serialize;

use crate::ConvertError;
use crate::catalog::load_index;

/// Errors from extracting an image.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Resolving the image, finding its artifact or loading an index failed.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// The image (or one of its layers) has no chunksnap artifact / index.
    #[error("{0}: no chunksnap artifact; run `chunkconv convert` first")]
    NotConverted(String),
    /// No manifest suits the wanted platform (or `--platform` is not `os/arch[/variant]`).
    #[error("{image}: choose a platform with --platform (available: {available})")]
    Platform { image: String, available: String },
    /// The chunk store failed.
    #[error("chunk store: {0}")]
    Store(#[from] StoreError),
    /// Fetching chunks failed.
    #[error("layer {layer}: fetching chunks: {source}")]
    Fetch { layer: String, source: FetchError },
    /// Assembling a layer failed.
    #[error("layer {layer}: {source}")]
    Assemble {
        layer: String,
        source: AssembleError,
    },
    /// Creating the destination or temporary store failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A layer's tar could not be rebuilt, or is not the layer the image config names.
    #[error("layer tar {path}: {reason}")]
    Tar { path: String, reason: String },
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Extract options.
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// `os/arch[/variant]` to extract from a multi-platform image (default: the host's); chosen
    /// by [`choose_platform`], as the node does.
    pub platform: Option<String>,
    /// Range request shaping.
    pub fetch: FetchOptions,
    /// Write each layer's original uncompressed tar (`NN-<diffID hex>.tar`, checked against the
    /// image config's diffIDs) instead of extracting files.
    pub tar: bool,
}

/// What happened to one layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExtractLayer {
    /// Source layer digest.
    pub digest: String,
    /// Distinct chunks the layer needs.
    pub chunks: u64,
    /// Chunks fetched from the registry.
    pub fetched_chunks: u64,
    /// Of those, rebuilt from delta frames against chunks the store held.
    pub delta_chunks: u64,
    /// Chunks already in the store.
    pub reused_chunks: u64,
    /// Bytes received (including coalescing gaps).
    pub fetched_bytes: u64,
    /// Range requests made.
    pub requests: u64,
    /// Entries written.
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub whiteouts: u64,
    /// File bytes written, and left as holes.
    pub bytes_written: u64,
    pub hole_bytes: u64,
    /// Seconds spent assembling the layer (all its chunks local), without fetching.
    pub assemble_seconds: f64,
}

impl ExtractLayer {
    /// The layer's fetch figures (the rest zero), whether it was assembled or written as a tar.
    fn fetched(digest: &str, f: &FetchStats) -> Self {
        Self {
            digest: digest.to_owned(),
            chunks: f.chunks_needed,
            fetched_chunks: f.chunks_fetched,
            delta_chunks: f.chunks_from_deltas,
            reused_chunks: f.chunks_reused + f.chunks_waited,
            fetched_bytes: f.bytes_fetched,
            requests: f.requests,
            ..Self::default()
        }
    }
}

/// What `extract` did.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractSummary {
    /// The image manifest extracted.
    pub manifest: String,
    pub platform: Option<String>,
    /// The artifact used.
    pub artifact: String,
    pub layers: Vec<ExtractLayer>,
}

/// The manifest for `wanted` (default: the host's platform), by the rule of
/// [`choose_platform`], the node's too.
fn choose(
    image: &Reference,
    manifests: Vec<PlatformManifest>,
    wanted: Option<&str>,
) -> Result<PlatformManifest, ExtractError> {
    let want = match wanted {
        Some(w) => Platform::parse(w),
        None => Some(Platform::host()),
    };
    if let Some(pm) = want.and_then(|w| choose_platform(&manifests, &w)) {
        return Ok(pm.clone());
    }
    let available = manifests
        .iter()
        .map(|m| m.platform.clone().unwrap_or_else(|| "?".into()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(ExtractError::Platform {
        image: image.whole(),
        available,
    })
}

/// Extracts `image` into `dest` (created if missing), using the chunk store at `store_dir` (kept)
/// or a temporary one.
pub async fn run(
    client: &RegistryClient,
    image: &Reference,
    dest: &Path,
    store_dir: Option<&Path>,
    opts: &ExtractOptions,
) -> Result<ExtractSummary, ExtractError> {
    let manifests = client
        .platform_manifests(image)
        .await
        .map_err(ConvertError::from)?;
    let pm = choose(image, manifests, opts.platform.as_deref())?;
    let (art_digest, art) = client
        .find_artifact(image, &pm.raw.digest)
        .await
        .map_err(ConvertError::from)?
        .ok_or_else(|| {
            ExtractError::NotConverted(format!("{}@{}", image.whole(), pm.raw.digest))
        })?;

    let io = |what: String| move |source| ExtractError::Io { what, source };
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(io(dest.display().to_string()))?;
    // Keep the temp dir alive until the end; it is removed on drop.
    let (store_path, _temp) = match store_dir {
        Some(p) => (p.to_owned(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("chunkconv-store-")
                .tempdir()
                .map_err(io("temporary chunk store".into()))?;
            (t.path().to_owned(), Some(t))
        }
    };
    let store =
        Arc::new(tokio::task::spawn_blocking(move || ChunkStore::open(&store_path, None)).await??);
    let source = RepoRangeSource {
        client: client.clone(),
        repo: image.clone(),
    };
    let inflight = Inflight::default();

    let diff_ids = if opts.tar {
        config_diff_ids(client, image, &pm).await?
    } else {
        Vec::new()
    };
    let mut layers = Vec::new();
    for layer in &pm.manifest.layers {
        let not_converted = || ExtractError::NotConverted(format!("layer {}", layer.digest));
        let layer_digest = Digest::parse(&layer.digest).map_err(|_| not_converted())?;
        let desc = art.indexes.get(&layer_digest).ok_or_else(not_converted)?;
        let index = Arc::new(
            load_index(client, image, desc)
                .await
                .map_err(ConvertError::from)?,
        );
        let digests: Vec<Digest> = index
            .chunks
            .iter()
            .filter_map(|c| Digest::from_slice(&c.digest).ok())
            .collect();
        let _pins = store.pin(digests);
        let fetched: FetchStats = fetch_missing(&index, &store, &source, &opts.fetch, &inflight)
            .await
            .map_err(|source| ExtractError::Fetch {
                layer: layer.digest.clone(),
                source,
            })?;
        if opts.tar {
            let want = diff_ids.get(layers.len()).cloned().unwrap_or_default();
            let path = dest.join(format!(
                "{:02}-{}.tar",
                layers.len(),
                want.trim_start_matches("sha256:")
            ));
            let (idx, st) = (Arc::clone(&index), Arc::clone(&store));
            let stats =
                tokio::task::spawn_blocking(move || write_layer_tar(&idx, &st, &path, &want))
                    .await??;
            layers.push(ExtractLayer {
                bytes_written: stats,
                ..ExtractLayer::fetched(&layer.digest, &fetched)
            });
            continue;
        }
        let (idx, st, d) = (Arc::clone(&index), Arc::clone(&store), dest.to_owned());
        let assembled: (AssembleStats, f64) = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            assemble_layer(&idx, &*st, &d, WhiteoutMode::Apply)
                .map(|s| (s, started.elapsed().as_secs_f64()))
        })
        .await?
        .map_err(|source| ExtractError::Assemble {
            layer: layer.digest.clone(),
            source,
        })?;
        let (assembled, assemble_seconds) = assembled;
        tracing::info!(
            layer = %layer.digest,
            chunks = fetched.chunks_needed,
            fetched = fetched.chunks_fetched,
            reused = fetched.chunks_reused,
            bytes = fetched.bytes_fetched,
            requests = fetched.requests,
            "layer extracted"
        );
        layers.push(ExtractLayer {
            files: assembled.files,
            dirs: assembled.dirs,
            links: assembled.symlinks + assembled.hardlinks,
            whiteouts: assembled.whiteouts,
            bytes_written: assembled.bytes_written,
            hole_bytes: assembled.hole_bytes,
            assemble_seconds,
            ..ExtractLayer::fetched(&layer.digest, &fetched)
        });
    }
    Ok(ExtractSummary {
        manifest: pm.raw.digest.to_string(),
        platform: pm.platform.clone(),
        artifact: art_digest.to_string(),
        layers,
    })
}

/// The image config's `rootfs.diff_ids` (the config is read by digest, so they chain to the
/// manifest).
async fn config_diff_ids(
    client: &RegistryClient,
    image: &Reference,
    pm: &PlatformManifest,
) -> Result<Vec<String>, ExtractError> {
    let config = &pm.manifest.config;
    let bad = |reason: String| ExtractError::Tar {
        path: config.digest.clone(),
        reason,
    };
    let digest = Digest::parse(&config.digest).map_err(|e| bad(e.to_string()))?;
    let size = u64::try_from(config.size).map_err(|e| bad(e.to_string()))?;
    let blob = client
        .read_blob(image, &digest, size)
        .await
        .map_err(ConvertError::from)?;
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let c: Config = serde_json::from_slice(&blob).map_err(|e| bad(e.to_string()))?;
    if c.rootfs.diff_ids.len() != pm.manifest.layers.len() {
        return Err(bad("diff_ids and layers differ in number".into()));
    }
    Ok(c.rootfs.diff_ids)
}

/// Writes one layer's tar to `path` (removed again unless its sha256 is `want`); returns its size.
fn write_layer_tar(
    index: &chunksnap_format::pb::LayerIndex,
    chunks: &ChunkStore,
    path: &Path,
    want: &str,
) -> Result<u64, ExtractError> {
    let fail = |reason: String| ExtractError::Tar {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::create(path).map_err(|e| fail(e.to_string()))?;
    let mut out = std::io::BufWriter::new(file);
    let written = write_tar(index, chunks, &mut out).and_then(|d| {
        use std::io::Write;
        out.flush()
            .map_err(chunksnap_core::verify::VerifyError::Read)?;
        Ok(d)
    });
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match written {
        Ok(d) if d.to_string() == want => Ok(size),
        Ok(d) => {
            let _ = std::fs::remove_file(path);
            Err(fail(format!("sha256 is {d}, the image config says {want}")))
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(fail(e.to_string()))
        }
    }
}
