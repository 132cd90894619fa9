//! `make bench`: chunksnap against containerd's plain pull, casync and a zstd patch floor, on
//! real images, over a loopback and a shaped network, in one run.
//!
//! - [`case`]: the cases (`bench/cases/<name>/recipe.sh`) and pushing their images;
//! - [`profile`]: network profiles (loopback; registry in a namespace behind tbf + delay);
//! - [`node`]: a fresh containerd (+ `chunksnap serve`) per run and the timed CRI pull;
//! - [`nodefs`]: the journaled ext4 loop filesystem node state and assembly extracts live on;
//! - [`tools`]: timed `chunkconv`, `casync`, `zstd`, `tar`, `du` invocations;
//! - [`report`]: medians, targets, the table, `results.json` and the chart.
//!
//! Every figure that is timed is the median of `runs` runs on a fresh node; the machine has
//! two noisy cores, so single runs are not trusted.

pub mod case;
pub mod node;
pub mod nodefs;
pub mod prewarm;
pub mod profile;
pub mod report;
pub mod sweep;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{BuiltImage, ContainerdVersion};
use case::{Blobs, Case, Mode};
use node::{Kind, RunResult};
use profile::{Network, Profile};

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Timed runs per figure (median taken).
    pub runs: usize,
    pub profiles: Vec<Profile>,
    pub cases: Vec<String>,
    /// `bench/cases`.
    pub cases_dir: PathBuf,
    /// Scratch space (casync stores, zstd output, the sweep's extracts).
    pub work: PathBuf,
    /// Parent of the nodes' temp dirs (containerd root and state, chunksnap root).
    pub node_tmp: PathBuf,
    /// The assembly figure's scratch space (extract store, extract dirs).
    pub assembly_work: PathBuf,
    /// Which filesystem `node_tmp` and `assembly_work` are on ([`nodefs::NodeFs::label`]).
    pub node_fs: String,
    /// Whether `node_tmp` is the loop filesystem, trimmed (untimed) after each node and assembly.
    pub trim: bool,
    /// Where each chunksnap run's log is kept (`<profile>-<case>-run<N>.chunksnap.log`).
    pub logs: PathBuf,
    /// The containerd every node runs (`CHUNKSNAP_E2E_CONTAINERD`, default 1.6).
    pub containerd: ContainerdVersion,
    /// Other containerd versions whose plain pull is also timed, as more baselines.
    pub baselines: Vec<ContainerdVersion>,
    /// Also time chunksnap with layer verification off, on update cases over shaped links.
    pub verify_cost: bool,
}

/// Figures of a case that do not depend on the network.
#[derive(Debug, Clone, Serialize)]
pub struct CaseOffline {
    pub name: String,
    pub mode: Mode,
    pub v1_tar_bytes: u64,
    pub v2_tar_bytes: u64,
    /// Uncompressed bytes of v2's layers that v1 does not have (all of v2 when cold).
    pub changed_tar_bytes: u64,
    /// Bytes a casync node fetches for v2: store growth after v1 (update) or the v2 store (cold).
    pub casync_bytes: u64,
    /// `zstd -19 --long --patch-from=v1 v2` (or without a base when cold), changed layers.
    pub zstd_floor_bytes: u64,
    /// `chunkconv convert` of v2 after v1: bytes pushed.
    pub convert_v2_bytes_pushed: u64,
    /// What the tar-split records add to the index blobs of v2's changed layers (`chunkconv
    /// inspect`): an upper bound of what verification adds to the bytes of an update.
    pub v2_tar_split_bytes: u64,
    /// `chunkconv extract --tar` of v2 wrote every layer's tar byte for byte as the source.
    pub extract_tar_identical: bool,
    pub assembly: Option<Assembly>,
}

/// Layer assembly with all chunks local vs GNU tar applying the gzip layers.
#[derive(Debug, Clone, Serialize)]
pub struct Assembly {
    /// Uncompressed layer bytes of v2.
    pub bytes: u64,
    /// Seconds inside chunksnap's assembler (what the target compares with tar).
    pub chunksnap_seconds: Vec<f64>,
    /// Seconds of the whole `chunkconv extract` process (registry lookups, index load included).
    pub extract_seconds: Vec<f64>,
    pub tar_seconds: Vec<f64>,
}

