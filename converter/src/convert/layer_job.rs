//! One layer's conversion: the layer streamed through the converter on a blocking thread while
//! a task uploads its packs through a bounded queue, then its index pushed; and copying blobs
//! found in another repository into the image's own.

use std::sync::Arc;

use bytes::Bytes;
use chunksnap_core::registry::{Reference, RegistryClient, RegistryError};
use chunksnap_format::artifact::{self, IndexDelta, LayerEntry};
use chunksnap_format::digest::Digest;
use chunksnap_format::index;
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{ConvertOptions, LayerReport};
use crate::ConvertError;
use crate::catalog::Catalog;
use crate::delta::{self, add_deltas};
use crate::layer::{self, LayerInput, PackSink, SinkError};
use crate::progress::{Progress, short};

/// Packs waiting for upload per layer; with packs of at most 32 MiB this bounds memory.
const UPLOAD_QUEUE: usize = 2;

/// Hands finished packs to the uploader task; blocks (on the conversion thread) when the queue
/// is full, which is what bounds memory.
struct UploadSink {
    tx: mpsc::Sender<(Digest, Vec<u8>)>,
}

impl PackSink for UploadSink {
    fn put_pack(&mut self, digest: &Digest, data: Vec<u8>) -> Result<(), SinkError> {
        self.tx
            .blocking_send((*digest, data))
            .map_err(|_| "the pack uploader stopped".into())
    }
}

pub(super) struct LayerResult {
    pub(super) report: LayerReport,
    pub(super) entry: LayerEntry,
    /// The new index, to extend the catalog (None when reused).
    pub(super) index: Option<chunksnap_format::pb::LayerIndex>,
}

