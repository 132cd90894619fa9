//! One pre-warm of one image: skip it when containerd already has it, refuse an unconverted
//! image unless full-layer pulls are allowed, else pull it through CRI with the credentials
//! the daemon itself would use for its registry.

use std::time::Instant;

use chunksnap_core::registry::RegistryClient;

use super::cri::{CriImages, auth_config};
use super::{Outcome, Report};
use crate::remote::chunk_remote::ChunkRemote;

/// Stages `image` on this node. `bytes_fetched` of the report is left 0: the caller knows
/// where the node's fetch counter lives (the daemon's metrics) and measures around this call.
pub async fn stage(remote: &ChunkRemote, cri: &CriImages, image: &str, allow_full: bool) -> Report {
    let started = Instant::now();
    let (outcome, image_ref, detail) = match stage_inner(remote, cri, image, allow_full).await {
        Ok((outcome, image_ref)) => (outcome, image_ref, String::new()),
        Err(detail) => (Outcome::error, String::new(), detail),
    };
    Report {
        image: image.to_owned(),
        outcome,
        bytes_fetched: 0,
        seconds: started.elapsed().as_secs_f64(),
        image_ref,
        detail,
    }
}

async fn stage_inner(
    remote: &ChunkRemote,
    cri: &CriImages,
    image: &str,
    allow_full: bool,
) -> Result<(Outcome, String), String> {
    if let Some(id) = cri.image_id(image).await.map_err(|e| e.to_string())? {
        return Ok((Outcome::present, id));
    }
    let converted = remote
        .is_converted(image)
        .await
        .map_err(|e| format!("looking up the chunksnap artifact: {e}"))?;
    if !converted && !allow_full {
        return Ok((Outcome::unconverted, String::new()));
    }
    let reference = RegistryClient::parse_reference(image).map_err(|e| e.to_string())?;
    let credentials = remote
        .registry()
        .credentials_for_image(&reference)
        .await
        .map_err(|e| e.to_string())?;
    let id = cri
        .pull(image, auth_config(&credentials))
        .await
        .map_err(|e| e.to_string())?;
    Ok((Outcome::pulled, id))
}