/// Convert throughput on one tar: chunkconv (registry → registry) vs `casync make` (file → store).
#[derive(Debug, Clone, Serialize)]
pub struct ConvertBench {
    pub case: String,
    pub tar_bytes: u64,
    pub chunkconv_seconds: Vec<f64>,
    pub casync_seconds: Vec<f64>,
    /// Peak RSS over every `chunkconv convert` of the run.
    pub chunkconv_peak_rss: u64,
}

/// The runs of one case on one profile.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRuns {
    pub case: String,
    pub mode: Mode,
    pub runs: Vec<RunResult>,
    pub errors: Vec<String>,
    /// Time to running of v2 after a pre-warm ([`prewarm`]; updates only).
    pub prewarmed: Vec<prewarm::PrewarmRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileRuns {
    pub profile: String,
    pub cases: Vec<CaseRuns>,
}

/// Everything one `make bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub runs_per_figure: usize,
    /// containerd `major.minor` of every node.
    pub containerd: String,
    /// Versions of the extra plain-pull baselines.
    pub baselines: Vec<String>,
    /// Filesystem the nodes' state and the assembly extracts were on: [`nodefs::LOOP_LABEL`] or
    /// [`nodefs::HOST_LABEL`].
    pub node_fs: String,
    pub cases: Vec<CaseOffline>,
    pub convert: Option<ConvertBench>,
    pub profiles: Vec<ProfileRuns>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

fn fresh_dir(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        crate::util::unmount_below(path);
        std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::create_dir_all(path)?;
    Ok(path.to_owned())
}

/// Pushes a case's v1 and v2 to `net` (repository = case name) and converts both (v1 first,
/// so v2 reuses its chunks). Returns the images and the two convert runs.
async fn push_and_convert(
    net: &Network,
    blobs: &Arc<Blobs>,
    case: &Case,
    repo: &str,
) -> Result<(BuiltImage, BuiltImage, tools::ConvertRun, tools::ConvertRun)> {
    let mut images = Vec::new();
    for (tag, tars) in [("v1", case.v1.clone()), ("v2", case.v2.clone())] {
        let (blobs, reg_up, host) = (blobs.clone(), net.registry.upstream(), net.registry.host());
        let repo = repo.to_owned();
        let img = blocking(move || blobs.push_to(reg_up, &host, &repo, tag, &tars)).await?;
        images.push(img);
    }
    let r1 = images[0].reference.clone();
    let r2 = images[1].reference.clone();
    let c1 = blocking(move || tools::convert(&r1, None))
        .await
        .context("convert v1")?;
    let c2 = blocking(move || tools::convert(&r2, None))
        .await
        .context("convert v2")?;
    let v2 = images.pop().context("v2")?;
    let v1 = images.pop().context("v1")?;
    Ok((v1, v2, c1, c2))
}

/// casync store bytes a node would fetch for v2, and the zstd floor (cached: zstd -19 is slow).
fn casync_and_zstd(case: &Case, work: &Path) -> Result<(u64, u64)> {
    let store = fresh_dir(&work.join("casync-store"))?;
    let idx = work.join("casync.caibx");
    if case.mode == Mode::Update {
        for t in &case.v1 {
            tools::casync_make(&store, &idx, t)?;
        }
    }
    let before = tools::file_bytes(&store);
    for t in &case.v2 {
        tools::casync_make(&store, &idx, t)?;
    }
    let casync = tools::file_bytes(&store) - before;
    let _ = std::fs::remove_dir_all(&store);

    let pairs: Vec<(Option<PathBuf>, PathBuf)> = match case.mode {
        Mode::Update => case
            .changed_layers()
            .into_iter()
            .map(|(b, n)| (b.cloned(), n.clone()))
            .collect(),
        Mode::Cold => case.v2.iter().map(|n| (None, n.clone())).collect(),
    };
    let names: Vec<String> = pairs
        .iter()
        .map(|(b, n)| format!("{b:?}>{}", n.display()))
        .collect();
    let key =
        hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(names.join("\n").as_bytes())[..8]);
    let cached = crate::images::cache_dir().join(format!("bench/zstd-{key}.size"));
    let zstd = match std::fs::read_to_string(&cached)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(n) => n,
        None => {
            let mut n = 0;
            for (b, new) in &pairs {
                eprintln!("bench: zstd -19 --long of {} (slow, cached)", new.display());
                n += tools::zstd_size(b.as_deref(), new, &work.join("zstd.out"))?;
            }
            std::fs::create_dir_all(cached.parent().context("cache dir")?)?;
            std::fs::write(&cached, n.to_string())?;
            n
        }
    };
    Ok((casync, zstd))
}

