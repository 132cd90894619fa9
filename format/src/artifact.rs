//! The image artifact: an OCI image manifest that points, through `subject`, at the source image
//! manifest and lists the layer index blobs (annotated with the source layer digest), each
//! followed by its index delta and its chunk sketches if it has them, then every pack those
//! indexes use. Building it is deterministic (fixed field order, sorted packs, no
//! timestamps) so converting the same image twice yields the same artifact digest; parsing checks
//! that a manifest really is a chunksnap artifact for the image we asked about.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestError};

pub use super::index::{
    ARTIFACT_TYPE, INDEX_BASE_ANNOTATION, INDEX_BASE_RAW_ANNOTATION, INDEX_DELTA_MEDIA_TYPE,
    INDEX_DELTA_PACKS_ANNOTATION, INDEX_RAW_ANNOTATION, LAYER_DIGEST_ANNOTATION,
    LAYER_INDEX_MEDIA_TYPE, LAYER_SKETCH_MEDIA_TYPE, PACK_MEDIA_TYPE,
};

/// Media type of the artifact manifest itself (an OCI image manifest).
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index (also used by the referrers tag schema).
pub const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of the empty config blob.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty config blob's bytes.
pub const EMPTY_JSON: &[u8] = b"{}";
/// Blobs up to this size are also embedded in their descriptor's `data` field (layer indexes in
/// the artifact, the artifact manifest in the referrers tag index), saving a node one request
/// each before it can fetch a chunk.
pub const MAX_EMBEDDED: usize = 16 << 10;
/// Artifact manifests up to this size are embedded in their referrers tag index entry (the tag
/// is read first; the manifest may itself embed small indexes).
pub const MAX_EMBEDDED_ARTIFACT: usize = 64 << 10;

/// Errors from building or parsing an artifact manifest.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The manifest is not JSON of the expected shape.
    #[error("artifact manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A digest in the manifest is malformed.
    #[error("artifact manifest has a bad digest: {0}")]
    Digest(#[from] DigestError),
    /// The manifest is well-formed JSON but not a chunksnap artifact.
    #[error("not a chunksnap artifact: {0}")]
    NotArtifact(String),
    /// The artifact refers to a different image manifest than the one asked about.
    #[error("artifact subject is {found}, expected {expected}")]
    SubjectMismatch {
        /// The digest we asked about.
        expected: Digest,
        /// The artifact's `subject.digest`.
        found: String,
    },
    /// Two descriptors give the same blob different sizes.
    #[error("blob {digest} listed with sizes {a} and {b}")]
    SizeConflict {
        /// The blob.
        digest: Digest,
        /// One size.
        a: u64,
        /// The other size.
        b: u64,
    },
}

/// An OCI content descriptor. Fields the code does not interpret (`platform`, `urls`, `data`, …)
/// are kept in `extra`, so read-modify-writing a referrers index preserves other tools' entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>` (other algorithms are kept as text but never produced).
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The artifact type, for referrers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations (sorted, so serialisation is deterministic).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Any other descriptor fields, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Descriptor {
    /// A plain descriptor of `size` bytes with digest `digest`.
    pub fn new(media_type: &str, digest: &Digest, size: u64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size,
            artifact_type: None,
            annotations: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// The digest, parsed (only sha256 is supported).
    pub fn sha256(&self) -> Result<Digest, DigestError> {
        Digest::parse(&self.digest)
    }

    /// Embeds `content` (what this descriptor references) in its `data` field (OCI image-spec
    /// 1.1), so a reader need not fetch it.
    pub fn embed(&mut self, content: &[u8]) {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(content);
        self.extra
            .insert("data".to_owned(), serde_json::Value::String(data));
    }

    /// The content embedded in `data`, when there is some and it has this descriptor's size and
    /// digest (the spec asks readers to verify it). Anything else is `None`: the reader then
    /// fetches the content by digest, so a wrong embedding costs a request, never correctness.
    pub fn embedded(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let data = self.extra.get("data")?.as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()?;
        let matches =
            bytes.len() as u64 == self.size && self.sha256().is_ok_and(|d| d == Digest::of(&bytes));
        if !matches {
            tracing::debug!(digest = %self.digest, "ignoring embedded data that does not match its descriptor");
        }
        matches.then_some(bytes)
    }

    /// The digest in annotation `key`; `what` names this blob in the error when it is absent.
    fn annotated_digest(&self, what: &str, key: &str) -> Result<Digest, ArtifactError> {
        let v = self.annotations.get(key).ok_or_else(|| {
            ArtifactError::NotArtifact(format!("{what} {} lacks {key}", self.digest))
        })?;
        Ok(Digest::parse(v)?)
    }
}

/// The OCI image manifest form of the artifact, with a fixed field order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    artifact_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
    subject: Option<Descriptor>,
}

