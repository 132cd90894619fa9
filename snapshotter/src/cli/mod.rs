//! Command-line parsing and dispatch. Flags override the config file (see `chunksnap::config`).

mod serve;
mod status;
mod store_cmds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chunksnap::config::Config;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chunksnap",
    version,
    about = "containerd remote snapshotter assembling layers from a node-wide chunk store"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by every subcommand; each is also a config-file key.
#[derive(Debug, Args)]
struct Common {
    /// Config file [default: /etc/chunksnap/config.toml, may be missing].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State root (config `root`) [default: /var/lib/chunksnap].
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// gRPC unix socket (config `address`) [default: /run/chunksnap/chunksnap.sock].
    #[arg(long, global = true, value_name = "SOCKET")]
    address: Option<PathBuf>,
    /// Log filter (config `log_level`) [default: info].
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the snapshotter daemon.
    Serve(ServeArgs),
    /// Show snapshots by kind and disk use.
    Status,
    /// Evict chunks beyond the store budget.
    Gc,
    /// Check the chunk store (and repair with --repair).
    Fsck {
        /// Remove corrupt chunks.
        #[arg(long)]
        repair: bool,
    },
    /// Fetch an image's chunks into the store ahead of a pull.
    Prefetch {
        /// Registry host reached over plain HTTP; repeatable, added to config `plain_http`.
        #[arg(long, value_name = "HOST")]
        plain_http: Vec<String>,
        /// Image reference.
        image: String,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// `/metrics` + `/healthz` address (config `metrics_address`) [default: 127.0.0.1:9883].
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<SocketAddr>,
    /// Registry host reached over plain HTTP; repeatable, added to config `plain_http`.
    #[arg(long, value_name = "HOST")]
    plain_http: Vec<String>,
}

/// Parses the command line and runs the subcommand.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.common.config.as_deref()).context("loading configuration")?;
    if let Some(root) = cli.common.root {
        config.root = root;
    }
    if let Some(address) = cli.common.address {
        config.address = address;
    }
    if let Some(level) = cli.common.log_level {
        config.log_level = level;
    }
    match cli.command {
        Command::Serve(args) => {
            if let Some(addr) = args.metrics_address {
                config.metrics_address = addr;
            }
            config.plain_http.extend(args.plain_http);
            serve::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            status::run(&config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc => {
            store_cmds::gc(&config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fsck { repair } => Ok(if store_cmds::fsck(&config, repair)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }),
        Command::Prefetch { plain_http, image } => {
            config.plain_http.extend(plain_http);
            store_cmds::prefetch(&config, &image)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