/// The verification figures of a converted v2: what tar-split adds to its changed layers'
/// indexes, and whether `chunkconv extract --tar` rebuilds every layer's tar exactly.
fn verification_figures(
    reference: &str,
    changed: &[String],
    v2_tars: &[PathBuf],
    work: &Path,
) -> Result<(u64, bool)> {
    let split = tools::inspect_tar_split_bytes(reference, changed)?;
    let dir = fresh_dir(&work.join("extract-tar"))?;
    let written = tools::extract_tars(reference, &dir)?;
    anyhow::ensure!(
        written.len() == v2_tars.len(),
        "extract --tar wrote {} tars for {} layers",
        written.len(),
        v2_tars.len()
    );
    let mut identical = true;
    for (got, want) in written.iter().zip(v2_tars) {
        if !tools::same_bytes(got, want)? {
            eprintln!(
                "bench: extract --tar: {} differs from {}",
                got.display(),
                want.display()
            );
            identical = false;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((split, identical))
}

/// `sync(1)`, untimed, so a timed run does not pay for the previous one's writeback.
fn sync() -> Result<()> {
    let st = std::process::Command::new("sync")
        .status()
        .context("running sync")?;
    anyhow::ensure!(st.success(), "sync: {st}");
    Ok(())
}

/// `chunkconv extract` with a warm store vs `tar -xzpf` of the gzip layers, `runs` times each,
/// interleaved. Every extraction goes into a new directory and all are deleted after the last
/// run: no timed run allocates inodes right after a deletion. `sync` before each timed run.
fn assembly(
    reference: &str,
    gz: &[PathBuf],
    bytes: u64,
    runs: usize,
    work: &Path,
) -> Result<Assembly> {
    let store = fresh_dir(&work.join("extract-store"))?;
    let dirs = fresh_dir(&work.join("extract"))?;
    let new_dir = |name: String| -> Result<PathBuf> {
        let d = dirs.join(name);
        std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    };
    tools::extract(reference, &store, &new_dir("warm".into())?)?; // warms the store
    let mut a = Assembly {
        bytes,
        chunksnap_seconds: Vec::new(),
        extract_seconds: Vec::new(),
        tar_seconds: Vec::new(),
    };
    for i in 0..runs {
        let dir = new_dir(format!("chunkconv-{i}"))?;
        sync()?;
        let (s, fetched, assembling) = tools::extract(reference, &store, &dir)?;
        anyhow::ensure!(fetched == 0, "warm extract fetched {fetched} bytes");
        a.chunksnap_seconds.push(assembling);
        a.extract_seconds.push(s);
        let dir = new_dir(format!("tar-{i}"))?;
        sync()?;
        a.tar_seconds.push(tools::tar_extract(gz, &dir)?);
    }
    let _ = std::fs::remove_dir_all(&dirs);
    let _ = std::fs::remove_dir_all(&store);
    Ok(a)
}

/// Hands the blocks of deleted node state back to the host (untimed; see [`nodefs::trim`]).
async fn trim(s: &Settings) {
    if s.trim {
        let dir = s.node_tmp.clone();
        let _ = blocking(move || {
            nodefs::trim(&dir);
            Ok(())
        })
        .await;
    }
}

/// Runs the whole benchmark.
pub async fn run(s: &Settings) -> Result<Results> {
    std::fs::create_dir_all(&s.work)?;
    let blobs = Arc::new(Blobs::default());
    let mut convert_rss = 0u64;

    // Offline figures, on a loopback registry of their own.
    eprintln!("bench: building cases");
    let off = Network::start(Profile::Loopback, 0).await?;
    let debian = case::debian_tars(&off.images).await?;
    let mut cases = Vec::new();
    for name in &s.cases {
        let (dir, work, name, debian) = (
            s.cases_dir.clone(),
            s.work.clone(),
            name.clone(),
            debian.clone(),
        );
        cases.push(blocking(move || case::load(&dir, &name, &work, &debian)).await?);
    }
    let mut offline = Vec::new();
    for case in &cases {
        eprintln!(
            "bench: {}: casync, zstd floor, convert, assembly",
            case.name
        );
        let (c, work) = (case.clone(), s.work.clone());
        let (casync_bytes, zstd_floor_bytes) = blocking(move || casync_and_zstd(&c, &work)).await?;
        let (v1, v2, c1, c2) = push_and_convert(&off, &blobs, case, &case.name).await?;
        convert_rss = convert_rss.max(c1.max_rss).max(c2.max_rss);
        let v2_tar_bytes = Case::tar_bytes(&case.v2)?;
        let assembly = if case.mode == Mode::Update {
            let gz: Vec<PathBuf> = blobs.blobs(&case.v2)?.into_iter().map(|b| b.path).collect();
            let (r, work, runs) = (v2.reference.clone(), s.assembly_work.clone(), s.runs);
            let a = blocking(move || assembly(&r, &gz, v2_tar_bytes, runs, &work)).await?;
            trim(s).await;
            Some(a)
        } else {
            None
        };
        let (r, changed, v2_tars, work) = (
            v2.reference.clone(),
            v2.layers
                .iter()
                .filter(|l| {
                    case.mode == Mode::Cold || !v1.layers.iter().any(|b| b.digest == l.digest)
                })
                .map(|l| l.digest.clone())
                .collect::<Vec<_>>(),
            case.v2.clone(),
            s.work.clone(),
        );
        let (v2_tar_split_bytes, extract_tar_identical) =
            blocking(move || verification_figures(&r, &changed, &v2_tars, &work)).await?;
        offline.push(CaseOffline {
            name: case.name.clone(),
            mode: case.mode,
            v1_tar_bytes: Case::tar_bytes(&case.v1)?,
            v2_tar_bytes,
            changed_tar_bytes: Case::tar_bytes(
                &case
                    .changed_layers()
                    .into_iter()
                    .map(|(_, l)| l.clone())
                    .collect::<Vec<_>>(),
            )?,
            casync_bytes,
            zstd_floor_bytes,
            convert_v2_bytes_pushed: c2.bytes_pushed,
            v2_tar_split_bytes,
            extract_tar_identical,
            assembly,
        });
    }

    // Convert throughput on the first case's largest v1 layer.
    let mut convert = None;
    if let Some(case) = cases.first() {
        let tar = case
            .v1
            .iter()
            .max_by_key(|t| std::fs::metadata(t).map(|m| m.len()).unwrap_or(0))
            .context("no layers")?
            .clone();
        let tar_bytes = std::fs::metadata(&tar)?.len();
        let mut cb = ConvertBench {
            case: case.name.clone(),
            tar_bytes,
            chunkconv_seconds: Vec::new(),
            casync_seconds: Vec::new(),
            chunkconv_peak_rss: 0,
        };
        for i in 0..s.runs.max(1) {
            eprintln!("bench: convert throughput run {}", i + 1);
            let (blobs, up, host, t) = (
                blobs.clone(),
                off.registry.upstream(),
                off.registry.host(),
                tar.clone(),
            );
            let img =
                blocking(move || blobs.push_to(up, &host, &format!("convert-{i}"), "v1", &[t]))
                    .await?;
            let r = img.reference.clone();
            let run = blocking(move || tools::convert(&r, None)).await?;
            cb.chunkconv_seconds.push(run.seconds);
            convert_rss = convert_rss.max(run.max_rss);
            let (t, work) = (tar.clone(), s.work.clone());
            let secs = blocking(move || {
                let store = fresh_dir(&work.join("casync-tp"))?;
                let t = tools::casync_make(&store, &work.join("tp.caibx"), &t)?;
                let _ = std::fs::remove_dir_all(&store);
                Ok(t.seconds)
            })
            .await?;
            cb.casync_seconds.push(secs);
        }
        cb.chunkconv_peak_rss = convert_rss;
        convert = Some(cb);
    }
    drop(off);

    let mut profiles = Vec::new();
    for (i, profile) in s.profiles.iter().enumerate() {
        eprintln!("bench: profile {}", profile.name());
        let net = Network::start(*profile, u8::try_from(i + 1).unwrap_or(255)).await?;
        eprintln!(
            "bench: {}: a small registry request takes {:.1} ms (median of 11, GET /v2/)",
            profile.name(),
            net.round_trip().await?.as_secs_f64() * 1000.0
        );
        let mut pr = ProfileRuns {
            profile: profile.name(),
            cases: Vec::new(),
        };
        for case in &cases {
            let (v1, v2, c1, c2) = push_and_convert(&net, &blobs, case, &case.name).await?;
            convert_rss = convert_rss.max(c1.max_rss).max(c2.max_rss);
            let mut cr = CaseRuns {
                case: case.name.clone(),
                mode: case.mode,
                runs: Vec::new(),
                errors: Vec::new(),
                prewarmed: Vec::new(),
            };
            let mut kinds = vec![(Kind::Plain, s.containerd), (Kind::Chunksnap, s.containerd)];
            if s.verify_cost && case.mode == Mode::Update && *profile != Profile::Loopback {
                kinds.push((Kind::Unverified, s.containerd));
            }
            kinds.extend(s.baselines.iter().map(|v| (Kind::Plain, *v)));
            for r in 0..s.runs {
                // Interleaved, so drifting machine load hits every kind alike.
                for &(kind, version) in &kinds {
                    let log = s.logs.join(format!(
                        "{}-{}-{}-run{}.chunksnap.log",
                        pr.profile,
                        case.name,
                        kind.name(),
                        r + 1
                    ));
                    let res =
                        node::run_once(kind, version, &net, case, &v1, &v2, &s.node_tmp, &log)
                            .await;
                    trim(s).await;
                    match res {
                        Ok(mut res) => {
                            res.baseline = version != s.containerd;
                            eprintln!(
                                "bench: {} {} {} (containerd {}) run {}: {:.2}s, {} bytes served{}",
                                pr.profile,
                                case.name,
                                kind.name(),
                                version.name(),
                                r + 1,
                                res.seconds,
                                res.bytes_served,
                                if res.layer_blob_fetched && kind != Kind::Plain {
                                    " (FELL BACK: whole layer blob fetched)"
                                } else {
                                    ""
                                }
                            );
                            cr.runs.push(res);
                        }
                        Err(e) => {
                            eprintln!(
                                "bench: {} {} {} (containerd {}) run {}: ERROR {e:#}",
                                pr.profile,
                                case.name,
                                kind.name(),
                                version.name(),
                                r + 1
                            );
                            cr.errors.push(format!(
                                "{} (containerd {}) run {}: {e:#}",
                                kind.name(),
                                version.name(),
                                r + 1
                            ));
                        }
                    }
                }
                if case.mode == Mode::Update {
                    match prewarm::run_once(&net, case, &v1, &v2, &s.node_tmp).await {
                        Ok(p) => {
                            eprintln!(
                                "bench: {} {} prewarmed run {}: {:.2}s",
                                pr.profile,
                                case.name,
                                r + 1,
                                p.seconds
                            );
                            cr.prewarmed.push(p);
                        }
                        Err(e) => cr.errors.push(format!("prewarmed run {}: {e:#}", r + 1)),
                    }
                    trim(s).await;
                }
            }
            pr.cases.push(cr);
        }
        profiles.push(pr);
    }
    if let Some(c) = convert.as_mut() {
        c.chunkconv_peak_rss = convert_rss;
    }
    Ok(Results {
        runs_per_figure: s.runs,
        containerd: s.containerd.name().to_owned(),
        baselines: s.baselines.iter().map(|v| v.name().to_owned()).collect(),
        node_fs: s.node_fs.clone(),
        cases: offline,
        convert,
        profiles,
    })
}
