//! The snapshot labels containerd's CRI plugin sets on an unpack Prepare, which ask for (and
//! describe) a remote prepare.

/// Label carrying the name the unpacked layer should be committed as (the chainID).
pub const LABEL_TARGET_REF: &str = "containerd.io/snapshot.ref";
/// CRI label: digest of the compressed layer blob.
pub const LABEL_CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// CRI label: digest of the image manifest.
pub const LABEL_CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// CRI label: the image reference being pulled.
pub const LABEL_CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// CRI label: comma-separated digests of the image's layers (the prefetch reads them).
pub const LABEL_CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
