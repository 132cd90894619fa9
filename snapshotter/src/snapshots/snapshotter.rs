//! The snapshotter: containerd's snapshot operations over [`Local`] (metadata + directories),
//! with remote prepare through [`RemoteLayers`] and the [`Claims`] that keep a Remove from
//! deleting a directory an abandoned prepare still writes.
//!
//! Every operation makes one hop onto the blocking pool for its DB and filesystem work; a
//! remote Prepare makes one before the remote assembly (target check, the new snapshot, its
//! parents' directories and seed candidates) and one after (commit, or emptying the directory
//! on a fallback). [`super::service`] only maps gRPC requests onto these calls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chunksnap_proto::snapshots::Mount;
use prometheus_client::metrics::gauge::Gauge;

use super::claims::Claims;
use super::filter::FilterSet;
use super::local::Local;
use super::metadata::{Info, Kind};
use crate::error::{Error, Result};
use crate::labels::LABEL_TARGET_REF;
use crate::metrics::{Metrics, Outcome};
use crate::remote::{RemoteLayers, RemoteOutcome, RemoteRequest};

/// Earlier layers a remote Prepare may link identical files from.
const MAX_SEEDS: usize = 8;

/// How long a Remove waits for an abandoned prepare's writers to stop. They check for the
/// cancellation per entry and per chunk, so only a chunk fetch already in flight delays them;
/// past this, containerd hears FailedPrecondition and its garbage collector retries later.
const ABANDONED_WRITER_WAIT: Duration = Duration::from_secs(120);

/// Snapshots under one state root, remote layers assembled by a [`RemoteLayers`].
pub struct Snapshotter {
    local: Arc<Local>,
    remote: Arc<dyn RemoteLayers>,
    metrics: Metrics,
    claims: Arc<Claims>,
}

impl Snapshotter {
    /// Snapshots in `local`, assembling remote layers with `remote`.
    pub fn new(local: Arc<Local>, remote: Arc<dyn RemoteLayers>, metrics: Metrics) -> Self {
        Self {
            local,
            remote,
            metrics,
            claims: Arc::default(),
        }
    }

    /// Runs blocking DB/filesystem work on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Local) -> Result<T> + Send + 'static,
    {
        let local = Arc::clone(&self.local);
        tokio::task::spawn_blocking(move || f(&local)).await?
    }

