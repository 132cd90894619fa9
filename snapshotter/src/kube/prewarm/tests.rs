//! Revision diffing and filters, on ReplicaSets and pods as the API server sends them.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;

use super::plan::{Filters, State};

fn rs(ns: &str, name: &str, deploy: &str, revision: u64, images: &[&str]) -> ReplicaSet {
    rs_annotated(ns, name, deploy, revision, images, None)
}

fn rs_annotated(
    ns: &str,
    name: &str,
    deploy: &str,
    revision: u64,
    images: &[&str],
    prewarm: Option<&str>,
) -> ReplicaSet {
    let containers: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({ "name": format!("c{i}"), "image": image }))
        .collect();
    let mut annotations =
        serde_json::json!({ "deployment.kubernetes.io/revision": revision.to_string() });
    if let Some(v) = prewarm {
        annotations["chunksnap.io/prewarm"] = v.into();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "namespace": ns,
            "name": name,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": deploy,
                "uid": format!("uid-{ns}-{deploy}"), "controller": true
            }]
        },
        "spec": {
            "selector": {},
            "template": { "spec": { "containers": containers } }
        }
    }))
    .unwrap()
}

fn pod(ns: &str, name: &str, replicaset: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": ns,
            "name": name,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replicaset,
                "uid": "x", "controller": true
            }]
        },
        "spec": { "containers": [] },
        "status": { "phase": "Running" }
    }))
    .unwrap()
}

#[test]
fn a_new_revision_with_new_images_is_planned_once() {
    let mut state = State::default();
    state.replace_rs(&[rs("web", "app-1", "app", 1, &["r/app:v1", "r/sidecar:v1"])]);
    state.replace_pods(&[pod("web", "app-1-a", "app-1")]);
    let filters = Filters::default();
    assert!(state.plan(&filters).is_empty(), "no new revision yet");

    state.apply_rs(&rs("web", "app-2", "app", 2, &["r/app:v2", "r/sidecar:v1"]));
    let plans = state.plan(&filters);
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].images, ["r/app:v2"], "only the image that changed");
    assert_eq!(plans[0].workload.name, "app");
    assert_eq!(plans[0].replicaset, "app-2");
    assert_eq!(plans[0].rollout(), "web/app@2");
    assert!(state.plan(&filters).is_empty(), "planned once");

    // A relist of the same objects plans nothing again.
    state.replace_rs(&[
        rs("web", "app-1", "app", 1, &["r/app:v1", "r/sidecar:v1"]),
        rs("web", "app-2", "app", 2, &["r/app:v2", "r/sidecar:v1"]),
    ]);
    assert!(state.plan(&filters).is_empty());

    // Revision 3 while the node still runs revision 1.
    state.apply_rs(&rs("web", "app-3", "app", 3, &["r/app:v3", "r/sidecar:v1"]));
    let plans = state.plan(&filters);
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].images, ["r/app:v3"]);
}

#[test]
fn nothing_is_planned_without_pods_here_or_without_new_images() {
    let filters = Filters::default();
    // No pod of the workload on this node.
    let mut state = State::default();
    state.replace_rs(&[
        rs("web", "app-1", "app", 1, &["r/app:v1"]),
        rs("web", "app-2", "app", 2, &["r/app:v2"]),
    ]);
    state.replace_pods(&[pod("web", "other-1-a", "other-1")]);
    assert!(state.plan(&filters).is_empty());

    // The pods here already run the newest revision.
    state.apply_pod(&pod("web", "app-2-a", "app-2"));
    assert!(state.plan(&filters).is_empty());

    // A new revision that changes no image (say an env var).
    let mut state = State::default();
    state.replace_rs(&[
        rs("web", "app-1", "app", 1, &["r/app:v1"]),
        rs("web", "app-2", "app", 2, &["r/app:v1"]),
    ]);
    state.replace_pods(&[pod("web", "app-1-a", "app-1")]);
    assert!(state.plan(&filters).is_empty());

    // Same names in another namespace are another workload.
    let mut state = State::default();
    state.replace_rs(&[
        rs("a", "app-1", "app", 1, &["r/app:v1"]),
        rs("b", "app-2", "app", 2, &["r/app:v2"]),
    ]);
    state.replace_pods(&[pod("b", "app-1-a", "app-1")]);
    assert!(state.plan(&filters).is_empty());
}

#[test]
fn finished_and_deleted_pods_do_not_count() {
    let filters = Filters::default();
    let mut state = State::default();
    state.replace_rs(&[
        rs("web", "app-1", "app", 1, &["r/app:v1"]),
        rs("web", "app-2", "app", 2, &["r/app:v2"]),
    ]);
    let mut done = pod("web", "app-1-a", "app-1");
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    state.replace_pods(&[done]);
    assert!(state.plan(&filters).is_empty());
    let running = pod("web", "app-1-b", "app-1");
    state.apply_pod(&running);
    state.delete_pod(&running);
    assert!(state.plan(&filters).is_empty());
}

#[test]
fn namespaces_and_annotations_filter() {
    let setup = |prewarm: Option<&str>, ns: &str| {
        let mut state = State::default();
        state.replace_rs(&[
            rs(ns, "app-1", "app", 1, &["r/app:v1"]),
            rs_annotated(ns, "app-2", "app", 2, &["r/app:v2"], prewarm),
        ]);
        state.replace_pods(&[pod(ns, "app-1-a", "app-1")]);
        state
    };
    let all = Filters::default();
    assert_eq!(setup(None, "web").plan(&all).len(), 1);
    assert!(setup(Some("false"), "web").plan(&all).is_empty(), "opt-out");

    let only_web = Filters {
        namespaces: vec!["web".into()],
        ..Filters::default()
    };
    assert_eq!(setup(None, "web").plan(&only_web).len(), 1);
    assert!(setup(None, "batch").plan(&only_web).is_empty());

    let not_batch = Filters {
        exclude_namespaces: vec!["batch".into()],
        ..Filters::default()
    };
    assert!(setup(None, "batch").plan(&not_batch).is_empty());
    assert_eq!(setup(None, "web").plan(&not_batch).len(), 1);

    let opt_in = Filters {
        require_annotation: true,
        ..Filters::default()
    };
    assert!(setup(None, "web").plan(&opt_in).is_empty());
    assert_eq!(setup(Some("true"), "web").plan(&opt_in).len(), 1);
}
