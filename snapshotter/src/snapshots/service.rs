//! containerd's Snapshots gRPC service over [`Local`], with remote prepare through
//! [`RemoteLayers`].
//!
//! Every DB and filesystem step runs on the blocking pool through [`Service::run`]. Errors
//! become gRPC codes in one place (`From<Error> for Status`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chunksnap_proto::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use chunksnap_proto::snapshots::{
    self as pb, CleanupRequest, CommitSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
use prometheus_client::metrics::gauge::Gauge;
use tonic::{Request, Response, Status};

use crate::snapshots::claims::Claims;
use crate::error::{Error, Result};
use crate::snapshots::filter::FilterSet;
use crate::snapshots::local::Local;
use crate::snapshots::metadata::{Info, Kind};
use crate::metrics::{Metrics, Outcome};
use crate::labels::LABEL_TARGET_REF;
use crate::remote::{RemoteLayers, RemoteOutcome, RemoteRequest};

/// Earlier layers a remote Prepare may link identical files from.
const MAX_SEEDS: usize = 8;

/// How many snapshots one List response message carries.
const LIST_BATCH: usize = 100;

/// How long a Remove waits for an abandoned prepare's writers to stop. They check for the
/// cancellation per entry and per chunk, so only a chunk fetch already in flight delays them;
/// past this, containerd hears FailedPrecondition and its garbage collector retries later.
const ABANDONED_WRITER_WAIT: Duration = Duration::from_secs(120);

/// The Snapshots service.
#[derive(Clone)]
pub struct Service {
    local: Arc<Local>,
    remote: Arc<dyn RemoteLayers>,
    metrics: Metrics,
    claims: Arc<Claims>,
}

impl Service {
    /// A service over `local`, assembling remote layers with `remote`.
    pub fn new(local: Arc<Local>, remote: Arc<dyn RemoteLayers>, metrics: Metrics) -> Self {
        Self {
            local,
            remote,
            metrics,
            claims: Arc::default(),
        }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> SnapshotsServer<Self> {
        SnapshotsServer::new(self)
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

    /// Removes `key` once no abandoned prepare writes into it any more, counted in
    /// `removals_in_progress` on the blocking thread itself, so the gauge stays right when
    /// containerd gives up waiting and the removal goes on.
    async fn remove_snapshot(&self, key: String) -> Result<()> {
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

    async fn create(
        &self,
        key: String,
        parent: String,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<pb::Mount>> {
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
    ) -> Result<Vec<pb::Mount>> {
        let target = labels.get(LABEL_TARGET_REF).cloned().unwrap_or_default();
        tracing::Span::current().record("target", target.as_str());
        let t = target.clone();
        match self.run(move |l| l.stat(&t)).await {
            Ok(info) if info.record.kind == Kind::Committed => {
                return Err(Error::AlreadyExists(target));
            }
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let started = Instant::now();
        let (k, p, lb) = (key.clone(), parent.clone(), labels.clone());
        let (record, mounts) = self
            .run(move |l| l.create(&k, &p, Kind::Active, lb))
            .await?;
        // From here on the directory has writers: a Remove (containerd's collector, once this
        // call is abandoned) waits for them, and dropping this call cancels them.
        let claim = self.claims.claim(&key);
        let cancel_on_drop = claim.cancel_on_drop();
        let fs_dir = self.local.layout().fs(record.id);
        let k = key.clone();
        let parent_dirs = self.run(move |l| l.parent_dirs(&k)).await?;
        let outcome = match RemoteRequest::from_labels(&key, &parent, &labels, fs_dir) {
            Some(mut req) => {
                req.parent_dirs = parent_dirs;
                req.claim = claim.clone();
                let (layer, image) = (req.layer_digest.clone(), req.image_ref.clone());
                req.seeds = self
                    .run(move |l| l.seed_candidates(&layer, &image, MAX_SEEDS))
                    .await?;
                self.remote.prepare_remote(req).await
            }
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
                        let k = key.clone();
                        if let Err(re) = self.remove_snapshot(k).await {
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
                let reset = self.run(move |l| {
                    let _writing = emptying;
                    l.reset_fs(&k)
                });
                let reset = reset.await;
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

/// Converts a record to containerd's `Info`.
pub fn to_pb_info(info: Info) -> pb::Info {
    let kind = match info.record.kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    };
    pb::Info {
        name: info.name,
        parent: info.record.parent,
        kind: kind as i32,
        created_at: Some(info.record.created.into()),
        updated_at: Some(info.record.updated.into()),
        labels: info.record.labels.into_iter().collect(),
    }
}

#[tonic::async_trait]
impl Snapshots for Service {
    #[tracing::instrument(skip_all, fields(key = %request.get_ref().key, parent = %request.get_ref().parent))]
    async fn prepare(
        &self,
        request: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let labels: BTreeMap<_, _> = r.labels.into_iter().collect();
        let mounts = if RemoteRequest::wanted(&labels) {
            self.prepare_remote(r.key, r.parent, labels).await?
        } else {
            self.create(r.key, r.parent, Kind::Active, labels).await?
        };
        Ok(Response::new(PrepareSnapshotResponse { mounts }))
    }

    #[tracing::instrument(skip_all, fields(key = %request.get_ref().key, parent = %request.get_ref().parent))]
    async fn view(
        &self,
        request: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let labels = r.labels.into_iter().collect();
        let mounts = self.create(r.key, r.parent, Kind::View, labels).await?;
        Ok(Response::new(ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        request: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let key = request.into_inner().key;
        let mounts = self.run(move |l| l.mounts(&key)).await?;
        Ok(Response::new(MountsResponse { mounts }))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name, key = %request.get_ref().key))]
    async fn commit(
        &self,
        request: Request<CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let labels = r.labels.into_iter().collect();
        self.run(move |l| l.commit(&r.name, &r.key, labels)).await?;
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all, fields(key = %request.get_ref().key))]
    async fn remove(
        &self,
        request: Request<RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        self.remove_snapshot(key).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let key = request.into_inner().key;
        let info = self.run(move |l| l.stat(&key)).await?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(to_pb_info(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = r
            .info
            .ok_or_else(|| Error::InvalidArgument("update without info".into()))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels = info.labels.into_iter().collect();
        let name = info.name;
        let updated = self.run(move |l| l.update(&name, labels, &paths)).await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(to_pb_info(updated)),
        }))
    }

    type ListStream = tokio_stream::Iter<std::vec::IntoIter<Result<ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = FilterSet::parse(&request.into_inner().filters)?;
        let all = self.run(|l| l.list()).await?;
        let matched: Vec<pb::Info> = all
            .into_iter()
            .filter(|i| filters.matches(i))
            .map(to_pb_info)
            .collect();
        let batches: Vec<_> = matched
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(
        &self,
        request: Request<UsageRequest>,
    ) -> Result<Response<UsageResponse>, Status> {
        let key = request.into_inner().key;
        let (size, inodes) = self.run(move |l| l.usage(&key)).await?;
        Ok(Response::new(UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _request: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        self.run(|l| l.cleanup()).await?;
        Ok(Response::new(()))
    }
}
