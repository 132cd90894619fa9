//! Kubernetes integration: registry pull secrets read from the cluster.

pub mod k8s_secrets;
