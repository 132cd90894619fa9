//! Manifests: resolving a reference to its manifest or index and its platforms' image
//! manifests, pushing manifests, listing tags; and checking a manifest document's shape.

use bytes::Bytes;
use chunksnap_format::artifact::OCI_INDEX_MEDIA_TYPE;
use chunksnap_format::digest::Digest;
use oci_client::manifest::OciImageManifest;

use super::{
    ACCEPTED_MANIFESTS, MAX_MANIFEST_SIZE, PlatformManifest, RawManifest, Reference,
    RegistryClient, RegistryError,
};

impl RegistryClient {
    /// Fetches the manifest or index `image` names. When `image` is by digest the bytes are
    /// checked against it; otherwise `digest` is the sha256 of the bytes served.
    #[tracing::instrument(skip(self), fields(image = %image))]
    pub async fn resolve(&self, image: &Reference) -> Result<RawManifest, RegistryError> {
        let (client, _) = self.prepare(image).await?;
        let what = image.whole();
        let direct = &self.inner.direct;
        let got = super::pace::within(
            &self.inner.config,
            "pull manifest",
            &what,
            self.retry("pull manifest", &what, || {
                direct.manifest(
                    &self.inner.config,
                    image,
                    ACCEPTED_MANIFESTS,
                    MAX_MANIFEST_SIZE,
                    client.authorization.as_ref(),
                )
            }),
        )
        .await;
        let bytes = self.forget_if_refused(image, got)?;
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(RegistryError::TooLarge {
                what,
                limit: MAX_MANIFEST_SIZE as u64,
            });
        }
        let actual = Digest::of(&bytes);
        if let Some(expected) = image.digest()
            && expected != actual.to_string()
        {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: expected.to_owned(),
                actual,
            });
        }
        let media_type = media_type_of(&bytes).map_err(|detail| RegistryError::BadManifest {
            what: what.clone(),
            detail,
        })?;
        Ok(RawManifest {
            bytes,
            digest: actual,
            media_type,
        })
    }

    /// Resolves `image` to its image manifests: itself, or for an index each platform's manifest
    /// (attestation manifests with platform `unknown/unknown` are skipped).
    pub async fn platform_manifests(
        &self,
        image: &Reference,
    ) -> Result<Vec<PlatformManifest>, RegistryError> {
        let raw = self.resolve(image).await?;
        if !raw.is_index() {
            let manifest = parse_image_manifest(&image.whole(), &raw.bytes)?;
            return Ok(vec![PlatformManifest {
                platform: None,
                raw,
                manifest,
            }]);
        }
        let index: oci_client::manifest::OciImageIndex = serde_json::from_slice(&raw.bytes)?;
        let mut out = Vec::new();
        for entry in index.manifests {
            let platform = entry.platform.as_ref().map(|p| {
                let mut s = format!("{}/{}", p.os, p.architecture);
                if let Some(v) = &p.variant {
                    s.push('/');
                    s.push_str(v);
                }
                s
            });
            if platform.as_deref() == Some("unknown/unknown") {
                continue;
            }
            let child = self.with_digest(image, &entry.digest);
            let raw = self.resolve(&child).await?;
            if raw.is_index() {
                return Err(RegistryError::BadManifest {
                    what: child.whole(),
                    detail: "nested image index".to_owned(),
                });
            }
            let manifest = parse_image_manifest(&child.whole(), &raw.bytes)?;
            out.push(PlatformManifest {
                platform,
                raw,
                manifest,
            });
        }
        Ok(out)
    }

    /// `image`'s repository, addressed by `digest`.
    pub fn with_digest(&self, image: &Reference, digest: &str) -> Reference {
        Reference::with_digest(
            image.registry().to_owned(),
            image.repository().to_owned(),
            digest.to_owned(),
        )
    }

    /// `image`'s repository, addressed by `tag`.
    pub fn with_tag(&self, image: &Reference, tag: &str) -> Reference {
        Reference::with_tag(
            image.registry().to_owned(),
            image.repository().to_owned(),
            tag.to_owned(),
        )
    }

    /// Pushes a manifest (raw bytes, served with `media_type`) under `image`'s tag or digest and
    /// returns its digest.
    #[tracing::instrument(skip(self, bytes), fields(image = %image))]
    pub async fn push_manifest(
        &self,
        image: &Reference,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let (client, _) = self.prepare(image).await?;
        let content_type =
            http::HeaderValue::from_str(media_type).map_err(|_| RegistryError::BadManifest {
                what: image.whole(),
                detail: format!("invalid media type {media_type:?}"),
            })?;
        self.retry("push manifest", &image.whole(), || {
            client.push_manifest_raw(image, bytes.clone(), content_type.clone())
        })
        .await?;
        Ok(Digest::of(&bytes))
    }

    /// Every tag of `image`'s repository (paginated, 1000 per request).
    pub async fn list_tags(&self, image: &Reference) -> Result<Vec<String>, RegistryError> {
        let (client, _) = self.prepare(image).await?;
        let what = image.repository().to_owned();
        let mut tags: Vec<String> = Vec::new();
        let direct = &self.inner.direct;
        loop {
            let last = tags.last().cloned();
            let got = super::pace::within(
                &self.inner.config,
                "list tags",
                &what,
                self.retry("list tags", &what, || {
                    direct.tags_page(
                        &self.inner.config,
                        image,
                        1000,
                        last.as_deref(),
                        client.authorization.as_ref(),
                    )
                }),
            )
            .await;
            let page = self.forget_if_refused(image, got)?;
            let n = page.len();
            // Stop on a short page, or a registry that ignores `last` and repeats itself.
            let repeated = page.last() == tags.last();
            tags.extend(page);
            if n < 1000 || repeated {
                break;
            }
        }
        tags.dedup();
        Ok(tags)
    }
}

/// The `mediaType` of a manifest document, inferred from its shape when the field is absent.
fn media_type_of(bytes: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    Ok(match (p.media_type, p.manifests) {
        (Some(m), _) => m,
        (None, Some(_)) => OCI_INDEX_MEDIA_TYPE.to_owned(),
        (None, None) => chunksnap_format::artifact::OCI_MANIFEST_MEDIA_TYPE.to_owned(),
    })
}

/// Parses an image manifest (OCI or docker schema 2).
pub fn parse_image_manifest(what: &str, bytes: &[u8]) -> Result<OciImageManifest, RegistryError> {
    let m: OciImageManifest =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::BadManifest {
            what: what.to_owned(),
            detail: format!("not an image manifest: {e}"),
        })?;
    if m.schema_version != 2 {
        return Err(RegistryError::BadManifest {
            what: what.to_owned(),
            detail: format!("schemaVersion {}", m.schema_version),
        });
    }
    Ok(m)
}
