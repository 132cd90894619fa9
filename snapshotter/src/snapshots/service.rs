//! containerd's Snapshots gRPC service: thin pass-throughs from requests to [`Snapshotter`]
//! calls, and from its errors to gRPC codes through the one `From<Error> for Status`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chunksnap_proto::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use chunksnap_proto::snapshots::{
    self as pb, CleanupRequest, CommitSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
use tonic::{Request, Response, Status};

use super::metadata::{Info, Kind};
use super::snapshotter::Snapshotter;
use crate::error::Error;

/// How many snapshots one List response message carries.
const LIST_BATCH: usize = 100;

/// The Snapshots service.
#[derive(Clone)]
pub struct Service {
    snapshotter: Arc<Snapshotter>,
}

impl Service {
    /// The gRPC face of `snapshotter`.
    pub fn new(snapshotter: Snapshotter) -> Self {
        Self {
            snapshotter: Arc::new(snapshotter),
        }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> SnapshotsServer<Self> {
        SnapshotsServer::new(self)
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
        let labels = r.labels.into_iter().collect();
        let mounts = self.snapshotter.prepare(r.key, r.parent, labels).await?;
        Ok(Response::new(PrepareSnapshotResponse { mounts }))
    }

    #[tracing::instrument(skip_all, fields(key = %request.get_ref().key, parent = %request.get_ref().parent))]
    async fn view(
        &self,
        request: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let labels = r.labels.into_iter().collect();
        let mounts = self.snapshotter.view(r.key, r.parent, labels).await?;
        Ok(Response::new(ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        request: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let mounts = self.snapshotter.mounts(request.into_inner().key).await?;
        Ok(Response::new(MountsResponse { mounts }))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name, key = %request.get_ref().key))]
    async fn commit(
        &self,
        request: Request<CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let labels = r.labels.into_iter().collect();
        self.snapshotter.commit(r.name, r.key, labels).await?;
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all, fields(key = %request.get_ref().key))]
    async fn remove(
        &self,
        request: Request<RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        self.snapshotter.remove(request.into_inner().key).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let info = self.snapshotter.stat(request.into_inner().key).await?;
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
        let labels: BTreeMap<_, _> = info.labels.into_iter().collect();
        let updated = self.snapshotter.update(info.name, labels, paths).await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(to_pb_info(updated)),
        }))
    }

    type ListStream = tokio_stream::Iter<std::vec::IntoIter<Result<ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let matched = self.snapshotter.list(&request.into_inner().filters).await?;
        let matched: Vec<pb::Info> = matched.into_iter().map(to_pb_info).collect();
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
        let (size, inodes) = self.snapshotter.usage(request.into_inner().key).await?;
        Ok(Response::new(UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _request: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        self.snapshotter.cleanup().await?;
        Ok(Response::new(()))
    }
}