/// Streams one layer through `layer::convert_layer` on a blocking thread while a task uploads
/// its packs, then pushes its index blob.
#[tracing::instrument(skip_all, fields(layer = %input.digest))]
pub(super) async fn convert_one(
    client: &RegistryClient,
    image: &Reference,
    input: LayerInput,
    opts: &ConvertOptions,
    catalog: Arc<Catalog>,
    progress: &Progress,
) -> Result<LayerResult, ConvertError> {
    let layer_name = input.digest.to_string();
    let bar = progress.layer(&short(&input.digest), input.size);
    let (_, stream) = client.blob_stream(image, &input.digest).await?;
    let counted = {
        let bar = bar.clone();
        stream.inspect_ok(move |b| bar.inc(b.len() as u64))
    };
    let reader = SyncIoBridge::new(StreamReader::new(counted));

    let (tx, mut rx) = mpsc::channel::<(Digest, Vec<u8>)>(UPLOAD_QUEUE);
    let uploader = {
        let client = client.clone();
        let image = image.clone();
        tokio::spawn(async move {
            let mut pushed = 0u64;
            while let Some((digest, data)) = rx.recv().await {
                let n = data.len() as u64;
                if client.push_blob(&image, &digest, Bytes::from(data)).await? {
                    pushed += n;
                }
            }
            Ok::<u64, RegistryError>(pushed)
        })
    };

    let layer_opts = opts.layer.clone();
    let input2 = input.clone();
    let cat = catalog.clone();
    let converted = tokio::task::spawn_blocking(move || {
        let mut sink = UploadSink { tx };
        layer::convert_layer(reader, &input2, &layer_opts, &*cat, &mut sink)
    })
    .await?;
    // The sink is gone now, so the uploader drains and ends; its error explains a failed sink.
    let pushed = uploader.await?.map_err(|source| ConvertError::Upload {
        layer: layer_name.clone(),
        source,
    })?;
    let mut outcome = converted.map_err(|source| ConvertError::Layer {
        layer: layer_name.clone(),
        source,
    })?;
    // The new packs are in the registry now: the delta pass reads its chunks back from there.
    bar.set_message("deltas");
    let (mut deltas, base) = add_deltas(
        client,
        image,
        &catalog,
        &mut outcome.index,
        &outcome.stats.packs,
        &outcome.sketches,
        &opts.deltas,
    )
    .await?;
    let ix = outcome.index.clone();
    let (encoded, raw_digest, idelta) = tokio::task::spawn_blocking(move || {
        let raw = index::encode_raw(&ix);
        let blob = index::compress_raw(&raw);
        let idelta = match &base {
            Some(b) => delta::index_delta(b, &raw, blob.len())?
                .map(|f| (f, b.layer, Digest::of(&b.raw_index))),
            None => None,
        };
        Ok::<_, delta::DeltaError>((blob, Digest::of(&raw), idelta))
    })
    .await??;
    deltas.index_bytes = encoded.len() as u64;
    let index_delta = match idelta {
        Some((frame, base_layer, base_raw)) => {
            let digest = Digest::of(&frame);
            let size = frame.len() as u64;
            deltas.index_delta_bytes = size;
            if client.push_blob(image, &digest, Bytes::from(frame)).await? {
                deltas.bytes_pushed += size;
            }
            Some(IndexDelta {
                digest,
                size,
                base_layer,
                base_raw,
                raw: raw_digest,
                packs: delta::delta_packs(&outcome.index)?,
            })
        }
        None => None,
    };

    let index_digest = Digest::of(&encoded);
    let index_size = encoded.len() as u64;
    let index_inline = (encoded.len() <= artifact::MAX_EMBEDDED).then(|| encoded.clone());
    let index_pushed = client
        .push_blob(image, &index_digest, Bytes::from(encoded))
        .await?;
    let sketch_blob = crate::sketch::encode(&outcome.sketches);
    let sketch = (Digest::of(&sketch_blob), sketch_blob.len() as u64);
    if client
        .push_blob(image, &sketch.0, Bytes::from(sketch_blob))
        .await?
    {
        deltas.bytes_pushed += sketch.1;
    }
    bar.finish_with_message(format!(
        "{} chunks, {} new, {} deltas",
        outcome.stats.chunks, outcome.stats.new_chunks, deltas.deltas
    ));

    let packs = outcome
        .index
        .packs
        .iter()
        .map(|p| Ok((Digest::parse(&p.digest)?, p.size)))
        .collect::<Result<Vec<_>, ConvertError>>()?;
    let s = &outcome.stats;
    Ok(LayerResult {
        report: LayerReport {
            digest: layer_name,
            index: index_digest.to_string(),
            reused: false,
            entries: s.entries,
            chunks: s.chunks,
            new_chunks: s.new_chunks,
            bytes_read: s.bytes_read,
            bytes_pushed: pushed + deltas.bytes_pushed + if index_pushed { index_size } else { 0 },
            deltas,
        },
        entry: LayerEntry {
            layer_digest: input.digest,
            index_digest,
            index_size,
            index_inline,
            packs,
            index_delta,
            sketch: Some(sketch),
        },
        index: Some(outcome.index),
    })
}

/// Copies the blob `digest` into `image`'s repository when it was found in another repository
/// (`home`) and this one lacks it: nodes read indexes and packs from the image's own repository.
pub(super) async fn copy_if_foreign(
    client: &RegistryClient,
    image: &Reference,
    home: &Reference,
    digest: &Digest,
    size: u64,
) -> Result<(), ConvertError> {
    if home.resolve_registry() == image.resolve_registry()
        && home.repository() == image.repository()
    {
        return Ok(());
    }
    if client.blob_exists(image, digest).await? {
        return Ok(());
    }
    if client.mount_blob(image, home, digest).await? && client.blob_exists(image, digest).await? {
        return Ok(());
    }
    // Another registry, or the mount was declined: copy (blobs are at most one pack, 32 MiB).
    let data = client.read_blob(home, digest, size).await?;
    client.push_blob(image, digest, Bytes::from(data)).await?;
    Ok(())
}
