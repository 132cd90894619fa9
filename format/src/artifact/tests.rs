//! Tests of building and parsing artifact manifests.

use super::*;

fn d(n: u8) -> Digest {
    Digest::of(&[n])
}

fn subject() -> Descriptor {
    Descriptor::new(OCI_MANIFEST_MEDIA_TYPE, &d(100), 1234)
}

fn layers() -> Vec<LayerEntry> {
    vec![
        LayerEntry {
            layer_digest: d(1),
            index_digest: d(11),
            index_size: 10,
            packs: vec![(d(30), 300), (d(20), 200)],
            index_inline: None,
            index_delta: None,
            sketch: None,
        },
        LayerEntry {
            layer_digest: d(2),
            index_digest: d(12),
            index_size: 12,
            packs: vec![(d(20), 200)],
            index_inline: None,
            index_delta: None,
            sketch: None,
        },
    ]
}

#[test]
fn embedded_data_is_used_only_when_it_matches_the_descriptor() {
    let content = b"layer index bytes".to_vec();
    let mut desc = Descriptor::new(LAYER_INDEX_MEDIA_TYPE, &Digest::of(&content), 17);
    assert_eq!(desc.embedded(), None, "nothing embedded");
    desc.embed(&content);
    assert_eq!(desc.embedded(), Some(content.clone()));
    let json = serde_json::to_value(&desc).unwrap();
    assert_eq!(json["data"], "bGF5ZXIgaW5kZXggYnl0ZXM=");

    let mut other = desc.clone();
    other.embed(b"other bytes, same len");
    assert_eq!(other.embedded(), None, "digest mismatch");
    let mut wrong_size = desc.clone();
    wrong_size.size = 16;
    assert_eq!(wrong_size.embedded(), None, "size mismatch");
    let mut garbage = desc;
    garbage
        .extra
        .insert("data".into(), serde_json::Value::String("%%%".into()));
    assert_eq!(garbage.embedded(), None, "not base64");
}

#[test]
fn small_indexes_are_embedded_in_the_artifact() {
    let small = vec![7u8; 100];
    let big = vec![8u8; MAX_EMBEDDED + 1];
    let mut layers = layers();
    layers[0].index_digest = Digest::of(&small);
    layers[0].index_size = small.len() as u64;
    layers[0].index_inline = Some(small.clone());
    layers[1].index_digest = Digest::of(&big);
    layers[1].index_size = big.len() as u64;
    layers[1].index_inline = Some(big);
    let a = build(&subject(), &layers).unwrap();
    let parsed = parse(&a.bytes, Some(&d(100))).unwrap();
    assert_eq!(parsed.indexes[&d(1)].embedded(), Some(small));
    assert_eq!(parsed.indexes[&d(2)].embedded(), None, "over MAX_EMBEDDED");
    assert!(!parsed.indexes[&d(2)].extra.contains_key("data"));
}

#[test]
fn build_is_deterministic_and_parses_back() {
    let a = build(&subject(), &layers()).unwrap();
    let b = build(&subject(), &layers()).unwrap();
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(a.digest, Digest::of(&a.bytes));

    let parsed = parse(&a.bytes, Some(&d(100))).unwrap();
    assert_eq!(parsed.subject, subject());
    assert_eq!(parsed.indexes.len(), 2);
    assert_eq!(parsed.indexes[&d(1)].digest, d(11).to_string());
    assert_eq!(parsed.indexes[&d(2)].size, 12);
    assert_eq!(
        parsed
            .packs
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect::<Vec<_>>(),
        {
            let mut v = vec![(d(20), 200), (d(30), 300)];
            v.sort();
            v
        }
    );
}

#[test]
fn manifest_shape_matches_the_oci_spec() {
    let a = build(&subject(), &layers()).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&a.bytes).unwrap();
    assert_eq!(v["mediaType"], OCI_MANIFEST_MEDIA_TYPE);
    assert_eq!(v["artifactType"], ARTIFACT_TYPE);
    assert_eq!(v["config"]["mediaType"], EMPTY_MEDIA_TYPE);
    assert_eq!(
        v["config"]["digest"],
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    assert_eq!(v["config"]["size"], 2);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    assert_eq!(layers[0]["mediaType"], LAYER_INDEX_MEDIA_TYPE);
    assert_eq!(
        layers[0]["annotations"][LAYER_DIGEST_ANNOTATION],
        d(1).to_string()
    );
    assert_eq!(layers[2]["mediaType"], PACK_MEDIA_TYPE);
    assert!(layers[2]["annotations"].is_null());
    assert_eq!(v["subject"]["digest"], d(100).to_string());
}

#[test]
fn repeated_layer_is_listed_once() {
    let mut l = layers();
    l.push(l[0].clone());
    let a = build(&subject(), &l).unwrap();
    assert_eq!(parse(&a.bytes, None).unwrap().indexes.len(), 2);
}

