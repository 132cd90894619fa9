//! Blob operations: streaming a whole blob, reading a small blob fully under a size cap, Range
//! reads (checking the length, and coping with registries that ignore `Range`), and pushing.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;

use super::direct_blobs::BlobAnswer;
use super::pace;
use super::{ClientHandle, Reference, RegistryClient, RegistryError};
use chunksnap_format::digest::Digest;

/// A blob's bytes as they arrive. `oci-client` checks the digest once the stream ends and fails
/// the last read on a mismatch.
pub type BlobStream = futures::stream::BoxStream<'static, std::io::Result<Bytes>>;

impl RegistryClient {
    /// Streams the blob `digest` of `image`'s repository. Only opening the stream is retried;
    /// a failure mid-stream is reported to the reader.
    #[tracing::instrument(skip(self), fields(image = %image, %digest))]
    pub async fn blob_stream(
        &self,
        image: &Reference,
        digest: &Digest,
    ) -> Result<(Option<u64>, BlobStream), RegistryError> {
        let (client, _) = self.prepare(image).await?;
        let d = digest.to_string();
        let s = self
            .retry("pull blob", &d, || {
                client.pull_blob_stream(image, d.as_str())
            })
            .await?;
        Ok((s.content_length, s.stream))
    }

    /// Reads the blob `digest` fully, refusing more than `max` bytes, and verifies its digest.
    pub async fn read_blob(
        &self,
        image: &Reference,
        digest: &Digest,
        max: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = digest.to_string();
        let bytes = pace::within(&self.inner.config, "pull blob", &what, async {
            let (len, stream) = self.open(image, &what, max).await?;
            // The declared length sizes the buffer up front, within reason: it is the server's word.
            let capacity = len.unwrap_or(0).min(PREALLOCATE_MAX);
            collect_capped(stream, max, capacity, &what).await
        })
        .await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes.to_vec())
    }

    /// Opens the blob `digest` to read as it arrives (one `GET`, no `Range`), refusing a blob
    /// whose declared length exceeds `max`. Only opening is retried. The bytes are not checked
    /// against `digest`: the reader checks each piece it uses (packs' chunks, by sha256), and
    /// must stop reading past `max` itself when the length was not declared.
    pub async fn open_blob(
        &self,
        image: &Reference,
        digest: &Digest,
        max: u64,
    ) -> Result<BlobStream, RegistryError> {
        let (_, stream) = self.open(image, &digest.to_string(), max).await?;
        Ok(stream)
    }

    /// One `GET` of the blob `what` (retried until answered), its declared length (at most
    /// `max`) and its body.
    async fn open(
        &self,
        image: &Reference,
        what: &str,
        max: u64,
    ) -> Result<(Option<u64>, BlobStream), RegistryError> {
        let (client, _) = self.prepare(image).await?;
        let direct = &self.inner.direct;
        let answer = self
            .retry("pull blob", what, || {
                direct.blob(
                    &self.inner.config,
                    image,
                    what,
                    None,
                    client.authorization.as_ref(),
                )
            })
            .await;
        let answer = self.forget_if_refused(image, answer)?;
        let len = answer.content_length();
        if len.is_some_and(|l| l > max) {
            return Err(RegistryError::TooLarge {
                what: what.to_owned(),
                limit: max,
            });
        }
        Ok((len, answer.into_stream().boxed()))
    }

    /// The blob `desc` references: its embedded `data` when that matches the descriptor, else
    /// read from the registry under the `max` cap ([`read_blob`](Self::read_blob)).
    pub async fn read_described(
        &self,
        image: &Reference,
        desc: &chunksnap_format::artifact::Descriptor,
        max: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        match desc.embedded() {
            Some(bytes) if bytes.len() as u64 <= max => Ok(bytes),
            _ => self.read_blob(image, &desc.sha256()?, max).await,
        }
    }

    /// Reads `len` bytes at `offset` of the blob `digest` with an HTTP Range request. A 206
    /// answer must have exactly `len` bytes; a registry that ignores `Range` and answers 200 with
    /// the whole blob is sliced (reading no further than needed). Short data is an error.
    #[tracing::instrument(skip(self), fields(image = %image, %digest))]
    pub async fn read_range(
        &self,
        image: &Reference,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, RegistryError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let (client, _) = self.prepare(image).await?;
        let d = digest.to_string();
        let short = |got: u64| RegistryError::ShortRange {
            digest: *digest,
            offset,
            expected: len,
            got,
        };
        // A connection broken or stalled mid-body, or a short answer, is as transient as a
        // failed request: the whole range is read again (`IoError` classifies as transient).
        let read = || async {
            let answer = self.range_get(&client, image, &d, offset, len).await?;
            let (got, partial) = match answer {
                part @ BlobAnswer::Part(_) => {
                    match collect_capped(part.into_stream(), len, len.min(PREALLOCATE_MAX), &d)
                        .await
                    {
                        Ok(b) => (b, true),
                        Err(RegistryError::Oci {
                            source: OciDistributionError::IoError(e),
                            ..
                        }) => return Err(OciDistributionError::IoError(e)),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                whole @ BlobAnswer::Whole(_) => {
                    (take_range(whole.into_stream(), offset, len).await?, false)
                }
            };
            if got.len() as u64 != len {
                return Err(OciDistributionError::IoError(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("range answer of {} bytes, expected {len}", got.len()),
                )));
            }
            Ok(Ok((got, partial)))
        };
        let (bytes, partial) = self.retry("range read", &d, read).await??;
        if bytes.len() as u64 != len {
            return Err(short(bytes.len() as u64));
        }
        if !partial {
            tracing::debug!(%digest, "registry ignored Range; sliced the full response");
        }
        Ok(bytes)
    }

    /// [`read_range`](Self::read_range)'s bytes as they arrive. Only opening the request is
    /// retried: a body that breaks or ends short is the reader's to finish (it may read the rest
    /// with `read_range`). A registry that ignores `Range` is sliced as with `read_range`, in
    /// one piece.
    #[tracing::instrument(skip(self), fields(image = %image, %digest))]
    pub async fn range_stream(
        &self,
        image: &Reference,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<BlobStream, RegistryError> {
        if len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let (client, _) = self.prepare(image).await?;
        let d = digest.to_string();
        let answer = self
            .retry("range read", &d, || {
                self.range_get(&client, image, &d, offset, len)
            })
            .await?;
        Ok(match answer {
            part @ BlobAnswer::Part(_) => part.into_stream().boxed(),
            whole @ BlobAnswer::Whole(_) => {
                tracing::debug!(%digest, "registry ignored Range; slicing the full response");
                futures::stream::once(take_range(whole.into_stream(), offset, len)).boxed()
            }
        })
    }

    /// One `GET` of `len` bytes at `offset` of the blob `digest` (a `Range` request).
    async fn range_get(
        &self,
        client: &ClientHandle,
        image: &Reference,
        digest: &str,
        offset: u64,
        len: u64,
    ) -> Result<BlobAnswer, OciDistributionError> {
        self.inner
            .direct
            .blob(
                &self.inner.config,
                image,
                digest,
                Some((offset, len)),
                client.authorization.as_ref(),
            )
            .await
    }

    /// Asks the registry to mount the blob `digest` from `source`'s repository into `image`'s
    /// (cross-repository mount, same registry only). Returns whether it was mounted; a registry
    /// that declines (it then opens an upload session instead, which it expires) gives `false`,
    /// and the caller copies the blob.
    pub async fn mount_blob(
        &self,
        image: &Reference,
        source: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        if image.resolve_registry() != source.resolve_registry() {
            return Ok(false);
        }
        let (client, _) = self.prepare(image).await?;
        match client.mount_blob(image, source, &digest.to_string()).await {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::debug!(%digest, error = %e, "cross-repository mount declined");
                Ok(false)
            }
        }
    }

    /// Whether the blob `digest` exists in `image`'s repository.
    pub async fn blob_exists(
        &self,
        image: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let (client, _) = self.prepare(image).await?;
        let d = digest.to_string();
        self.retry("check blob", &d, || client.blob_exists(image, &d))
            .await
    }

    /// Pushes `data` as the blob `digest` unless the repository already has it. Returns whether
    /// bytes were uploaded. The digest is checked before anything is sent.
    #[tracing::instrument(skip(self, data), fields(image = %image, %digest, size = data.len()))]
    pub async fn push_blob(
        &self,
        image: &Reference,
        digest: &Digest,
        data: Bytes,
    ) -> Result<bool, RegistryError> {
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                what: "blob to push".to_owned(),
                expected: digest.to_string(),
                actual,
            });
        }
        if self.blob_exists(image, digest).await? {
            return Ok(false);
        }
        let (client, _) = self.prepare(image).await?;
        let d = digest.to_string();
        self.retry("push blob", &d, || {
            client.push_blob(image, data.clone(), &d)
        })
        .await?;
        Ok(true)
    }
}

