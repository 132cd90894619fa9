//! Preparing one layer: the index, the seeds, the fetch of the chunks the store lacks, and
//! the assembly into the snapshot's `fs` directory in overlay form.
//!
//! Files identical to ones in layers already on the node (the request's seed candidates, whose
//! indexes are kept on disk) are hardlinked from there, and only the chunks of the other files
//! are fetched; should a seed file fail its check, its chunks are fetched on demand while
//! assembling. Fetching and assembling overlap.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chunksnap_core::assemble::{AssembleOptions, ChunkReader, Seed, Seeding, WhiteoutMode};
use chunksnap_core::fetch::EarlyPacks;
use chunksnap_core::registry::RegistryClient;
use chunksnap_core::store::StoreError;
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::{EntryType, LayerIndex};
use oci_client::Reference;

use chunksnap_core::verify::VerifyError;

use super::cancel::unless_cancelled;
use super::chunk_remote::ChunkRemote;
use super::error::{RemoteError, chunk_digests, parse_label};
use super::layer_verify::{Expected, assemble_checked};
use crate::remote::{RemoteOutcome, RemoteRequest, SeedCandidate};
use crate::snapshots::claims::DirClaim;

impl ChunkRemote {
    /// The seed candidates whose index is on the node, as seeds.
    async fn seeds(&self, candidates: &[SeedCandidate]) -> Vec<Seed> {
        let mut seeds = Vec::new();
        for c in candidates {
            let Ok(layer) = Digest::parse(&c.layer_digest) else {
                continue;
            };
            if let Some(index) = self.source.cached_index(&layer).await {
                seeds.push(Seed {
                    index,
                    dir: c.fs_dir.clone(),
                });
            }
        }
        seeds
    }

    /// Fills `req.fs_dir` with the layer: the [`RemoteLayers`](crate::remote::RemoteLayers)
    /// call of [`super::chunk_remote::ChunkRemoteLayers`].
    pub(super) async fn prepare_layer(
        self: &Arc<Self>,
        req: &RemoteRequest,
    ) -> Result<RemoteOutcome, RemoteError> {
        let t0 = Instant::now();
        let asked = RegistryClient::parse_reference(&req.image_ref)?;
        let manifest = parse_label("cri.manifest-digest", &req.manifest_digest)?;
        let layer = parse_label("cri.layer-digest", &req.layer_digest)?;
        let (image, artifact) = self.source.artifact(&asked, &manifest).await?;
        self.prefetch_siblings(&image, &artifact, req);
        let artifact_ms = t0.elapsed().as_millis() as u64;
        let early = self.early_delta_packs(&image, &artifact, &layer).await;
        let ix = self.source.layer_index(&image, &artifact, &layer).await?;
        chunksnap_core::fetch::check_layer(
            &ix,
            self.store.stats().budget,
            self.fetch.max_layer_content,
        )?;
        let verify = !self.verify.skips(asked.registry());
        if verify && ix.tar_split.is_none() {
            return Err(RemoteError::NotVerifiable);
        }
        let index_ms = t0.elapsed().as_millis() as u64 - artifact_ms;
        let seeds = self.seeds(&req.seeds).await;
        let (ix2, claim) = (ix.clone(), req.claim.clone());
        let (seeding, needed) = tokio::task::spawn_blocking(move || {
            // An abandoned prepare stops planning too, as it stops assembling.
            let seeding = Seeding::plan_cancellable(&ix2, seeds, claim.flag())
                .map_err(|_| chunksnap_core::assemble::AssembleError::Cancelled)?;
            let needed = seeding.needed_chunks(&ix2);
            Ok::<_, RemoteError>((seeding, needed))
        })
        .await??;
        let pin = self.store.pin(chunk_digests(&ix));
        let started = Instant::now();
        let plan_ms = t0.elapsed().as_millis() as u64 - artifact_ms - index_ms;
        // Fetching and assembling overlap: the assembler writes what is local (and links seeds)
        // while the missing chunks arrive; a chunk it reaches first is waited for (or fetched)
        // by the reader.
        let fetch_failed = Arc::new(AtomicBool::new(false));
        let fetch = {
            let (this, image, ix, failed, early) = (
                self.clone(),
                image.clone(),
                ix.clone(),
                fetch_failed.clone(),
                early.clone(),
            );
            let token = req.claim.token();
            tokio::spawn(async move {
                let fetch = this.fetch_chunks(&image, &ix, Some(&needed), early);
                let result = unless_cancelled(&token, fetch).await;
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                (result, started.elapsed())
            })
        };
        let reader = FetchingReader {
            remote: self.clone(),
            image: image.clone(),
            index: ix.clone(),
            runtime: tokio::runtime::Handle::current(),
            give_up: fetch_failed,
            claim: req.claim.clone(),
            proven_by_diff_id: verify,
            early,
        };
        let dest = req.fs_dir.clone();
        let parents: Vec<PathBuf> = req.parent_dirs.clone();
        let ix2 = ix.clone();
        // The thread holds the claim (in `reader`) until it returns: a Remove of an abandoned
        // prepare cancels it and waits for that.
        let expected = verify.then(|| Expected {
            parent: req.parent.clone(),
            target: req.target.clone(),
        });
        let assembled = tokio::task::spawn_blocking(move || {
            let opts = AssembleOptions {
                mode: WhiteoutMode::Overlay,
                parents: &parents,
                seeding: Some(&seeding),
                cancel: Some(reader.claim.flag()),
                progress: None,
            };
            assemble_checked(&ix2, &dest, &reader, &opts, expected.as_ref())
        })
        .await;
        let assemble_ms = started.elapsed().as_millis() as u64;
        // The fetch's own error is the cause when both failed.
        let (stats, fetched_in) = fetch.await?;
        let stats = stats?;
        let (assembled, verified_in) = match assembled? {
            Ok(done) => done,
            Err(RemoteError::Verify(e)) if !matches!(e, VerifyError::Cancelled) => {
                self.metrics.verify_failures.inc();
                self.source.forget_unverified(&asked, &manifest, &layer);
                self.scrub(&ix);
                tracing::warn!(
                    %layer,
                    image = %req.image_ref,
                    artifact_repository = %image.whole(),
                    cause = %e,
                    "assembled layer is NOT the image's layer; discarding it and pulling the layer normally"
                );
                return Err(RemoteError::Verify(e));
            }
            Err(e) => return Err(e),
        };
        // With verification skipped (the operator's choice) the index is kept as before.
        self.source.remember_verified(layer, &ix);
        drop(pin);
        self.after_prepare();
        self.metrics.seeded_files.inc_by(assembled.seeded_files);
        self.metrics.seeded_bytes.inc_by(assembled.seeded_bytes);
        self.metrics.seeds_rejected.inc_by(assembled.seeds_rejected);
        tracing::info!(
            layer = %layer,
            chunks_fetched = stats.chunks_fetched,
            bytes_fetched = stats.bytes_fetched,
            chunks_reused = stats.chunks_reused,
            chunks_from_deltas = stats.chunks_from_deltas,
            requests = stats.requests,
            files = assembled.files,
            seeded_files = assembled.seeded_files,
            seeded_bytes = assembled.seeded_bytes,
            seeds_rejected = assembled.seeds_rejected,
            artifact_ms,
            index_ms,
            plan_ms,
            fetch_ms = fetched_in.as_millis() as u64,
            assemble_ms,
            verified = verify,
            verify_ms = verified_in.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "layer assembled from chunks"
        );
        Ok(RemoteOutcome::Assembled {
            size: (assembled.bytes_written + entry_overhead(&ix)) as i64,
            inodes: ix.entries.len() as i64,
        })
    }

