//! Command-line parsing and dispatch. Flags override the config file (see `chunksnap::config`).

mod prewarm;
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
    /// Fetch an image's chunks into the store ahead of a pull; with --pull, stage the whole
    /// image through containerd's CRI (via the daemon) so a later pull finds it present.
    Prefetch {
        /// Registry host reached over plain HTTP; repeatable, added to config `plain_http`.
        #[arg(long, value_name = "HOST")]
        plain_http: Vec<String>,
        /// Pull through containerd's CRI ImageService (the daemon does it, with its registry
        /// credentials): containerd records the image, chunksnap assembles its layers.
        #[arg(long)]
        pull: bool,
        /// With --pull: also pull an image that has no chunksnap artifact (whole layers).
        #[arg(long, requires = "pull")]
        allow_full: bool,
        /// Image reference.
        image: String,
    },
    /// Wire chunksnap into containerd's config file (idempotent; keeps comments).
    ContainerdConfig(ContainerdConfigArgs),
    /// Keep a docker config.json in sync with Kubernetes image pull Secrets.
    PullSecrets(PullSecretsArgs),
    /// Watch rollouts and ask the daemon to pre-warm new images on this node.
    PrewarmWatch(prewarm::WatchArgs),
}

#[derive(Debug, Args)]
struct ContainerdConfigArgs {
    /// Print the diff only; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// containerd config file to edit.
    #[arg(long, value_name = "PATH", default_value = chunksnap::install::containerd_config::DEFAULT_CONFIG_PATH)]
    containerd_config: PathBuf,
    /// Schema version for a new file (2: containerd 1.6/1.7, 3: 2.x) [default: from `containerd --version`].
    #[arg(long, value_name = "2|3")]
    config_version: Option<chunksnap::install::containerd_config::ConfigVersion>,
}

#[derive(Debug, Args)]
struct PullSecretsArgs {
    /// Namespace whose dockerconfigjson Secrets are used (repeatable; the first listed wins
    /// for a host) [default: $POD_NAMESPACE, the daemon's own].
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// Only Secrets with this name (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Watch every namespace (needs a ClusterRole): $POD_NAMESPACE's secrets win; other
    /// namespaces' count for a host only where they all agree.
    #[arg(long, conflicts_with = "namespaces")]
    all_namespaces: bool,
    /// docker config.json rewritten (0600) whenever the credentials change; point the daemon's
    /// `docker_config` at it.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/run/chunksnap/pull-secrets.json"
    )]
    output: PathBuf,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// `/metrics` + `/healthz` address (config `metrics_address`) [default: 127.0.0.1:9883].
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<SocketAddr>,
    /// Registry host reached over plain HTTP; repeatable, added to config `plain_http`.
    #[arg(long, value_name = "HOST")]
    plain_http: Vec<String>,
    /// kubelet CredentialProviderConfig file (config `credential_provider_config`).
    #[arg(long, value_name = "FILE")]
    image_credential_provider_config: Option<PathBuf>,
    /// Directory of its plugins (config `credential_provider_bin_dir`).
    #[arg(long, value_name = "DIR")]
    image_credential_provider_bin_dir: Option<PathBuf>,
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
            if args.image_credential_provider_config.is_some() {
                config.credential_provider_config = args.image_credential_provider_config;
            }
            if args.image_credential_provider_bin_dir.is_some() {
                config.credential_provider_bin_dir = args.image_credential_provider_bin_dir;
            }
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
        Command::ContainerdConfig(args) => {
            use chunksnap::install::containerd_config as cc;
            let outcome = cc::run(&cc::Options {
                config_path: args.containerd_config,
                target: cc::Target {
                    plugin: "chunksnap".into(),
                    socket: config.address.display().to_string(),
                },
                dry_run: args.dry_run,
                new_file_version: args.config_version,
                containerd_bin: "containerd".into(),
            })
            .context("editing the containerd config")?;
            print!("{}", outcome.diff);
            for w in &outcome.warnings {
                eprintln!("chunksnap: warning: {w}");
            }
            println!("{}", outcome.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::PullSecrets(args) => {
            pull_secrets(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::PrewarmWatch(args) => {
            prewarm::watch(&config, args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Prefetch {
            plain_http,
            pull,
            allow_full,
            image,
        } => {
            config.plain_http.extend(plain_http);
            if pull {
                return prewarm::pull(&config, &image, allow_full);
            }
            store_cmds::prefetch(&config, &image)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs the pull-secret watcher until SIGTERM/SIGINT.
fn pull_secrets(args: PullSecretsArgs) -> anyhow::Result<()> {
    use chunksnap::kube::k8s_secrets::{SyncOptions, run_with_default_client};
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let token = shutdown.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            token.cancel();
        });
        // The daemon's own namespace (downward API): the default scope, and the one that
        // wins in all-namespaces mode.
        let own: Vec<String> = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|ns| !ns.is_empty())
            .into_iter()
            .collect();
        let options = SyncOptions {
            namespaces: match (args.all_namespaces, args.namespaces.is_empty()) {
                (true, _) => Vec::new(),
                (false, true) => own.clone(),
                (false, false) => args.namespaces,
            },
            preferred: own,
            names: args.names,
            output: Some(args.output),
        };
        anyhow::ensure!(
            args.all_namespaces || !options.namespaces.is_empty(),
            "name at least one --namespace (or set POD_NAMESPACE), or --all-namespaces"
        );
        run_with_default_client(&options, shutdown)
            .await
            .context("watching pull secrets")
    })
}
