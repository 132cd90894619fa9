//! Kubernetes integration: registry pull secrets read from the cluster, and the rollout
//! watcher asking the daemon for pre-warms.

pub mod k8s_secrets;
pub mod prewarm;
