//! What this node should pre-warm: the watched ReplicaSets and this node's pods, reduced to
//! what matters, and the rule that turns them into pre-warm plans.
//!
//! A Deployment rolls out by making a ReplicaSet per pod-template revision
//! (`deployment.kubernetes.io/revision`). When its newest revision names images that the
//! revisions of this node's pods of the same Deployment do not, this node will likely run the
//! new images soon: those images are planned, once per (Deployment, revision).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// Annotation on a Deployment (copied to its ReplicaSets) or a ReplicaSet: `"false"` opts it
/// out; `"true"` opts it in when the watcher requires opt-in.
pub const ANNOTATION: &str = "chunksnap.io/prewarm";
/// The Deployment controller's revision annotation on ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Plans remembered as done (the oldest is forgotten beyond this).
const MAX_DONE: usize = 4096;

/// Which workloads may be pre-warmed.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Only these namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// Never these namespaces.
    pub exclude_namespaces: Vec<String>,
    /// Only workloads annotated `chunksnap.io/prewarm: "true"`.
    pub require_annotation: bool,
}

impl Filters {
    fn allows(&self, namespace: &str, annotation: Option<&str>) -> bool {
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == namespace) {
            return false;
        }
        if self.exclude_namespaces.iter().any(|n| n == namespace) {
            return false;
        }
        match annotation {
            Some("false") => false,
            Some("true") => true,
            _ => !self.require_annotation,
        }
    }
}

/// The owning controller of an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// A ReplicaSet, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsInfo {
    pub namespace: String,
    pub name: String,
    pub owner: Option<Owner>,
    pub revision: Option<u64>,
    pub images: BTreeSet<String>,
    pub annotation: Option<String>,
}

impl RsInfo {
    pub fn from_replicaset(rs: &ReplicaSet) -> Option<Self> {
        let meta = &rs.metadata;
        let template = rs.spec.template.as_ref()?;
        Some(Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone()?,
            owner: controller(meta),
            revision: annotation(meta, REVISION).and_then(|r| r.parse().ok()),
            images: template.spec.as_ref().map(images).unwrap_or_default(),
            annotation: annotation(meta, ANNOTATION).map(str::to_owned),
        })
    }
}

/// A pod on this node, reduced to the ReplicaSet that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub replicaset: Option<String>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        Some(Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone()?,
            replicaset: controller(meta)
                .filter(|o| o.kind == "ReplicaSet")
                .map(|o| o.name),
        })
    }
}

/// One thing to pre-warm: new images of a workload's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub namespace: String,
    pub workload: Owner,
    pub revision: u64,
    pub replicaset: String,
    pub images: Vec<String>,
}

impl Plan {
    /// The byte-budget key of this rollout.
    pub fn rollout(&self) -> String {
        format!(
            "{}/{}@{}",
            self.namespace, self.workload.name, self.revision
        )
    }
}

/// What the watcher knows: ReplicaSets and this node's pods by `(namespace, name)`, and the
/// plans already made.
#[derive(Debug, Default)]
pub struct State {
    pub replicasets: BTreeMap<(String, String), RsInfo>,
    pub pods: BTreeMap<(String, String), PodInfo>,
    done: Done,
}

/// (workload uid, revision) pairs already planned, oldest first in `order`.
#[derive(Debug, Default)]
struct Done {
    set: HashSet<(String, u64)>,
    order: VecDeque<(String, u64)>,
}

impl State {
    pub fn apply_rs(&mut self, rs: &ReplicaSet) {
        if let Some(info) = RsInfo::from_replicaset(rs) {
            self.replicasets
                .insert((info.namespace.clone(), info.name.clone()), info);
        } else if let Some(key) = key(&rs.metadata) {
            self.replicasets.remove(&key);
        }
    }

    pub fn delete_rs(&mut self, rs: &ReplicaSet) {
        if let Some(key) = key(&rs.metadata) {
            self.replicasets.remove(&key);
        }
    }

    pub fn apply_pod(&mut self, pod: &Pod) {
        match (PodInfo::from_pod(pod), key(&pod.metadata)) {
            (Some(info), Some(key)) => {
                self.pods.insert(key, info);
            }
            (None, Some(key)) => {
                self.pods.remove(&key);
            }
            _ => {}
        }
    }

    pub fn delete_pod(&mut self, pod: &Pod) {
        if let Some(key) = key(&pod.metadata) {
            self.pods.remove(&key);
        }
    }

    /// Replaces every ReplicaSet (after a fresh list).
    pub fn replace_rs(&mut self, listed: &[ReplicaSet]) {
        self.replicasets.clear();
        for rs in listed {
            self.apply_rs(rs);
        }
    }

    /// Replaces every pod (after a fresh list).
    pub fn replace_pods(&mut self, listed: &[Pod]) {
        self.pods.clear();
        for pod in listed {
            self.apply_pod(pod);
        }
    }

    /// New plans (each returned once): for every Deployment with pods on this node, the
    /// images its newest revision names and the revisions of those pods do not.
    pub fn plan(&mut self, filters: &Filters) -> Vec<Plan> {
        let mut by_workload: BTreeMap<&Owner, Vec<&RsInfo>> = BTreeMap::new();
        for rs in self.replicasets.values() {
            if let Some(owner) = rs.owner.as_ref().filter(|o| o.kind == "Deployment") {
                by_workload.entry(owner).or_default().push(rs);
            }
        }
        let mut plans = Vec::new();
        for (owner, sets) in by_workload {
            let Some(newest) = sets
                .iter()
                .filter(|rs| rs.revision.is_some())
                .max_by_key(|rs| rs.revision)
            else {
                continue;
            };
            let Some(revision) = newest.revision else {
                continue;
            };
            // Revisions of this workload's pods on this node.
            let on_node: BTreeSet<&str> = self
                .pods
                .values()
                .filter(|p| p.namespace == newest.namespace)
                .filter_map(|p| p.replicaset.as_deref())
                .filter(|rs| sets.iter().any(|s| s.name == *rs))
                .collect();
            if on_node.is_empty() || on_node.iter().all(|rs| *rs == newest.name) {
                continue;
            }
            let running: BTreeSet<&String> = sets
                .iter()
                .filter(|s| on_node.contains(s.name.as_str()) && s.name != newest.name)
                .flat_map(|s| &s.images)
                .collect();
            let images: Vec<String> = newest
                .images
                .iter()
                .filter(|i| !running.contains(i))
                .cloned()
                .collect();
            if images.is_empty() || !filters.allows(&newest.namespace, newest.annotation.as_deref())
            {
                continue;
            }
            let done_key = (owner.uid.clone(), revision);
            if !self.done.set.insert(done_key.clone()) {
                continue;
            }
            self.done.order.push_back(done_key);
            if self.done.order.len() > MAX_DONE
                && let Some(old) = self.done.order.pop_front()
            {
                self.done.set.remove(&old);
            }
            plans.push(Plan {
                namespace: newest.namespace.clone(),
                workload: owner.clone(),
                revision,
                replicaset: newest.name.clone(),
                images,
            });
        }
        plans
    }
}

fn key(meta: &ObjectMeta) -> Option<(String, String)> {
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

fn annotation<'a>(meta: &'a ObjectMeta, name: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(name).map(String::as_str)
}

fn controller(meta: &ObjectMeta) -> Option<Owner> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o: &&OwnerReference| o.controller == Some(true))
        .map(|o| Owner {
            kind: o.kind.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
        })
}

/// Every image a pod spec names (containers and init containers).
fn images(spec: &PodSpec) -> BTreeSet<String> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.image.clone())
        .filter(|i| !i.is_empty())
        .collect()
}
