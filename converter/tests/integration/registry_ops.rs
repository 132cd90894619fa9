//! RegistryClient against distribution 2.8: push/pull, Range reads, tags, referrers fallback.

use bytes::Bytes;
use chunksnap_core::registry::referrers::{Link, referrers_tag};
use chunksnap_core::registry::{Reference, RegistryClient, RegistryError};
use chunksnap_format::artifact::{
    self, ARTIFACT_TYPE, Descriptor, OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE,
};
use chunksnap_format::digest::Digest;

use crate::common::{self, Registry};

#[tokio::test]
async fn push_pull_range_and_tags() {
    let reg = Registry::start();
    let client = reg.client();
    let image = reg.reference("ops/app", "v1");

    let data = Bytes::from(common::noise(1, 100_000));
    let d = Digest::of(&data);
    assert!(client.push_blob(&image, &d, data.clone()).await.unwrap());
    assert!(
        !client.push_blob(&image, &d, data.clone()).await.unwrap(),
        "second push skipped"
    );
    assert!(client.blob_exists(&image, &d).await.unwrap());

    assert_eq!(client.read_blob(&image, &d, 1 << 20).await.unwrap(), data);
    assert!(matches!(
        client.read_blob(&image, &d, 1000).await,
        Err(RegistryError::TooLarge { .. })
    ));
    let r = client.read_range(&image, &d, 12_345, 777).await.unwrap();
    assert_eq!(&r[..], &data[12_345..12_345 + 777]);
    let tail = client.read_range(&image, &d, 99_000, 1000).await.unwrap();
    assert_eq!(&tail[..], &data[99_000..]);
    assert!(
        client.read_range(&image, &d, 99_500, 1000).await.is_err(),
        "a range past the end must not come back short"
    );

    let elsewhere = reg.reference("ops/mounted", "v1");
    assert!(client.mount_blob(&elsewhere, &image, &d).await.unwrap());
    assert!(client.blob_exists(&elsewhere, &d).await.unwrap());

    let missing = Digest::of(b"missing");
    assert!(matches!(
        client.read_blob(&image, &missing, 10).await,
        Err(RegistryError::NotFound { .. })
    ));

    let m1 = common::push_image(
        &client,
        &image,
        &[common::layer(&[common::File("a", 0o644, b"x".to_vec())])],
    )
    .await;
    let resolved = client.resolve(&image).await.unwrap();
    assert_eq!(resolved.digest, m1);
    assert_eq!(resolved.media_type, OCI_MANIFEST_MEDIA_TYPE);
    let by_digest = client.with_digest(&image, &m1.to_string());
    assert_eq!(
        client.resolve(&by_digest).await.unwrap().bytes,
        resolved.bytes
    );
    let platforms = client.platform_manifests(&image).await.unwrap();
    assert_eq!(platforms.len(), 1);
    assert_eq!(platforms[0].manifest.layers.len(), 1);

    common::push_image(&client, &reg.reference("ops/app", "v2"), &[]).await;
    let mut tags = client.list_tags(&image).await.unwrap();
    tags.sort();
    assert_eq!(tags, ["v1", "v2"]);
    assert!(matches!(
        client.resolve(&reg.reference("ops/app", "nope")).await,
        Err(RegistryError::NotFound { .. })
    ));
}

/// The descriptor of `image`'s manifest `subject`, with the empty config blob that artifacts
/// referring to it use pushed to its repository.
async fn subject_for_artifacts(
    client: &RegistryClient,
    image: &Reference,
    subject: &Digest,
) -> Descriptor {
    let raw = client.resolve(image).await.unwrap();
    let empty = Digest::of(artifact::EMPTY_JSON);
    client
        .push_blob(image, &empty, Bytes::from_static(artifact::EMPTY_JSON))
        .await
        .unwrap();
    Descriptor::new(OCI_MANIFEST_MEDIA_TYPE, subject, raw.bytes.len() as u64)
}

