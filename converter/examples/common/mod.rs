//! Shared by the tuning examples: an uncompressed layer tar read whole, described as the layer
//! a manifest would name.

use anyhow::Context;
use chunkconv::layer::LayerInput;
use chunksnap_core::digest::Digest;

/// The bytes of the tar at `path` and its [`LayerInput`].
pub fn read_layer(path: &str) -> anyhow::Result<(Vec<u8>, LayerInput)> {
    let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let input = LayerInput {
        digest: Digest::of(&data),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size: Some(data.len() as u64),
    };
    Ok((data, input))
}