/// An index delta against layer 9's index, naming `packs`.
fn index_delta(packs: Vec<Digest>) -> IndexDelta {
    IndexDelta {
        digest: d(40),
        size: 7,
        base_layer: d(9),
        base_raw: d(41),
        raw: d(42),
        packs,
    }
}

#[test]
fn index_deltas_parse_back_and_need_their_index() {
    let mut l = layers();
    let delta = index_delta(Vec::new());
    l[1].index_delta = Some(delta.clone());
    let built = build(&subject(), &l).unwrap();
    let a = parse(&built.bytes, Some(&d(100))).unwrap();
    assert_eq!(a.index_deltas.len(), 1);
    assert_eq!(a.index_deltas[&d(2)], delta);
    // Without its layer's index, or without an annotation, the artifact is rejected.
    let mut v: serde_json::Value = serde_json::from_slice(&built.bytes).unwrap();
    let layers = v["layers"].as_array_mut().unwrap();
    let pos = layers
        .iter()
        .position(|x| x["mediaType"] == INDEX_DELTA_MEDIA_TYPE)
        .unwrap();
    let mut no_base = layers[pos].clone();
    no_base["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(INDEX_BASE_RAW_ANNOTATION);
    layers.remove(pos - 1);
    let orphan = serde_json::to_vec(&v).unwrap();
    assert!(parse(&orphan, None).is_err());
    let mut v: serde_json::Value = serde_json::from_slice(&built.bytes).unwrap();
    v["layers"][pos] = no_base;
    assert!(parse(&serde_json::to_vec(&v).unwrap(), None).is_err());
}

#[test]
fn an_index_deltas_packs_parse_back_and_must_be_packs_of_the_artifact() {
    let mut l = layers();
    let delta = index_delta(vec![d(20), d(30)]);
    l[1].index_delta = Some(delta.clone());
    let built = build(&subject(), &l).unwrap();
    let a = parse(&built.bytes, None).unwrap();
    assert_eq!(a.index_deltas[&d(2)].packs, vec![d(20), d(30)]);

    // A pack the artifact does not list is refused: nodes read these whole.
    let mut v: serde_json::Value = serde_json::from_slice(&built.bytes).unwrap();
    let pos = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|x| x["mediaType"] == INDEX_DELTA_MEDIA_TYPE)
        .unwrap();
    for bad in [format!("{},{}", d(20), d(77)), "not-a-digest".to_owned()] {
        v["layers"][pos]["annotations"][INDEX_DELTA_PACKS_ANNOTATION] = bad.clone().into();
        assert!(
            parse(&serde_json::to_vec(&v).unwrap(), None).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn sketches_parse_back_and_need_their_index() {
    let mut l = layers();
    l[0].sketch = Some((d(50), 64));
    let built = build(&subject(), &l).unwrap();
    let a = parse(&built.bytes, None).unwrap();
    assert_eq!(a.sketches.len(), 1);
    assert_eq!(a.sketches[&d(1)].sha256().unwrap(), d(50));
    let mut v: serde_json::Value = serde_json::from_slice(&built.bytes).unwrap();
    let layers = v["layers"].as_array_mut().unwrap();
    let pos = layers
        .iter()
        .position(|x| x["mediaType"] == LAYER_SKETCH_MEDIA_TYPE)
        .unwrap();
    layers.remove(pos - 1);
    assert!(parse(&serde_json::to_vec(&v).unwrap(), None).is_err());
}

#[test]
fn wrong_subject_is_rejected() {
    let a = build(&subject(), &layers()).unwrap();
    assert!(matches!(
        parse(&a.bytes, Some(&d(99))),
        Err(ArtifactError::SubjectMismatch { .. })
    ));
}

#[test]
fn other_artifact_types_are_rejected() {
    let a = build(&subject(), &layers()).unwrap();
    let text = String::from_utf8(a.bytes)
        .unwrap()
        .replace(ARTIFACT_TYPE, "application/x-other");
    assert!(matches!(
        parse(text.as_bytes(), None),
        Err(ArtifactError::NotArtifact(_))
    ));
}

#[test]
fn conflicting_pack_sizes_are_rejected() {
    let mut l = layers();
    l[1].packs = vec![(d(20), 201)];
    assert!(matches!(
        build(&subject(), &l),
        Err(ArtifactError::SizeConflict { .. })
    ));
}

#[test]
fn unknown_descriptor_fields_survive_a_round_trip() {
    let text = r#"{"mediaType":"a","digest":"sha256:x","size":1,"platform":{"os":"linux"}}"#;
    let d: Descriptor = serde_json::from_str(text).unwrap();
    assert_eq!(d.extra["platform"]["os"], "linux");
    assert_eq!(serde_json::to_string(&d).unwrap(), text);
}
