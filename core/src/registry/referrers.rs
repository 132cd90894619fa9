//! Referrers: listing the artifacts that refer to an image manifest, and linking a new one.
//!
//! Listing uses the OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`) and, where the
//! registry lacks it (404, e.g. distribution 2.8), the referrers tag schema: tag `sha256-<hex>`
//! holding an OCI image index of referrer descriptors. Both answers are read under
//! `MAX_MANIFEST_SIZE` (see `direct`).
//!
//! Linking pushes the artifact manifest (with its `subject`), then lists the subject's referrers:
//! if the artifact is listed (the registry indexed it, or the tag index already has it) nothing
//! else is done. Otherwise the tag index is read, modified and written back. `oci-client` does not
//! expose the `OCI-Subject` response header, so "is it listed now" stands in for it, which also
//! covers registries that index asynchronously.
//!
//! Tag index policy: entries of other artifact types are kept verbatim (unknown fields too); an
//! older descriptor of the *same* artifact type is replaced, because a subject has one current
//! artifact of a type and a reader of the tag index should find exactly that one (the old
//! manifest stays in the registry, addressable by digest). Entries are sorted by digest so the
//! index bytes depend only on its contents. The read-modify-write is not atomic: two writers
//! racing on the same subject can lose one update (distribution has no conditional PUT).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Reference, RegistryClient, RegistryError};
use chunksnap_format::artifact::{
    self, ARTIFACT_TYPE, Artifact, Descriptor, OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE,
};
use chunksnap_format::digest::Digest;

/// The image index stored under a referrers tag, with unknown fields kept.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferrersIndex {
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

/// What [`RegistryClient::publish_referrer`] had to do to make the artifact findable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The subject's referrers already list it (referrers API, or an earlier tag update).
    AlreadyListed,
    /// The referrers tag index was rewritten; its new digest.
    TagIndexUpdated(Digest),
}

/// The referrers tag for `subject`: `sha256-<hex>`.
pub fn referrers_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

impl RegistryClient {
    /// The referrers of `subject` in `image`'s repository, optionally only those of
    /// `artifact_type` (filtered here too, as registries may ignore the filter).
    #[tracing::instrument(skip(self), fields(image = %image, %subject))]
    pub async fn referrers(
        &self,
        image: &Reference,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        let (client, _) = self.prepare(image).await?;
        let target = self.with_digest(image, &subject.to_string());
        let what = target.whole();
        let direct = &self.inner.direct;
        let got = super::pace::within(
            &self.inner.config,
            "list referrers",
            &what,
            self.retry("list referrers", &what, || {
                direct.referrers(
                    &self.inner.config,
                    &target,
                    artifact_type,
                    super::MAX_MANIFEST_SIZE,
                    client.authorization.as_ref(),
                )
            }),
        )
        .await;
        let manifests = match self.forget_if_refused(image, got)? {
            Some(body) if body.len() > super::MAX_MANIFEST_SIZE => {
                return Err(RegistryError::TooLarge {
                    what,
                    limit: super::MAX_MANIFEST_SIZE as u64,
                });
            }
            Some(body) => serde_json::from_slice::<ReferrersIndex>(&body)?.manifests,
            // No referrers API: the referrers tag schema. An absent tag, or one that is not an
            // image index, lists nothing (as the distribution spec recommends).
            None => match self
                .resolve(&self.with_tag(image, &referrers_tag(subject)))
                .await
            {
                Ok(raw) => serde_json::from_slice::<ReferrersIndex>(&raw.bytes)
                    .map(|i| i.manifests)
                    .unwrap_or_default(),
                Err(RegistryError::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e),
            },
        };
        Ok(manifests
            .into_iter()
            .filter(|d| artifact_type.is_none_or(|t| d.artifact_type.as_deref() == Some(t)))
            .collect())
    }