#[tokio::test]
async fn referrers_tag_fallback_keeps_other_referrers() {
    let reg = Registry::start();
    let client = reg.client();
    let image = reg.reference("ref/app", "v1");
    let subject = common::push_image(&client, &image, &[]).await;
    let subject_desc = subject_for_artifacts(&client, &image, &subject).await;
    let empty = Digest::of(artifact::EMPTY_JSON);

    // Another tool's referrer (e.g. a signature), linked first.
    let sig = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": artifact::EMPTY_MEDIA_TYPE, "digest": empty.to_string(), "size": 2},
        "layers": [],
        "subject": subject_desc,
    }))
    .unwrap();
    let (sig_digest, link) = client
        .publish_referrer(
            &image,
            &subject,
            Bytes::from(sig),
            "application/vnd.example.signature",
        )
        .await
        .unwrap();
    assert!(
        matches!(link, Link::TagIndexUpdated(_)),
        "distribution 2.8 has no referrers API"
    );

    // Our artifact (no layers needed for linking).
    let built = artifact::build(&subject_desc, &[]).unwrap();
    let (ours, link) = client
        .publish_referrer(
            &image,
            &subject,
            Bytes::from(built.bytes.clone()),
            ARTIFACT_TYPE,
        )
        .await
        .unwrap();
    assert_eq!(ours, built.digest);
    assert!(matches!(link, Link::TagIndexUpdated(_)));

    let all = client.referrers(&image, &subject, None).await.unwrap();
    let mut digests: Vec<_> = all.iter().map(|d| d.digest.clone()).collect();
    let mut expected = vec![sig_digest.to_string(), ours.to_string()];
    expected.sort();
    digests.sort();
    assert_eq!(digests, expected, "the signature referrer is kept");
    let only_ours = client
        .referrers(&image, &subject, Some(ARTIFACT_TYPE))
        .await
        .unwrap();
    assert_eq!(only_ours.len(), 1);
    assert_eq!(only_ours[0].digest, ours.to_string());

    // Publishing again changes nothing.
    let (_, link) = client
        .publish_referrer(
            &image,
            &subject,
            Bytes::from(built.bytes.clone()),
            ARTIFACT_TYPE,
        )
        .await
        .unwrap();
    assert_eq!(link, Link::AlreadyListed);

    let (found_digest, found) = client
        .find_artifact(&image, &subject)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found_digest, ours);
    assert_eq!(found.subject.digest, subject.to_string());

    // The tag index is an OCI image index, entries sorted by digest.
    let tag = client.with_tag(&image, &referrers_tag(&subject));
    let raw = client.resolve(&tag).await.unwrap();
    assert!(raw.is_index());
    let v: serde_json::Value = serde_json::from_slice(&raw.bytes).unwrap();
    let listed: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );

    // Our entry embeds the artifact manifest (a node reading the tag needs no second request).
    let entries: Vec<Descriptor> = serde_json::from_value(v["manifests"].clone()).unwrap();
    let entry = entries
        .iter()
        .find(|d| d.digest == ours.to_string())
        .unwrap();
    assert_eq!(entry.embedded(), Some(built.bytes.clone()));

    // An entry whose embedded data is wrong is not believed: the manifest is read by digest.
    let mut index = v.clone();
    for m in index["manifests"].as_array_mut().unwrap() {
        if m["digest"] == ours.to_string() {
            m["data"] = serde_json::Value::String("e30=".into()); // "{}"
        }
    }
    client
        .push_manifest(
            &tag,
            Bytes::from(serde_json::to_vec(&index).unwrap()),
            OCI_INDEX_MEDIA_TYPE,
        )
        .await
        .unwrap();
    let (found_digest, _) = reg
        .client()
        .find_artifact(&image, &subject)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found_digest, ours);
}