/// One converted layer, as the artifact records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Digest of the source (compressed) layer.
    pub layer_digest: Digest,
    /// Digest of the layer index blob.
    pub index_digest: Digest,
    /// Size of the layer index blob.
    pub index_size: u64,
    /// The index blob itself, when small enough to embed (at most [`MAX_EMBEDDED`] bytes).
    pub index_inline: Option<Vec<u8>>,
    /// The packs the index references (digest, size).
    pub packs: Vec<(Digest, u64)>,
    /// The index as a delta against an earlier layer's, for nodes that hold that one.
    pub index_delta: Option<IndexDelta>,
    /// The chunk sketches blob (digest, size), for converters computing later layers' deltas.
    pub sketch: Option<(Digest, u64)>,
}

/// A layer index stored as a delta against another layer's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDelta {
    /// The delta blob.
    pub digest: Digest,
    pub size: u64,
    /// The layer whose index is the base.
    pub base_layer: Digest,
    /// sha256 of the base's raw (decompressed) index: the exact prefix to decode with.
    pub base_raw: Digest,
    /// sha256 of the raw index the delta decodes to.
    pub raw: Digest,
    /// The packs holding the layer's delta frames (each also listed as a pack of the artifact):
    /// a node that uses this delta fetches from them, so it may read them early.
    pub packs: Vec<Digest>,
}

impl IndexDelta {
    fn descriptor(&self, layer: &Digest) -> Descriptor {
        let mut d = Descriptor::new(INDEX_DELTA_MEDIA_TYPE, &self.digest, self.size);
        for (k, v) in [
            (LAYER_DIGEST_ANNOTATION, layer),
            (INDEX_BASE_ANNOTATION, &self.base_layer),
            (INDEX_BASE_RAW_ANNOTATION, &self.base_raw),
            (INDEX_RAW_ANNOTATION, &self.raw),
        ] {
            d.annotations.insert(k.to_owned(), v.to_string());
        }
        if !self.packs.is_empty() {
            let packs: Vec<String> = self.packs.iter().map(Digest::to_string).collect();
            d.annotations
                .insert(INDEX_DELTA_PACKS_ANNOTATION.to_owned(), packs.join(","));
        }
        d
    }

    /// (layer, delta) from an index delta descriptor.
    fn parse(d: &Descriptor) -> Result<(Digest, Self), ArtifactError> {
        let get = |k: &str| d.annotated_digest("index delta", k);
        let layer = get(LAYER_DIGEST_ANNOTATION)?;
        Ok((
            layer,
            Self {
                digest: d.sha256()?,
                size: d.size,
                base_layer: get(INDEX_BASE_ANNOTATION)?,
                base_raw: get(INDEX_BASE_RAW_ANNOTATION)?,
                raw: get(INDEX_RAW_ANNOTATION)?,
                packs: match d.annotations.get(INDEX_DELTA_PACKS_ANNOTATION) {
                    Some(list) => list
                        .split(',')
                        .map(Digest::parse)
                        .collect::<Result<_, _>>()?,
                    None => Vec::new(),
                },
            },
        ))
    }
}

/// An artifact manifest, built: its bytes, digest and the descriptor to link it as a referrer.
#[derive(Debug, Clone)]
pub struct BuiltArtifact {
    /// The manifest JSON.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

impl BuiltArtifact {
    /// The descriptor of this manifest as a referrer (with `artifactType`).
    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(
            OCI_MANIFEST_MEDIA_TYPE,
            &self.digest,
            self.bytes.len() as u64,
        );
        d.artifact_type = Some(ARTIFACT_TYPE.to_owned());
        d
    }
}

/// Builds the artifact manifest for `subject` (the source image manifest) from its converted
/// layers, in image layer order. A layer digest that occurs twice is listed once; packs are
/// sorted by digest and deduplicated.
pub fn build(subject: &Descriptor, layers: &[LayerEntry]) -> Result<BuiltArtifact, ArtifactError> {
    let mut seen = BTreeMap::new();
    let mut packs: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut out_layers = Vec::with_capacity(layers.len());
    for layer in layers {
        if seen.insert(layer.layer_digest, ()).is_some() {
            continue;
        }
        let mut d = Descriptor::new(
            LAYER_INDEX_MEDIA_TYPE,
            &layer.index_digest,
            layer.index_size,
        );
        d.annotations.insert(
            LAYER_DIGEST_ANNOTATION.to_owned(),
            layer.layer_digest.to_string(),
        );
        if let Some(inline) = layer
            .index_inline
            .as_deref()
            .filter(|b| b.len() <= MAX_EMBEDDED)
        {
            d.embed(inline);
        }
        out_layers.push(d);
        if let Some(delta) = &layer.index_delta {
            out_layers.push(delta.descriptor(&layer.layer_digest));
        }
        if let Some((digest, size)) = &layer.sketch {
            let mut d = Descriptor::new(LAYER_SKETCH_MEDIA_TYPE, digest, *size);
            d.annotations.insert(
                LAYER_DIGEST_ANNOTATION.to_owned(),
                layer.layer_digest.to_string(),
            );
            out_layers.push(d);
        }
        for &(digest, size) in &layer.packs {
            insert_pack(&mut packs, digest, size)?;
        }
    }
    out_layers.extend(
        packs
            .iter()
            .map(|(digest, size)| Descriptor::new(PACK_MEDIA_TYPE, digest, *size)),
    );
    let manifest = ArtifactManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST_MEDIA_TYPE.to_owned(),
        artifact_type: ARTIFACT_TYPE.to_owned(),
        config: Descriptor::new(
            EMPTY_MEDIA_TYPE,
            &Digest::of(EMPTY_JSON),
            EMPTY_JSON.len() as u64,
        ),
        layers: out_layers,
        subject: Some(subject.clone()),
    };
    let bytes = serde_json::to_vec(&manifest)?;
    let digest = Digest::of(&bytes);
    Ok(BuiltArtifact { bytes, digest })
}

