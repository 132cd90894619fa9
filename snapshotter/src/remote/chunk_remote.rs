//! [`ChunkRemote`], the [`RemoteLayers`] of the daemon: fills a snapshot's `fs` directory from
//! the node chunk store.
//!
//! For one CRI layer Prepare it finds the image's chunksnap artifact and the layer index
//! ([`super::index_source`]), fetches the chunks the store lacks from the registry's packs and
//! assembles the layer in overlay form, linking files from layers already on the node
//! ([`super::prepare`]); it starts fetching the image's other layers in the background
//! ([`super::prefetch`]). Any failure is turned into [`RemoteOutcome::Fallback`], so
//! containerd pulls the layer itself.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chunksnap_core::fetch::{
    EarlyPacks, FetchOptions, FetchStats, Inflight, WithEarlyPacks, fetch_needed,
};
use chunksnap_core::registry::{RegistryClient, RepoRangeSource};
use chunksnap_core::store::ChunkStore;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::LayerIndex;
use oci_client::Reference;

pub use super::error::RemoteError;
use super::index_source::IndexSource;
use super::layer_verify::VerifyPolicy;
use crate::metrics::Metrics;
use crate::remote::{RemoteFuture, RemoteLayers, RemoteOutcome, RemoteRequest};

/// [`RemoteLayers`] backed by a registry client, a chunk store and the assembler.
pub struct ChunkRemote {
    pub(super) client: RegistryClient,
    pub(super) store: Arc<ChunkStore>,
    pub(super) inflight: Inflight,
    pub(super) fetch: FetchOptions,
    pub(super) metrics: Metrics,
    /// Artifacts and layer indexes.
    pub(super) source: IndexSource,
    /// Layers whose chunks are being fetched in the background.
    pub(super) prefetching: Mutex<HashSet<Digest>>,
    /// Registries whose assembled layers are committed without verification.
    pub(super) verify: VerifyPolicy,
}

/// Node-specific settings of [`ChunkRemote`].
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Registry host -> mirror hosts, tried in order before the host itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Directory for layer indexes (seeding needs the index of a layer already on the node).
    pub index_dir: Option<PathBuf>,
    /// Registries whose assembled layers are committed without verification.
    pub verify: VerifyPolicy,
}

impl ChunkRemote {
    /// A remote path over `store`, fetching with `client`.
    pub fn new(
        client: RegistryClient,
        store: Arc<ChunkStore>,
        fetch: FetchOptions,
        metrics: Metrics,
    ) -> Arc<Self> {
        Self::with_options(client, store, fetch, metrics, NodeOptions::default())
    }

    /// Like [`ChunkRemote::new`], with mirrors and an index directory.
    pub fn with_options(
        client: RegistryClient,
        store: Arc<ChunkStore>,
        fetch: FetchOptions,
        metrics: Metrics,
        node: NodeOptions,
    ) -> Arc<Self> {
        metrics.store_bytes.set(store.stats().bytes as i64);
        Arc::new(Self {
            source: IndexSource::new(
                client.clone(),
                metrics.clone(),
                node.mirrors,
                node.index_dir,
            ),
            client,
            store,
            inflight: Inflight::with_request_limit(fetch.parallelism),
            fetch,
            metrics,
            prefetching: Mutex::new(HashSet::new()),
            verify: node.verify,
        })
    }

    /// The node store.
    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    /// Fetches the chunks of `ix` the store lacks (of those `needed`, or all), counted in the
    /// metrics; ranges of the `early` packs come from memory.
    pub(super) async fn fetch_chunks(
        &self,
        image: &Reference,
        ix: &LayerIndex,
        needed: Option<&[bool]>,
        early: EarlyPacks,
    ) -> Result<FetchStats, RemoteError> {
        let registry = RepoRangeSource {
            client: self.client.clone(),
            repo: image.clone(),
        };
        let source = WithEarlyPacks {
            inner: &registry,
            early,
        };
        let stats = fetch_needed(
            ix,
            needed,
            &self.store,
            &source,
            &self.fetch,
            &self.inflight,
        )
        .await?;
        self.metrics.chunks_fetched.inc_by(stats.chunks_fetched);
        self.metrics.bytes_fetched.inc_by(stats.bytes_fetched);
        self.metrics.chunks_reused.inc_by(stats.chunks_reused);
        self.metrics.delta_chunks.inc_by(stats.chunks_from_deltas);
        self.metrics.delta_fallbacks.inc_by(stats.delta_fallbacks);
        Ok(stats)
    }
}

/// Newtype so the service can hold the remote path as `Arc<dyn RemoteLayers>`.
pub struct ChunkRemoteLayers(pub Arc<ChunkRemote>);

impl RemoteLayers for ChunkRemoteLayers {
    fn prepare_remote(&self, req: RemoteRequest) -> RemoteFuture<'_> {
        Box::pin(async move {
            match self.0.prepare_layer(&req).await {
                Ok(outcome) => outcome,
                Err(e) => RemoteOutcome::Fallback(e.to_string()),
            }
        })
    }
}
