//! `chunkconv`: convert OCI images to chunksnap artifacts, inspect them, extract them.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use chunkconv::convert::{ConvertOptions, ConvertReport, convert};
use chunkconv::delta::DeltaOptions;
use chunkconv::inspect::{InspectManifest, inspect};
use chunkconv::layer::LayerOptions;
use chunkconv::progress::{Progress, short};
use chunksnap_core::registry::{Reference, RegistryClient, RegistryConfig};
use chunksnap_format::chunker::ChunkerParams;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chunkconv",
    version,
    about = "Convert OCI images into chunksnap chunk indexes and packs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Registry connection flags shared by every subcommand.
#[derive(Args, Clone)]
struct RegistryFlags {
    /// Talk plain HTTP to the registries (local/test registries).
    #[arg(long)]
    plain_http: bool,
    /// Do not verify TLS certificates of the registries named in the references.
    #[arg(long)]
    insecure: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Convert an image (every platform of an index) and push the artifact next to it.
    Convert {
        #[command(flatten)]
        registry: RegistryFlags,
        /// Reuse chunks of this image's artifact (repeatable).
        #[arg(long = "base", value_name = "REF")]
        bases: Vec<String>,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// Do not reuse chunks from the artifacts of the repository's other tags.
        #[arg(long)]
        no_dedup_tags: bool,
        /// Do not add delta frames (new chunks compressed against the closest earlier layer's,
        /// which nodes updating from it download instead of the chunks).
        #[arg(long)]
        no_deltas: bool,
        /// Layers converted at once.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Average chunk size (min = avg/4, max = avg*4), e.g. 64K.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        chunk_avg: Option<u64>,
        /// Target pack size (8M..32M), e.g. 16M.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        pack_size: Option<u64>,
        /// zstd level for chunks (1..=19; default 6): higher stores fewer bytes for every node
        /// to download, at a slower convert.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
        zstd_level: Option<i32>,
        /// zstd level each chosen delta frame is compressed again at (1..=19; default 19):
        /// updating nodes download fewer bytes, the delta pass of an update takes longer.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
        delta_level: Option<i32>,
        /// The image: registry/repository:tag or @sha256:…
        image: String,
    },
    /// Show what an image's artifact holds and what a base shares with it.
    Inspect {
        #[command(flatten)]
        registry: RegistryFlags,
        /// Count the chunks this image already has.
        #[arg(long, value_name = "REF")]
        base: Option<String>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
        /// The image.
        image: String,
    },
    /// Assemble an image's filesystem from its chunks into DIR (without containerd).
    Extract {
        #[command(flatten)]
        registry: RegistryFlags,
        /// Chunk store directory to use (and keep).
        #[arg(long, value_name = "DIR")]
        store: Option<std::path::PathBuf>,
        /// Platform (`os/arch[/variant]`) of a multi-platform image (default: this host's).
        #[arg(long)]
        platform: Option<String>,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// Write each layer's original uncompressed tar into the directory instead
        /// (`NN-<diffID hex>.tar`), rebuilt bit for bit from the chunks and checked against the
        /// image config's diffIDs.
        #[arg(long)]
        tar: bool,
        /// The image.
        image: String,
        /// Destination directory.
        dir: std::path::PathBuf,
    },
}

/// Parses `123`, `64K`, `64KiB`, `16M`, `1G` (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} too large"))
}

fn client_for(flags: &RegistryFlags, refs: &[&Reference]) -> Result<RegistryClient> {
    let hosts: Vec<String> = refs
        .iter()
        .map(|r| r.resolve_registry().to_owned())
        .collect();
    let config = RegistryConfig {
        plain_http_hosts: if flags.plain_http {
            hosts.clone()
        } else {
            Vec::new()
        },
        insecure_hosts: if flags.insecure { hosts } else { Vec::new() },
        ..Default::default()
    };
    RegistryClient::new(config).context("creating the registry client")
}

fn reference(s: &str) -> Result<Reference> {
    RegistryClient::parse_reference(s).with_context(|| format!("parsing image reference {s:?}"))
}

fn main() -> Result<()> {
    chunksnap_core::malloc::cap_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run())
}