/// A referrers tag listing an artifact made for another image is not trusted: the artifact
/// must name the image it is looked up for.
#[tokio::test]
async fn a_tag_listing_another_images_artifact_is_ignored() {
    let reg = Registry::start();
    let client = reg.client();
    let a = reg.reference("ref/tagged", "a");
    let b = reg.reference("ref/tagged", "b");
    let subject_a = common::push_image(&client, &a, &[]).await;
    let other = common::layer(&[common::File("other", 0o644, b"other".to_vec())]);
    let subject_b = common::push_image(&client, &b, &[other]).await;
    assert_ne!(subject_a, subject_b);
    let b_desc = subject_for_artifacts(&client, &b, &subject_b).await;
    let built = artifact::build(&b_desc, &[]).unwrap();
    let (for_b, _) = client
        .publish_referrer(&b, &subject_b, Bytes::from(built.bytes), ARTIFACT_TYPE)
        .await
        .unwrap();

    // A's referrers tag lists B's artifact.
    let mut listed = Descriptor::new(OCI_MANIFEST_MEDIA_TYPE, &for_b, 0);
    listed.artifact_type = Some(ARTIFACT_TYPE.to_owned());
    listed.size = client
        .resolve(&client.with_digest(&a, &for_b.to_string()))
        .await
        .unwrap()
        .bytes
        .len() as u64;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX_MEDIA_TYPE,
        "manifests": [listed],
    }))
    .unwrap();
    client
        .push_manifest(
            &client.with_tag(&a, &referrers_tag(&subject_a)),
            Bytes::from(index),
            OCI_INDEX_MEDIA_TYPE,
        )
        .await
        .unwrap();

    assert!(
        client
            .find_artifact(&a, &subject_a)
            .await
            .unwrap()
            .is_none()
    );
    let (found, _) = client.find_artifact(&b, &subject_b).await.unwrap().unwrap();
    assert_eq!(found, for_b);
}

/// bcrypt (cost 4) of the test password `s3cret-pass`.
const HASH: &str = "$2b$04$sJaoBQKAqW6rpwv9pNMHEeWNV86WdXsw7nh1T234C5RGjbu0RDElq";