    /// An active snapshot of `parent` for writing. With the CRI unpack labels (see
    /// [`RemoteRequest::wanted`]) the layer is first assembled remotely: success commits it
    /// under the target name and answers `AlreadyExists` (containerd skips the download),
    /// a fallback answers a normal, empty active snapshot.
    pub async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if RemoteRequest::wanted(&labels) {
            self.prepare_remote(key, parent, labels).await
        } else {
            self.create(key, parent, Kind::Active, labels).await
        }
    }

    /// A read-only view of `parent`.
    pub async fn view(
        &self,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::View, labels).await
    }

    /// Mounts of an active snapshot or view.
    pub async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        self.run(move |l| l.mounts(&key)).await
    }

    /// Commits active `key` as `name`.
    pub async fn commit(
        &self,
        name: String,
        key: String,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        self.run(move |l| l.commit(&name, &key, labels)).await
    }

    /// Removes `key` once no abandoned prepare writes into it any more, counted in
    /// `removals_in_progress` on the blocking thread itself, so the gauge stays right when
    /// containerd gives up waiting and the removal goes on.
    pub async fn remove(&self, key: String) -> Result<()> {
        let gauge = self.metrics.removals_in_progress.clone();
        let claims = Arc::clone(&self.claims);
        self.run(move |l| {
            let _counted = Counted::new(gauge);
            claims
                .cancel_and_wait(&key, ABANDONED_WRITER_WAIT)
                .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
            l.remove(&key)
        })
        .await
    }

    /// The snapshot `key`.
    pub async fn stat(&self, key: String) -> Result<Info> {
        self.run(move |l| l.stat(&key)).await
    }

    /// Updates the labels of `name` (the fields in `paths`, or all).
    pub async fn update(
        &self,
        name: String,
        labels: BTreeMap<String, String>,
        paths: Vec<String>,
    ) -> Result<Info> {
        self.run(move |l| l.update(&name, labels, &paths)).await
    }

    /// The snapshots matching any of containerd's `filters` (all when empty).
    pub async fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = FilterSet::parse(filters)?;
        let all = self.run(|l| l.list()).await?;
        Ok(all.into_iter().filter(|i| filters.matches(i)).collect())
    }

    /// `(bytes, inodes)` used by `key`.
    pub async fn usage(&self, key: String) -> Result<(i64, i64)> {
        self.run(move |l| l.usage(&key)).await
    }

    /// Removes directories no snapshot names (crash leftovers).
    pub async fn cleanup(&self) -> Result<()> {
        self.run(|l| l.cleanup().map(drop)).await
    }

    async fn create(
        &self,
        key: String,
        parent: String,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let (_, mounts) = self
            .run(move |l| l.create(&key, &parent, kind, labels))
            .await?;
        Ok(mounts)
    }

    /// Prepare with the CRI labels: assemble remotely and commit under the target name
    /// (answering `AlreadyExists`), or fall back to a normal active snapshot.
    #[tracing::instrument(skip(self, labels), fields(target))]
    async fn prepare_remote(
        &self,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let target = labels.get(LABEL_TARGET_REF).cloned().unwrap_or_default();
        tracing::Span::current().record("target", target.as_str());
        let started = Instant::now();
        let (k, p, t, lb) = (key.clone(), parent.clone(), target.clone(), labels.clone());
        let claims = Arc::clone(&self.claims);
        let (mounts, request, claim) = self
            .run(move |l| {
                match l.stat(&t) {
                    Ok(info) if info.record.kind == Kind::Committed => {
                        return Err(Error::AlreadyExists(t));
                    }
                    Ok(_) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                let (record, mounts) = l.create(&k, &p, Kind::Active, lb.clone())?;
                // From here on the directory has writers: a Remove (containerd's collector,
                // once this call is abandoned) waits for them.
                let claim = claims.claim(&k);
                let fs_dir = l.layout().fs(record.id);
                let request = match RemoteRequest::from_labels(&k, &p, &lb, fs_dir) {
                    Some(mut req) => {
                        req.parent_dirs = l.parent_dirs(&k)?;
                        req.seeds =
                            l.seed_candidates(&req.layer_digest, &req.image_ref, MAX_SEEDS)?;
                        req.claim = claim.clone();
                        Some(req)
                    }
                    None => None,
                };
                Ok((mounts, request, claim))
            })
            .await?;
        // Dropping this call cancels the writers.
        let cancel_on_drop = claim.cancel_on_drop();
        let outcome = match request {
            Some(req) => self.remote.prepare_remote(req).await,
            None => RemoteOutcome::Fallback("incomplete remote labels".into()),
        };
        self.metrics
            .prepare_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            RemoteOutcome::Assembled { size, inodes } => {
                // The writers are done; the Remove below must not wait for this call itself.
                self.claims.release(&key);
                drop((cancel_on_drop, claim));
                let (k, t) = (key.clone(), target.clone());
                let committed = self
                    .run(move |l| l.commit_with_usage(&t, &k, labels, (size, inodes)))
                    .await;
                match committed {
                    Ok(()) => {
                        self.metrics.prepare(Outcome::remote);
                        tracing::info!(size, inodes, "layer assembled remotely");
                        Err(Error::AlreadyExists(target))
                    }
                    Err(e) => {
                        // Another pull may have committed the same target first: then ours
                        // is redundant and containerd must still hear AlreadyExists.
                        if let Err(re) = self.remove(key).await {
                            tracing::warn!(cause = %re, "failed to remove redundant snapshot");
                        }
                        if matches!(e, Error::AlreadyExists(_)) {
                            self.metrics.prepare(Outcome::remote);
                            Err(Error::AlreadyExists(target))
                        } else {
                            self.metrics.prepare(Outcome::error);
                            Err(e)
                        }
                    }
                }
            }
            RemoteOutcome::Fallback(reason) => {
                tracing::info!(%reason, "remote prepare fell back to a normal pull");
                let k = key.clone();
                let emptying = claim.clone();
                let reset = self
                    .run(move |l| {
                        let _writing = emptying;
                        l.reset_fs(&k)
                    })
                    .await;
                self.claims.release(&key);
                if let Err(e) = reset {
                    self.metrics.prepare(Outcome::error);
                    return Err(e);
                }
                self.metrics.prepare(Outcome::fallback);
                Ok(mounts)
            }
        }
    }
}

/// Counts one removal in a gauge while alive, so a panicking removal is uncounted too.
struct Counted(Gauge);

impl Counted {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}