async fn run() -> Result<()> {
    // reqwest is built without a default TLS provider: pick ring once, before any client exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    match Cli::parse().command {
        Command::Convert {
            registry,
            bases,
            json,
            no_dedup_tags,
            no_deltas,
            jobs,
            chunk_avg,
            pack_size,
            zstd_level,
            delta_level,
            image,
        } => {
            let image = reference(&image)?;
            let bases = bases
                .iter()
                .map(|b| reference(b))
                .collect::<Result<Vec<_>>>()?;
            let mut refs = vec![&image];
            refs.extend(bases.iter());
            let client = client_for(&registry, &refs)?;
            let mut layer = LayerOptions::default();
            if let Some(avg) = chunk_avg {
                let avg = u32::try_from(avg).context("--chunk-avg too large")?;
                layer.chunker = ChunkerParams {
                    min: avg / 4,
                    avg,
                    max: avg.saturating_mul(4),
                    ..ChunkerParams::default()
                };
                layer.chunker.validate().context("--chunk-avg")?;
            }
            let mut deltas = DeltaOptions {
                enabled: !no_deltas,
                ..DeltaOptions::default()
            };
            if let Some(p) = pack_size {
                layer.pack_size = p;
                deltas.pack_size = p;
            }
            if let Some(level) = zstd_level {
                layer.zstd_level = level;
                deltas.level = level;
            }
            if let Some(level) = delta_level {
                deltas.final_level = level;
            }
            if jobs == 0 {
                bail!("--jobs must be at least 1");
            }
            let opts = ConvertOptions {
                bases,
                dedup_tags: !no_dedup_tags,
                jobs,
                layer,
                deltas,
            };
            let progress = Progress::new(std::io::stderr().is_terminal());
            let report = convert(&client, &image, &opts, &progress)
                .await
                .with_context(|| format!("converting {}", image.whole()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_convert(&report);
            }
        }
        Command::Inspect {
            registry,
            base,
            json,
            image,
        } => {
            let image = reference(&image)?;
            let base = base.as_deref().map(reference).transpose()?;
            let mut refs = vec![&image];
            refs.extend(base.iter());
            let client = client_for(&registry, &refs)?;
            let report = inspect(&client, &image, base.as_ref())
                .await
                .with_context(|| format!("inspecting {}", image.whole()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_inspect(&report);
            }
        }
        Command::Extract {
            registry,
            store,
            platform,
            json,
            tar,
            image,
            dir,
        } => {
            let image = reference(&image)?;
            let client = client_for(&registry, &[&image])?;
            let opts = chunkconv::extract::ExtractOptions {
                platform,
                tar,
                ..Default::default()
            };
            let summary = chunkconv::extract::run(&client, &image, &dir, store.as_deref(), &opts)
                .await
                .with_context(|| format!("extracting {} into {}", image.whole(), dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "{} ({}): {} layers extracted into {}",
                    summary.manifest,
                    summary.platform.as_deref().unwrap_or("-"),
                    summary.layers.len(),
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

fn print_convert(r: &ConvertReport) {
    for m in &r.manifests {
        let platform = m.platform.as_deref().unwrap_or("-");
        if m.already_converted {
            println!(
                "{} ({platform}): already converted, artifact {}",
                m.manifest, m.artifact
            );
            continue;
        }
        println!("{} ({platform}): artifact {}", m.manifest, m.artifact);
        for l in &m.layers {
            let deltas = match &l.deltas.reference {
                Some(r) if l.deltas.deltas > 0 => format!(
                    " deltas {} ({} B for {} B of chunks, against {})",
                    l.deltas.deltas,
                    l.deltas.delta_bytes,
                    l.deltas.chunk_bytes,
                    short(r)
                ),
                _ => String::new(),
            };
            println!(
                "  {} entries {:>6} chunks {:>6} new {:>6} read {:>10} pushed {:>10}{}{deltas}",
                short(&l.digest),
                l.entries,
                l.chunks,
                l.new_chunks,
                l.bytes_read,
                l.bytes_pushed,
                if l.reused { " (reused index)" } else { "" }
            );
        }
    }
    let t = &r.totals;
    println!(
        "total: {} layers, {} chunks, {} new, {} deltas, {} bytes read, {} bytes pushed in {:.1}s",
        t.layers, t.chunks, t.new_chunks, t.delta_chunks, t.bytes_read, t.bytes_pushed, r.seconds
    );
}

fn print_inspect(report: &[InspectManifest]) {
    for m in report {
        println!(
            "{} ({}): artifact {}",
            m.manifest,
            m.platform.as_deref().unwrap_or("-"),
            m.artifact
        );
        for l in &m.layers {
            println!(
                "  {} entries {:>6} chunks {:>6} content {:>10} layer {:>10} index {:>8} (tar-split {})",
                short(&l.digest),
                l.entries,
                l.chunks,
                l.content_bytes,
                l.layer_bytes,
                l.index_bytes,
                l.tar_split_bytes
            );
        }
        println!(
            "  {} unique chunks ({} bytes stored), {} packs ({} bytes)",
            m.unique_chunks, m.unique_stored_bytes, m.packs, m.pack_bytes
        );
        if let (Some(n), Some(b)) = (m.base_chunks, m.base_stored_bytes) {
            println!("  base already has {n} of these chunks ({b} bytes)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
    }
}