fn client_with_auth(
    reg: &Registry,
    auth_b64: Option<&str>,
) -> chunksnap_core::registry::RegistryClient {
    let config = reg
        .dir
        .path()
        .join(format!("docker-{}.json", auth_b64.unwrap_or("none")));
    let json = match auth_b64 {
        Some(a) => serde_json::json!({"auths": {reg.host(): {"auth": a}}}),
        None => serde_json::json!({}),
    };
    std::fs::write(&config, serde_json::to_vec(&json).unwrap()).unwrap();
    chunksnap_core::registry::RegistryClient::new(chunksnap_core::registry::RegistryConfig {
        plain_http_all: true,
        docker_config: Some(config),
        retries: 0,
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn docker_config_credentials_and_auth_errors() {
    let reg = Registry::start_with_htpasswd("tester", HASH);
    let image = reg.reference("auth/app", "v1");

    // base64("tester:s3cret-pass")
    let good = client_with_auth(&reg, Some("dGVzdGVyOnMzY3JldC1wYXNz"));
    let digest = common::push_image(&good, &image, &[]).await;
    assert_eq!(good.resolve(&image).await.unwrap().digest, digest);
    assert_eq!(good.list_tags(&image).await.unwrap(), ["v1"]);

    for client in [
        client_with_auth(&reg, None),
        // base64("tester:wrong")
        client_with_auth(&reg, Some("dGVzdGVyOndyb25n")),
    ] {
        let err = client.resolve(&image).await.unwrap_err();
        assert!(matches!(err, RegistryError::Auth { .. }), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("wrong") && !text.contains("s3cret"),
            "{text}"
        );
    }
}

/// A pull-secret watcher rewrites the docker config: after `credentials_ttl` the client uses
/// the new credentials (oci-client keeps the first ones it sees, so the client reconnects).
#[tokio::test]
async fn changed_credentials_are_picked_up() {
    let reg = Registry::start_with_htpasswd("tester", HASH);
    let image = reg.reference("auth/app", "v1");
    let good = client_with_auth(&reg, Some("dGVzdGVyOnMzY3JldC1wYXNz"));
    common::push_image(&good, &image, &[]).await;

    let config = reg.dir.path().join("rotating.json");
    let write = |auth: &str| {
        let json = serde_json::json!({"auths": {reg.host(): {"auth": auth}}});
        std::fs::write(&config, serde_json::to_vec(&json).unwrap()).unwrap();
    };
    write("dGVzdGVyOndyb25n"); // tester:wrong
    let client =
        chunksnap_core::registry::RegistryClient::new(chunksnap_core::registry::RegistryConfig {
            plain_http_all: true,
            docker_config: Some(config.clone()),
            retries: 0,
            credentials_ttl: std::time::Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    let err = client.resolve(&image).await.unwrap_err();
    assert!(matches!(err, RegistryError::Auth { .. }), "{err:?}");
    write("dGVzdGVyOnMzY3JldC1wYXNz"); // tester:s3cret-pass
    client.resolve(&image).await.unwrap();
}

#[tokio::test]
async fn refused_connections_are_retried_then_reported() {
    let reg = Registry::start();
    let image = reg.reference("gone/app", "v1");
    let client =
        chunksnap_core::registry::RegistryClient::new(chunksnap_core::registry::RegistryConfig {
            plain_http_all: true,
            docker_config: None,
            retries: 2,
            backoff: std::time::Duration::from_millis(5),
            ..Default::default()
        })
        .unwrap();
    drop(reg); // the registry process is killed and reaped
    let err = client.resolve(&image).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
}

/// `GET /v2/` requests in the registry's access log.
fn probes(reg: &Registry) -> usize {
    reg.log().matches("\"GET /v2/ HTTP/1.1\"").count()
}

/// On a registry that asks for no credentials, `oci-client` alone would send `GET /v2/` before
/// every request; the client probes each host once (per credentials TTL) instead.
#[tokio::test]
async fn an_open_registry_is_probed_once_not_before_every_request() {
    let reg = Registry::start();
    let client = reg.client();
    let image = reg.reference("probe/app", "v1");
    let layer = common::layer(&[common::File("a", 0o644, common::noise(3, 50_000))]);
    let manifest = common::push_image(&client, &image, std::slice::from_ref(&layer)).await;
    let blob = Digest::of(&layer);
    for _ in 0..3 {
        assert_eq!(client.resolve(&image).await.unwrap().digest, manifest);
        let by_digest = client.with_digest(&image, &manifest.to_string());
        client.resolve(&by_digest).await.unwrap();
        assert_eq!(
            client.read_blob(&image, &blob, 1 << 20).await.unwrap(),
            layer
        );
        let r = client.read_range(&image, &blob, 10, 100).await.unwrap();
        assert_eq!(&r[..], &layer[10..110]);
        assert!(
            client
                .find_artifact(&image, &manifest)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(client.list_tags(&image).await.unwrap(), ["v1"]);
    }
    assert_eq!(probes(&reg), 1, "registry log:\n{}", reg.log());
    // Still found missing manifests and blobs through the probe-free path.
    assert!(matches!(
        client.resolve(&reg.reference("probe/app", "nope")).await,
        Err(RegistryError::NotFound { .. })
    ));
}

/// A registry unreachable when first probed, then back: once it answers the probe as open, its
/// requests go out without a probe each (the failed probe's path leaves nothing behind).
#[tokio::test]
async fn an_open_registry_back_from_an_outage_is_not_probed_per_request() {
    let down = Registry::start();
    let port = down.addr.port();
    let client = down.client();
    let image = down.reference("outage/app", "v1");
    drop(down);
    assert!(client.resolve(&image).await.is_err(), "registry is down");

    let reg = Registry::start_on(port);
    let layer = common::layer(&[common::File("a", 0o644, common::noise(4, 20_000))]);
    common::push_image(&client, &image, std::slice::from_ref(&layer)).await;
    let blob = Digest::of(&layer);
    let before = probes(&reg);
    for _ in 0..3 {
        client.resolve(&image).await.unwrap();
        client.read_blob(&image, &blob, 1 << 20).await.unwrap();
        client.read_range(&image, &blob, 0, 10).await.unwrap();
    }
    assert_eq!(probes(&reg), before, "registry log:\n{}", reg.log());
}