fn insert_pack(
    packs: &mut BTreeMap<Digest, u64>,
    digest: Digest,
    size: u64,
) -> Result<(), ArtifactError> {
    match packs.insert(digest, size) {
        Some(prev) if prev != size => Err(ArtifactError::SizeConflict {
            digest,
            a: prev,
            b: size,
        }),
        _ => Ok(()),
    }
}

/// A parsed, validated image artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The source image manifest it was made from.
    pub subject: Descriptor,
    /// Source layer digest → the layer index blob's descriptor.
    pub indexes: BTreeMap<Digest, Descriptor>,
    /// Every pack any index uses (digest → size), sorted.
    pub packs: BTreeMap<Digest, u64>,
    /// Source layer digest → its index as a delta against another layer's index.
    pub index_deltas: BTreeMap<Digest, IndexDelta>,
    /// Source layer digest → its chunk sketches blob.
    pub sketches: BTreeMap<Digest, Descriptor>,
}

/// Parses and validates an artifact manifest. With `expected_subject`, the artifact must refer to
/// that image manifest (an artifact for another image is an error, never silently used).
pub fn parse(bytes: &[u8], expected_subject: Option<&Digest>) -> Result<Artifact, ArtifactError> {
    let m: ArtifactManifest = serde_json::from_slice(bytes)?;
    let not = |why: String| ArtifactError::NotArtifact(why);
    if m.schema_version != 2 {
        return Err(not(format!("schemaVersion {}", m.schema_version)));
    }
    if m.media_type != OCI_MANIFEST_MEDIA_TYPE {
        return Err(not(format!("mediaType {:?}", m.media_type)));
    }
    if m.artifact_type != ARTIFACT_TYPE {
        return Err(not(format!("artifactType {:?}", m.artifact_type)));
    }
    if m.config.media_type != EMPTY_MEDIA_TYPE {
        return Err(not(format!("config mediaType {:?}", m.config.media_type)));
    }
    let subject = m.subject.ok_or_else(|| not("no subject".to_owned()))?;
    let subject_digest = subject.sha256()?;
    if let Some(expected) = expected_subject
        && *expected != subject_digest
    {
        return Err(ArtifactError::SubjectMismatch {
            expected: *expected,
            found: subject.digest,
        });
    }
    let mut indexes = BTreeMap::new();
    let mut packs = BTreeMap::new();
    let mut index_deltas = BTreeMap::new();
    let mut sketches = BTreeMap::new();
    for layer in m.layers {
        match layer.media_type.as_str() {
            LAYER_INDEX_MEDIA_TYPE => {
                layer.sha256()?;
                let source = layer.annotated_digest("index", LAYER_DIGEST_ANNOTATION)?;
                if indexes.insert(source, layer).is_some() {
                    return Err(not(format!("layer {source} listed twice")));
                }
            }
            PACK_MEDIA_TYPE => insert_pack(&mut packs, layer.sha256()?, layer.size)?,
            INDEX_DELTA_MEDIA_TYPE => {
                let (source, delta) = IndexDelta::parse(&layer)?;
                if index_deltas.insert(source, delta).is_some() {
                    return Err(not(format!("two index deltas for layer {source}")));
                }
            }
            LAYER_SKETCH_MEDIA_TYPE => {
                layer.sha256()?;
                let source = layer.annotated_digest("sketch", LAYER_DIGEST_ANNOTATION)?;
                if sketches.insert(source, layer).is_some() {
                    return Err(not(format!("two sketches for layer {source}")));
                }
            }
            other => return Err(not(format!("unexpected layer media type {other:?}"))),
        }
    }
    // A delta without its layer's full index would leave cold nodes nothing to read.
    if let Some(orphan) = index_deltas.keys().find(|l| !indexes.contains_key(*l)) {
        return Err(not(format!(
            "index delta for layer {orphan} without its index"
        )));
    }
    // A node reads the named packs whole: only packs of the artifact, bounded by their sizes.
    for (layer, delta) in &index_deltas {
        if let Some(p) = delta.packs.iter().find(|p| !packs.contains_key(*p)) {
            return Err(not(format!(
                "index delta for layer {layer} names pack {p}, which the artifact does not list"
            )));
        }
    }
    if let Some(orphan) = sketches.keys().find(|l| !indexes.contains_key(*l)) {
        return Err(not(format!(
            "sketches for layer {orphan} without its index"
        )));
    }
    Ok(Artifact {
        subject,
        indexes,
        packs,
        index_deltas,
        sketches,
    })
}

#[cfg(test)]
mod tests;