    /// After a layer failed its diffID check: reads each of its chunks in the store hashed, in
    /// the background, which deletes those damaged on disk (the assembly read them unhashed), so
    /// the next prepare fetches them again.
    fn scrub(self: &Arc<Self>, ix: &Arc<LayerIndex>) {
        let (store, ix) = (self.store.clone(), ix.clone());
        tokio::task::spawn_blocking(move || {
            let mut seen = std::collections::HashSet::new();
            let damaged = ix
                .chunks
                .iter()
                .filter_map(|c| Some((Digest::from_slice(&c.digest).ok()?, c.size)))
                .filter(|(d, _)| seen.insert(*d) && store.contains(d))
                .filter(|(d, size)| matches!(store.get(d, *size), Err(StoreError::Missing(_))))
                .count();
            if damaged > 0 {
                tracing::warn!(
                    damaged,
                    "removed damaged chunks of a layer that failed its check"
                );
            }
        });
    }

    /// Keeps the store within its budget and the gauge current (eviction never touches pinned
    /// chunks of in-flight prepares).
    fn after_prepare(self: &Arc<Self>) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.store.evict_to_budget() {
                tracing::warn!(cause = %e, "chunk store eviction failed");
            }
            this.metrics
                .store_bytes
                .set(this.store.stats().bytes as i64);
        });
    }
}

/// The store as the assembler's chunk source; a chunk it lacks (a seed file that failed its
/// check, or an eviction race) is fetched from the registry there and then. Used on blocking
/// threads only.
struct FetchingReader {
    remote: Arc<ChunkRemote>,
    image: Reference,
    index: Arc<LayerIndex>,
    runtime: tokio::runtime::Handle,
    /// Set when the layer's fetch failed: the prepare falls back, so do not fetch chunk by chunk.
    give_up: Arc<AtomicBool>,
    /// The prepare's claim: once cancelled, nothing more is fetched for it.
    claim: DirClaim,
    /// The layer is checked against its diffID: chunks are read without hashing each again
    /// (should one be damaged on disk, the check fails and the layer's chunks are scrubbed).
    proven_by_diff_id: bool,
    /// The layer's delta packs read early: a chunk the assembly reaches before the fetch has
    /// claimed it comes from there too.
    early: EarlyPacks,
}

impl FetchingReader {
    fn get(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        if self.proven_by_diff_id {
            self.remote.store.get_unhashed(digest, size)
        } else {
            self.remote.store.get(digest, size)
        }
    }
}

impl ChunkReader for FetchingReader {
    fn read_chunk(&self, digest: &Digest, size: u32) -> Result<Vec<u8>, StoreError> {
        match self.get(digest, size) {
            Err(StoreError::Missing(_))
                if !self.give_up.load(Ordering::Relaxed) && !self.claim.is_cancelled() => {}
            other => return other,
        }
        let needed: Vec<bool> = self
            .index
            .chunks
            .iter()
            .map(|c| c.digest.as_slice() == digest.as_bytes().as_slice())
            .collect();
        let _pin = self.remote.store.pin([*digest]);
        let fetch =
            self.remote
                .fetch_chunks(&self.image, &self.index, Some(&needed), self.early.clone());
        let fetched = self
            .runtime
            .block_on(unless_cancelled(&self.claim.token(), fetch));
        if let Err(e) = fetched {
            tracing::warn!(%digest, cause = %e, "fetching a chunk while assembling failed");
            return Err(StoreError::Missing(*digest));
        }
        self.get(digest, size)
    }
}

/// Disk blocks a layer's non-file entries take, roughly (directories, links), for Usage.
fn entry_overhead(ix: &LayerIndex) -> u64 {
    ix.entries
        .iter()
        .filter(|e| e.r#type == EntryType::Dir as i32)
        .count() as u64
        * 4096
}
