//! What a conversion reports: per layer, per platform manifest, and totals.

use serde::Serialize;

use crate::delta::DeltaReport;

/// Counters summed over layers.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Layers.
    pub layers: u64,
    /// Tar entries.
    pub entries: u64,
    /// Chunks in the content streams.
    pub chunks: u64,
    /// Chunks newly stored.
    pub new_chunks: u64,
    /// Compressed layer bytes read from the registry.
    pub bytes_read: u64,
    /// Bytes uploaded (packs and indexes; zero when everything existed).
    pub bytes_pushed: u64,
    /// Delta frames added (new chunks compressed against an earlier layer's).
    pub delta_chunks: u64,
    /// Their stored bytes.
    pub delta_bytes: u64,
}

/// One layer's result.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Source layer digest.
    pub digest: String,
    /// Layer index blob digest.
    pub index: String,
    /// Whether an existing index was reused (the layer was not read).
    pub reused: bool,
    /// Tar entries.
    pub entries: u64,
    /// Chunks.
    pub chunks: u64,
    /// Chunks newly stored.
    pub new_chunks: u64,
    /// Compressed bytes read.
    pub bytes_read: u64,
    /// Bytes uploaded.
    pub bytes_pushed: u64,
    /// The delta pass (empty when the layer was reused or nothing earlier resembles it).
    pub deltas: DeltaReport,
}

/// One platform manifest's result.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestReport {
    /// The image manifest digest (the artifact's subject).
    pub manifest: String,
    /// `os/arch[/variant]` from the index, if any.
    pub platform: Option<String>,
    /// The artifact manifest digest.
    pub artifact: String,
    /// The manifest already had a complete artifact: nothing was pushed.
    pub already_converted: bool,
    /// Per layer, in image order.
    pub layers: Vec<LayerReport>,
    /// Sums over `layers`.
    pub totals: Totals,
}

/// The whole conversion's result (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// The reference converted.
    pub image: String,
    /// Per platform manifest.
    pub manifests: Vec<ManifestReport>,
    /// Sums over all manifests.
    pub totals: Totals,
    /// Chunks known to the dedup catalog before converting.
    pub catalog_chunks: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Totals {
    pub(super) fn add(&mut self, l: &LayerReport) {
        self.layers += 1;
        self.entries += l.entries;
        self.chunks += l.chunks;
        self.new_chunks += l.new_chunks;
        self.bytes_read += l.bytes_read;
        self.bytes_pushed += l.bytes_pushed;
        self.delta_chunks += l.deltas.deltas;
        self.delta_bytes += l.deltas.delta_bytes;
    }
    pub(super) fn merge(&mut self, o: &Totals) {
        self.layers += o.layers;
        self.entries += o.entries;
        self.chunks += o.chunks;
        self.new_chunks += o.new_chunks;
        self.bytes_read += o.bytes_read;
        self.bytes_pushed += o.bytes_pushed;
        self.delta_chunks += o.delta_chunks;
        self.delta_bytes += o.delta_bytes;
    }
}