    /// Pushes the artifact manifest `manifest` (whose `subject` is `subject`) by digest and makes
    /// sure the subject's referrers list it (see the module docs). Returns its digest and what
    /// linking took.
    #[tracing::instrument(skip(self, manifest), fields(image = %image, %subject))]
    pub async fn publish_referrer(
        &self,
        image: &Reference,
        subject: &Digest,
        manifest: Bytes,
        artifact_type: &str,
    ) -> Result<(Digest, Link), RegistryError> {
        let digest = Digest::of(&manifest);
        let mut descriptor =
            Descriptor::new(OCI_MANIFEST_MEDIA_TYPE, &digest, manifest.len() as u64);
        descriptor.artifact_type = Some(artifact_type.to_owned());
        if manifest.len() <= artifact::MAX_EMBEDDED_ARTIFACT {
            // Only the tag index carries it (a registry builds its referrers API answer itself):
            // a node reading the tag then needs no second request for the manifest.
            descriptor.embed(&manifest);
        }
        let by_digest = self.with_digest(image, &digest.to_string());
        self.push_manifest(&by_digest, manifest, OCI_MANIFEST_MEDIA_TYPE)
            .await?;

        let listed = self.referrers(image, subject, Some(artifact_type)).await?;
        if listed.iter().any(|d| d.digest == descriptor.digest) {
            return Ok((digest, Link::AlreadyListed));
        }

        let tag = self.with_tag(image, &referrers_tag(subject));
        let mut index = match self.resolve(&tag).await {
            Ok(raw) => serde_json::from_slice::<ReferrersIndex>(&raw.bytes)?,
            Err(RegistryError::NotFound { .. }) => ReferrersIndex {
                schema_version: 2,
                media_type: OCI_INDEX_MEDIA_TYPE.to_owned(),
                manifests: Vec::new(),
                extra: BTreeMap::new(),
            },
            Err(e) => return Err(e),
        };
        if index.media_type.is_empty() {
            index.media_type = OCI_INDEX_MEDIA_TYPE.to_owned();
        }
        index.manifests.retain(|d| {
            d.digest != descriptor.digest && d.artifact_type.as_deref() != Some(artifact_type)
        });
        index.manifests.push(descriptor);
        index.manifests.sort_by(|a, b| a.digest.cmp(&b.digest));
        let bytes = Bytes::from(serde_json::to_vec(&index)?);
        let index_digest = self
            .push_manifest(&tag, bytes, OCI_INDEX_MEDIA_TYPE)
            .await?;
        Ok((digest, Link::TagIndexUpdated(index_digest)))
    }

    /// The chunksnap artifact for the image manifest `subject`, if one is linked: the first (by
    /// digest) referrer of our artifact type that parses as an artifact for this subject.
    /// Returns the artifact manifest's digest and contents.
    ///
    /// The referrers tag is read alongside the referrers API: on a registry without the API
    /// (a 404, then `oci-client` reads the tag) that saves a round trip before every remote
    /// prepare. What the tag lists is trusted no more than what the API lists: the artifact
    /// must name `subject`. The API's answer decides when the tag has nothing usable.
    pub async fn find_artifact(
        &self,
        image: &Reference,
        subject: &Digest,
    ) -> Result<Option<(Digest, Artifact)>, RegistryError> {
        let api = async {
            let found = self.referrers(image, subject, Some(ARTIFACT_TYPE)).await?;
            self.first_artifact(image, subject, found).await
        };
        let tag = self.artifact_from_tag(image, subject);
        tokio::pin!(api, tag);
        tokio::select! {
            biased;
            from_tag = &mut tag => match from_tag {
                Some(found) => Ok(Some(found)),
                None => api.await,
            },
            from_api = &mut api => match from_api {
                Ok(Some(found)) => Ok(Some(found)),
                Ok(None) => Ok(None),
                Err(e) => tag.await.map_or(Err(e), |found| Ok(Some(found))),
            },
        }
    }

    /// The artifact listed under the referrers tag, if any; failures are `None` (the referrers
    /// API lookup running alongside reports them).
    async fn artifact_from_tag(
        &self,
        image: &Reference,
        subject: &Digest,
    ) -> Option<(Digest, Artifact)> {
        let raw = self
            .resolve(&self.with_tag(image, &referrers_tag(subject)))
            .await
            .ok()?;
        let index: ReferrersIndex = serde_json::from_slice(&raw.bytes).ok()?;
        let ours = index
            .manifests
            .into_iter()
            .filter(|d| d.artifact_type.as_deref() == Some(ARTIFACT_TYPE))
            .collect();
        self.first_artifact(image, subject, ours)
            .await
            .ok()
            .flatten()
    }

    /// The first of `found` (by digest) that resolves and parses as an artifact for `subject`;
    /// a manifest embedded in its descriptor (and matching its digest) is not fetched again.
    async fn first_artifact(
        &self,
        image: &Reference,
        subject: &Digest,
        mut found: Vec<Descriptor>,
    ) -> Result<Option<(Digest, Artifact)>, RegistryError> {
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        for d in found {
            let (digest, bytes) = match d.embedded() {
                // `embedded` checked the bytes against the digest.
                Some(bytes) => (d.sha256()?, Bytes::from(bytes)),
                None => match self.resolve(&self.with_digest(image, &d.digest)).await {
                    Ok(raw) => (raw.digest, raw.bytes),
                    Err(RegistryError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                },
            };
            match artifact::parse(&bytes, Some(subject)) {
                Ok(a) => return Ok(Some((digest, a))),
                Err(e) => {
                    tracing::warn!(artifact = %d.digest, error = %e, "ignoring unusable artifact");
                }
            }
        }
        Ok(None)
    }
}
