//! Reading a layer's delta packs while its index delta is on the wire.
//!
//! A node that rebuilds a layer's index from the artifact's index delta (it holds the previous
//! version's index) will fetch that layer's delta frames as soon as it has planned, one round
//! trip later. The artifact names the packs those frames are in, so they are read whole right
//! away, next to the index delta, when they are small enough to hold in memory; the fetch then
//! takes its delta frames from memory as they arrive ([`chunksnap_core::fetch::WithEarlyPacks`]),
//! within the deadline a Range request of that size would have. Nothing is trusted for being
//! early: each chunk is still checked against its sha256.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chunksnap_core::fetch::{EarlyPacks, EarlyRead, request_deadline};
use chunksnap_core::registry::RegistryClient;
use chunksnap_format::artifact::Artifact;
use chunksnap_format::digest::Digest;
use futures::{FutureExt, StreamExt, future};
use oci_client::Reference;
use prometheus_client::metrics::counter::Counter;

use super::chunk_remote::ChunkRemote;

/// Delta packs of one layer read early only up to this many bytes in all: they are held in
/// memory until the fetch has used them, and a larger delta takes longer on the wire than the
/// round trip saved.
pub const EARLY_DELTA_BYTES: u64 = 4 << 20;
/// Delta packs held early by the whole daemon at most (several layers prepared or prefetched
/// at once); past that, a layer's delta frames are read by Range as before.
pub const EARLY_DELTA_BYTES_HELD: u64 = 16 << 20;

/// Bytes of delta packs held early now, across the daemon.
static HELD: AtomicU64 = AtomicU64::new(0);

/// A share of [`EARLY_DELTA_BYTES_HELD`], given back when dropped.
struct Reservation(u64);

impl Reservation {
    fn take(bytes: u64) -> Option<Self> {
        HELD.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
            held.checked_add(bytes)
                .filter(|&h| h <= EARLY_DELTA_BYTES_HELD)
        })
        .ok()
        .map(|_| Self(bytes))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::SeqCst);
    }
}

impl ChunkRemote {
    /// Starts reading `layer`'s delta packs whole if this node will rebuild its index from the
    /// artifact's index delta and they fit [`EARLY_DELTA_BYTES`]; otherwise nothing.
    pub(super) async fn early_delta_packs(
        self: &Arc<Self>,
        image: &Reference,
        artifact: &Artifact,
        layer: &Digest,
    ) -> EarlyPacks {
        let Some(delta) = self.source.usable_index_delta(artifact, layer).await else {
            return EarlyPacks::default();
        };
        let sized: Option<Vec<(Digest, u64)>> = delta
            .packs
            .iter()
            .map(|p| Some((*p, *artifact.packs.get(p)?)))
            .collect();
        let Some(sized) = sized else {
            return EarlyPacks::default();
        };
        let total: u64 = sized.iter().map(|(_, size)| size).sum();
        if sized.is_empty() || total > EARLY_DELTA_BYTES {
            return EarlyPacks::default();
        }
        let Some(reservation) = Reservation::take(total) else {
            return EarlyPacks::default();
        };
        tracing::debug!(%layer, packs = sized.len(), bytes = total, "reading delta packs early");
        let fetch = self.fetch;
        EarlyPacks::start(
            sized.into_iter().map(|(pack, size)| {
                let read = open_early(
                    self.client.clone(),
                    image.clone(),
                    pack,
                    size,
                    self.metrics.early_delta_packs.clone(),
                );
                (pack.to_string(), size, read)
            }),
            move |size| request_deadline(&fetch, size),
            reservation,
        )
    }
}

/// The read of delta pack `pack` (`size` bytes) from `image`'s repository, as it arrives; it
/// ends at the first error, and counts in `read_early` once the whole pack is in.
fn open_early(
    client: RegistryClient,
    image: Reference,
    pack: Digest,
    size: u64,
    read_early: Counter,
) -> EarlyRead {
    async move {
        let stream = client
            .open_blob(&image, &pack, size)
            .await
            .map_err(|e| tracing::debug!(%pack, cause = %e, "early delta pack read failed; reading its ranges"))
            .ok()?;
        let mut left = size;
        let pieces = stream
            .take_while(move |piece| {
                if let Err(e) = piece {
                    tracing::debug!(%pack, cause = %e, "early delta pack read broke; reading the rest by Range");
                }
                future::ready(piece.is_ok())
            })
            .filter_map(|piece| future::ready(piece.ok()))
            .inspect(move |bytes| {
                let was = left;
                left = left.saturating_sub(bytes.len() as u64);
                if was > 0 && left == 0 {
                    read_early.inc();
                }
            });
        Some(pieces.boxed())
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_daemons_share_and_are_given_back() {
        let most = Reservation::take(EARLY_DELTA_BYTES_HELD - 10).expect("within the share");
        assert!(Reservation::take(11).is_none(), "past the share");
        let rest = Reservation::take(10).expect("exactly the share");
        drop(most);
        assert!(Reservation::take(EARLY_DELTA_BYTES_HELD - 10).is_some());
        drop(rest);
        assert_eq!(HELD.load(Ordering::SeqCst), 0);
    }
}