/// From a whole-blob stream (a registry that ignored `Range`), the `len` bytes at `offset`
/// (fewer if the blob ends first); stops reading once they are in hand.
async fn take_range(
    mut stream: impl Stream<Item = std::io::Result<Bytes>> + Unpin,
    offset: u64,
    len: u64,
) -> std::io::Result<Bytes> {
    let mut skipped = 0u64;
    let mut out = BytesMut::with_capacity(len.min(64 << 20) as usize);
    while (out.len() as u64) < len {
        let Some(mut chunk) = stream.try_next().await? else {
            break;
        };
        if skipped < offset {
            let skip = (offset - skipped).min(chunk.len() as u64);
            skipped += skip;
            chunk = chunk.slice(skip as usize..);
        }
        let want = (len - out.len() as u64).min(chunk.len() as u64) as usize;
        out.extend_from_slice(&chunk[..want]);
    }
    Ok(out.freeze())
}

/// Most bytes a body buffer is allocated for before they arrive. A buffer grown by doubling
/// instead holds up to twice its body while it grows, and a node reads several 4 MiB ranges at
/// once.
const PREALLOCATE_MAX: u64 = 8 << 20;

/// Collects a stream into a buffer first sized for `capacity` bytes, failing once it exceeds
/// `max` bytes.
async fn collect_capped(
    mut stream: impl Stream<Item = std::io::Result<Bytes>> + Unpin,
    max: u64,
    capacity: u64,
    what: &str,
) -> Result<Bytes, RegistryError> {
    let mut out = BytesMut::with_capacity(capacity.min(max) as usize);
    while let Some(chunk) = stream.next().await {
        pace::received(chunk.as_ref().map_or(0, Bytes::len));
        let chunk = chunk.map_err(|e| RegistryError::Oci {
            op: "read blob",
            source: e.into(),
        })?;
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(RegistryError::TooLarge {
                what: what.to_owned(),
                limit: max,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// A [`RangeSource`](crate::fetch::RangeSource) reading packs from one repository.
#[derive(Debug, Clone)]
pub struct RepoRangeSource {
    /// The client.
    pub client: RegistryClient,
    /// Any reference into the repository holding the packs (tag or digest is ignored).
    pub repo: Reference,
}

impl crate::fetch::RangeSource for RepoRangeSource {
    fn host(&self) -> &str {
        self.repo.resolve_registry()
    }

    async fn read_range(
        &self,
        pack: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, crate::fetch::FetchError> {
        use crate::fetch::FetchError;
        let digest = Digest::parse(pack).map_err(|e| FetchError::range(pack, offset, len, e))?;
        match self
            .client
            .read_range(&self.repo, &digest, offset, len)
            .await
        {
            Ok(b) => Ok(b),
            Err(RegistryError::ShortRange { got, .. }) => Err(FetchError::ShortRead {
                pack: pack.to_owned(),
                offset,
                expected: len,
                got,
            }),
            Err(e) => Err(FetchError::range(pack, offset, len, e)),
        }
    }

    async fn stream_range(
        &self,
        pack: &str,
        offset: u64,
        len: u64,
    ) -> Result<crate::fetch::RangeStream, crate::fetch::FetchError> {
        use crate::fetch::FetchError;
        let digest = Digest::parse(pack).map_err(|e| FetchError::range(pack, offset, len, e))?;
        let stream = self
            .client
            .range_stream(&self.repo, &digest, offset, len)
            .await
            .map_err(|e| FetchError::range(pack, offset, len, e))?;
        let pack = pack.to_owned();
        Ok(stream
            .map(move |piece| piece.map_err(|e| FetchError::range(&pack, offset, len, e)))
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8], size: usize) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin {
        let v: Vec<_> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(v)
    }

    #[tokio::test]
    async fn full_response_is_sliced_to_the_range() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        for size in [1, 7, 100, 1000] {
            for (off, len) in [(0, 10), (5, 300), (999, 1), (990, 10), (0, 1000)] {
                let got = take_range(chunks(&data, size), off, len).await.unwrap();
                assert_eq!(&got[..], &data[off as usize..(off + len) as usize]);
            }
            // Past the end: short, which read_range reports as ShortRange.
            let got = take_range(chunks(&data, size), 995, 10).await.unwrap();
            assert_eq!(got.len(), 5);
        }
    }

    #[tokio::test]
    async fn collect_capped_refuses_oversized_blobs() {
        let data = vec![0u8; 100];
        assert_eq!(
            collect_capped(chunks(&data, 30), 100, 100, "b")
                .await
                .unwrap()
                .len(),
            100
        );
        assert!(matches!(
            collect_capped(chunks(&data, 30), 99, 0, "b").await,
            Err(RegistryError::TooLarge { .. })
        ));
    }
}
