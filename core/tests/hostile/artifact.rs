//! Hostile artifact manifests: another image's artifact, wrong types, bad digests, and JSON
//! built to exhaust the parser.

use chunksnap_format::artifact::{
    self, ArtifactError, Descriptor, LayerEntry, OCI_MANIFEST_MEDIA_TYPE,
};
use chunksnap_format::digest::Digest;

fn d(n: u8) -> Digest {
    Digest::of(&[n])
}

fn built(subject: &Digest) -> Vec<u8> {
    let subject = Descriptor::new(OCI_MANIFEST_MEDIA_TYPE, subject, 500);
    let layers = [LayerEntry {
        layer_digest: d(1),
        index_digest: d(2),
        index_size: 10,
        index_inline: None,
        packs: vec![(d(3), 30)],
        index_delta: None,
        sketch: None,
    }];
    artifact::build(&subject, &layers).unwrap().bytes
}

/// The artifact as JSON, edited by `f`, serialised again.
fn edited(f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&built(&d(100))).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn an_artifact_for_another_image_is_refused() {
    let bytes = built(&d(100));
    artifact::parse(&bytes, Some(&d(100))).unwrap();
    match artifact::parse(&bytes, Some(&d(101))) {
        Err(ArtifactError::SubjectMismatch { expected, found }) => {
            assert_eq!(expected, d(101));
            assert_eq!(found, d(100).to_string());
        }
        other => panic!("{other:?}"),
    }
    // No subject at all cannot match any image.
    let none = edited(|v| {
        v.as_object_mut().unwrap().remove("subject");
    });
    assert!(matches!(
        artifact::parse(&none, Some(&d(100))),
        Err(ArtifactError::NotArtifact(_))
    ));
    // A subject digest that is not sha256 is an error, not a match.
    let odd = edited(|v| v["subject"]["digest"] = "sha512:abcd".into());
    assert!(matches!(
        artifact::parse(&odd, Some(&d(100))),
        Err(ArtifactError::Digest(_))
    ));
}

#[test]
fn malformed_artifacts_are_typed_errors() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("artifactType", edited(|v| v["artifactType"] = "x".into())),
        ("mediaType", edited(|v| v["mediaType"] = "x".into())),
        ("schemaVersion", edited(|v| v["schemaVersion"] = 1.into())),
        (
            "config",
            edited(|v| v["config"]["mediaType"] = "application/json".into()),
        ),
        (
            "layer type",
            edited(|v| v["layers"][0]["mediaType"] = "application/x-evil".into()),
        ),
        (
            "annotation",
            edited(|v| {
                v["layers"][0]["annotations"] = serde_json::json!({});
            }),
        ),
        (
            "index digest",
            edited(|v| v["layers"][0]["digest"] = "sha256:../../etc".into()),
        ),
        (
            "pack digest",
            edited(|v| v["layers"][1]["digest"] = "sha256:".into()),
        ),
        (
            "duplicate layer",
            edited(|v| {
                let l = v["layers"][0].clone();
                v["layers"].as_array_mut().unwrap().push(l);
            }),
        ),
        (
            "pack size conflict",
            edited(|v| {
                let mut p = v["layers"][1].clone();
                p["size"] = 31.into();
                v["layers"].as_array_mut().unwrap().push(p);
            }),
        ),
        (
            "negative size",
            edited(|v| v["layers"][1]["size"] = (-1).into()),
        ),
        ("not json", b"\x00\xff{".to_vec()),
        ("empty", Vec::new()),
        ("array", b"[]".to_vec()),
    ];
    for (name, bytes) in cases {
        let r = artifact::parse(&bytes, None);
        assert!(r.is_err(), "{name}: {r:?}");
    }
}

#[test]
fn deeply_nested_json_does_not_overflow_the_stack() {
    for open in ["[", "{\"a\":"] {
        let mut text = String::from("{\"schemaVersion\":2,\"x\":");
        text.push_str(&open.repeat(200_000));
        let r = artifact::parse(text.as_bytes(), None);
        assert!(matches!(r, Err(ArtifactError::Json(_))), "{r:?}");
    }
    // A huge flat array of layers parses in bounded time (no quadratic work).
    let mut v: serde_json::Value = serde_json::from_slice(&built(&d(100))).unwrap();
    let pack = v["layers"][1].clone();
    let layers = v["layers"].as_array_mut().unwrap();
    for _ in 0..100_000 {
        layers.push(pack.clone());
    }
    let bytes = serde_json::to_vec(&v).unwrap();
    let started = std::time::Instant::now();
    let a = artifact::parse(&bytes, Some(&d(100))).unwrap();
    assert_eq!(a.packs.len(), 1);
    assert!(started.elapsed().as_secs() < 60);
}
