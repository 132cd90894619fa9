//! `make bench` driver: `bench [sweep]`. Settings come from the environment:
//! `BENCH_RUNS` (default 3), `BENCH_PROFILES` (comma list, default `loopback,100mbit-20ms`),
//! `BENCH_CASES` (default: every directory under `bench/cases`), `BENCH_OUT` (default
//! `target/bench`), `CHUNKSNAP_E2E_CONTAINERD` (the nodes' containerd, default 1.6),
//! `BENCH_BASELINES` (more containerd versions whose plain pull is timed, default 2.1),
//! `BENCH_VERIFY_COST` (1, default: also time chunksnap without layer verification). Binaries come from `CHUNKSNAP_BIN_DIR` (bench/run.sh sets it).
//!
//! A run keeps node state and the assembly extracts on a journaled ext4 loop filesystem it
//! mounts on `BENCH_OUT/nodefs.PID` and removes at the end, also on SIGINT/SIGTERM and errors
//! ([`NodeFs`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chunksnap_e2e::ContainerdVersion;
use chunksnap_e2e::bench::nodefs::{self, NodeFs};
use chunksnap_e2e::bench::profile::Profile;
use chunksnap_e2e::bench::{Settings, report, sweep};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn settings() -> Result<(Settings, PathBuf)> {
    let runs = match std::env::var("BENCH_RUNS") {
        Ok(v) => v.parse().context("BENCH_RUNS")?,
        Err(_) => 3,
    };
    if runs == 0 {
        bail!("BENCH_RUNS must be at least 1");
    }
    let profiles = std::env::var("BENCH_PROFILES")
        .unwrap_or_else(|_| "loopback,100mbit-20ms".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| Profile::parse(s.trim()))
        .collect::<Result<Vec<_>>>()?;
    let cases_dir = workspace().join("bench/cases");
    let cases = match std::env::var("BENCH_CASES") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        Err(_) => {
            // debian-security first: the convert throughput figure uses the first case.
            let mut names: Vec<String> = std::fs::read_dir(&cases_dir)
                .with_context(|| format!("reading {}", cases_dir.display()))?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("recipe.sh").is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect();
            names.sort_by_key(|n| (n != "debian-security", n.clone()));
            names
        }
    };
    let containerd = ContainerdVersion::from_env()?;
    // Plain pulls on the newest containerd too by default: that is the pull users compare with.
    let baselines = match std::env::var("BENCH_BASELINES") {
        Ok(v) => v
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(ContainerdVersion::parse)
            .collect::<Result<Vec<_>>>()?,
        Err(_) => vec![ContainerdVersion::V2_1],
    }
    .into_iter()
    .filter(|v| *v != containerd)
    .collect();
    let verify_cost = match std::env::var("BENCH_VERIFY_COST").as_deref() {
        Ok("0") => false,
        Ok("1") | Err(_) => true,
        Ok(other) => bail!("BENCH_VERIFY_COST={other}: expected 0 or 1"),
    };
    let out = std::env::var_os("BENCH_OUT")
        .map_or_else(|| workspace().join("target/bench"), PathBuf::from);
    std::fs::create_dir_all(&out)?;
    let out = out.canonicalize()?;
    Ok((
        Settings {
            runs,
            profiles,
            cases,
            cases_dir,
            work: out.join("work"),
            node_tmp: PathBuf::from("/tmp"),
            assembly_work: out.join("work"),
            node_fs: nodefs::HOST_LABEL.to_owned(),
            trim: false,
            logs: out.join("logs"),
            containerd,
            baselines,
            verify_cost,
        },
        out,
    ))
}

/// Runs `f` until it ends or SIGINT/SIGTERM arrives; dropping `f` then stops every daemon,
/// namespace and mount it holds.
async fn interruptible<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        r = f => r,
        _ = term.recv() => bail!("terminated"),
        _ = int.recv() => bail!("interrupted"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let (mut settings, out) = settings()?;
    match std::env::args().nth(1).as_deref() {
        None | Some("run") => {
            // Dropped (unmounted, image deleted) on every way out of this arm, `?` included.
            let fs = NodeFs::setup(&out);
            // Logs of this run only.
            let _ = std::fs::remove_dir_all(&settings.logs);
            settings.node_tmp = fs.node_tmp();
            settings.assembly_work = fs.work(&settings.work);
            settings.node_fs = fs.label().to_owned();
            settings.trim = fs.is_loop();
            let results = interruptible(chunksnap_e2e::bench::run(&settings)).await;
            drop(fs);
            let results = results?;
            let targets = report::targets(&results);
            report::write_json(&results, &targets, &out)?;
            println!("{}", report::table(&results, &targets));
            if let Err(e) = report::chart(&results, &out) {
                eprintln!("bench: no chart: {e:#}");
            }
            println!(
                "wrote {}/results.json and {}/chart.png",
                out.display(),
                out.display()
            );
        }
        Some("sweep") => {
            // Only the debian case unless BENCH_CASES names others.
            let cases = if std::env::var_os("BENCH_CASES").is_some() {
                settings.cases.clone()
            } else {
                vec!["debian-security".to_owned()]
            };
            let rows = interruptible(sweep::run(&settings, &cases)).await?;
            std::fs::write(out.join("sweep.json"), serde_json::to_vec_pretty(&rows)?)?;
            println!("{}", sweep::table(&rows));
            println!("wrote {}/sweep.json", out.display());
        }
        Some(other) => bail!("unknown mode {other:?} (run, sweep)"),
    }
    let _ = std::fs::remove_dir_all(&settings.work);
    Ok(())
}
