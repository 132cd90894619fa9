//! Keeps a [`PullSecrets`] map current from the Kubernetes API and optionally exports it.
//!
//! One `kube::runtime::watcher` per scope: per namespace (or the whole cluster), and per Secret
//! name when names are given (so RBAC can be limited with `resourceNames`). The watcher lists,
//! then watches from the list's resourceVersion, re-lists after a `410 Gone`, and backs off on
//! errors. A re-list replaces the scope's Secrets atomically (`InitDone`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use super::{DOCKERCONFIGJSON_TYPE, Error, PullSecrets};

/// What to watch (the `chunksnap pull-secrets` flags).
#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// Namespaces watched (`--namespace`, repeatable), highest precedence first; empty: all
    /// namespaces.
    pub namespaces: Vec<String>,
    /// With all namespaces watched: namespaces whose secrets take precedence (the daemon's
    /// own), in this order; other namespaces' secrets count only where they agree.
    pub preferred: Vec<String>,
    /// Only these Secret names (`--name`, repeatable); empty: every dockerconfigjson Secret.
    pub names: Vec<String>,
    /// Docker `config.json` rewritten (mode 0600, atomically) whenever the credentials change
    /// (`--output`).
    pub output: Option<PathBuf>,
}

/// One watcher's reach.
#[derive(Clone, Debug)]
pub(super) struct Scope {
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
}

/// Watches pull secrets into `secrets` until `shutdown`; watch errors are logged and retried
/// with backoff, so this returns only on shutdown or when the output cannot be written.
pub async fn run(
    client: kube::Client,
    options: &SyncOptions,
    secrets: PullSecrets,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let scopes = scopes(options);
    let streams = scopes.iter().enumerate().map(|(index, scope)| {
        let api: Api<Secret> = match &scope.namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        };
        let mut fields = format!("type={DOCKERCONFIGJSON_TYPE}");
        if let Some(name) = &scope.name {
            fields.push_str(",metadata.name=");
            fields.push_str(name);
        }
        watcher::watcher(api, watcher::Config::default().fields(&fields))
            .default_backoff()
            .map(move |event| (index, event))
            .boxed()
    });
    let mut events = stream::select_all(streams);
    // Objects of a list in progress, per scope, applied together at InitDone.
    let mut pending: Vec<Vec<Secret>> = vec![Vec::new(); scopes.len()];
    let mut written: Option<String> = None;

    loop {
        let (index, event) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = events.next() => match next {
                Some(item) => item,
                None => return Ok(()),
            },
        };
        let scope = &scopes[index];
        match event {
            Ok(Event::Init) => pending[index].clear(),
            Ok(Event::InitApply(secret)) => pending[index].push(secret),
            Ok(Event::InitDone) => {
                let listed = std::mem::take(&mut pending[index]);
                secrets.replace_scope(scope.namespace.as_deref(), scope.name.as_deref(), &listed);
                tracing::info!(
                    namespace = scope.namespace.as_deref().unwrap_or("*"),
                    listed = listed.len(),
                    hosts = secrets.hosts().len(),
                    "pull secrets listed"
                );
            }
            Ok(Event::Apply(secret)) => {
                let usable = secrets.apply(&secret);
                tracing::info!(
                    namespace = secret.metadata.namespace.as_deref().unwrap_or_default(),
                    secret = secret.metadata.name.as_deref().unwrap_or_default(),
                    usable,
                    "pull secret updated"
                );
            }
            Ok(Event::Delete(secret)) => {
                secrets.delete(&secret);
                tracing::info!(
                    namespace = secret.metadata.namespace.as_deref().unwrap_or_default(),
                    secret = secret.metadata.name.as_deref().unwrap_or_default(),
                    "pull secret deleted"
                );
            }
            Err(err) => {
                // kube errors carry status and URL, never Secret data.
                tracing::warn!(
                    namespace = scope.namespace.as_deref().unwrap_or("*"),
                    error = %err,
                    "pull secret watch failed; retrying"
                );
                continue;
            }
        }
        if let Some(path) = &options.output {
            let json = secrets.to_docker_config_json();
            if written.as_deref() != Some(json.as_str()) {
                let path = path.clone();
                let to_write = json.clone();
                tokio::task::spawn_blocking(move || write_private(&path, &to_write)).await??;
                written = Some(json);
            }
        }
    }
}

/// `chunksnap pull-secrets`: connects with the in-cluster service account (or `KUBECONFIG`)
/// and runs [`run`] with a fresh map until `shutdown`.
pub async fn run_with_default_client(
    options: &SyncOptions,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let client = kube::Client::try_default().await?;
    run(
        client,
        options,
        PullSecrets::with_priority(priority(options)),
        shutdown,
    )
    .await
}

/// The namespaces whose secrets win, in order: those watched, or else the preferred ones.
pub fn priority(options: &SyncOptions) -> Vec<String> {
    if options.namespaces.is_empty() {
        options.preferred.clone()
    } else {
        options.namespaces.clone()
    }
}

pub(super) fn scopes(options: &SyncOptions) -> Vec<Scope> {
    let namespaces: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    let names: Vec<Option<String>> = if options.names.is_empty() {
        vec![None]
    } else {
        options.names.iter().cloned().map(Some).collect()
    };
    namespaces
        .iter()
        .flat_map(|namespace| {
            names.iter().map(|name| Scope {
                namespace: namespace.clone(),
                name: name.clone(),
            })
        })
        .collect()
}

/// Writes `text` to `path` with mode 0600 via a temp file and rename, so readers see the old
/// or the new credentials, never a torn file.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let io = |op, source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` applies only to new files; a leftover temp file may have had another.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|source| io("write", source))
}
