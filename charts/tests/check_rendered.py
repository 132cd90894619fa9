#!/usr/bin/env python3
"""Asserts properties of `helm template` output for one of charts/chunksnap/ci/*.yaml.

Usage: helm template ... -f ci/CASE.yaml | check_rendered.py CASE
Needs PyYAML (Debian: python3-yaml) and Python 3.11+ (tomllib).
"""
import sys
import tomllib

import yaml

HOST_DIRS = {"/opt/chunksnap", "/etc/chunksnap", "/etc/containerd", "/run/chunksnap", "/var/lib/chunksnap"}
RBAC_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
# Keys snapshotter/src/config.rs accepts today (it rejects unknown keys).
DAEMON_KEYS = {"root", "address", "metrics_address", "plain_http", "log_level", "store_budget_bytes",
               "cri_address", "prewarm_concurrency", "prewarm_rollout_budget_bytes", "prewarm_jitter_ms",
               "prewarm_allow_full"}
# Keys the chart renders only when their feature is used; the daemon must learn them.
PENDING_KEYS = {"insecure", "docker_config", "mirrors", "credential_provider_config",
                "credential_provider_bin_dir"}


def fail(msg):
    raise AssertionError(msg)


def check(cond, msg):
    if not cond:
        fail(msg)


def env_value(container, name):
    return next(e["value"] for e in container["env"] if e["name"] == name)


def main(case, text):
    docs = [d for d in yaml.safe_load_all(text) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    # --- always: the DaemonSet and its installer ---
    (ds,) = by_kind.get("DaemonSet", []) or fail("no DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    check(pod.get("hostPID") is True, "hostPID must be true (nsenter into PID 1)")
    (init,) = [c for c in pod["initContainers"] if c["name"] == "install"]
    check(init["securityContext"].get("privileged") is True, "init container must be privileged")
    (main_c,) = [c for c in pod["containers"] if c["name"] == "chunksnap"]
    prewarm = [c for c in pod["containers"] if c["name"] == "prewarm"]
    check(len(pod["containers"]) == 1 + len(prewarm), f"containers {[c['name'] for c in pod['containers']]}")
    check(bool(prewarm) == (case == "prewarm-values"), "the prewarm container only when enabled")
    check(not main_c.get("securityContext", {}).get("privileged"), "main container must not be privileged")
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    check(set(host_paths.values()) == HOST_DIRS, f"hostPath volumes {sorted(host_paths.values())}")
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    for name, path in host_paths.items():
        check(init_mounts.get(name) == "/host" + path, f"init container must mount {path} at /host{path}")
    check(main_c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "readiness probe on /healthz")
    check("livenessProbe" not in main_c, "no liveness probe (systemd restarts the daemon)")

    (cm,) = by_kind["ConfigMap"]
    config = tomllib.loads(cm["data"]["config.toml"])
    unit = cm["data"]["chunksnap.service"]
    check("Before=containerd.service" in unit, "unit orders itself before containerd")
    check("Requires=containerd" not in unit and "BindsTo" not in unit, "unit must not tie containerd to chunksnap")
    check("containerd-config" in cm["data"]["install.sh"], "installer runs chunksnap containerd-config")
    check(init["command"][-1] == "/config/install.sh", "init container runs install.sh")

    check(set(config) <= DAEMON_KEYS | PENDING_KEYS, f"unknown daemon config keys {set(config) - DAEMON_KEYS}")
    check(config["address"] == env_value(init, "SOCKET"), "daemon socket = containerd proxy address")
    check("--config /etc/chunksnap/config.toml serve" in unit, "unit starts `chunksnap serve`")
    env = {e["name"]: e["value"] for e in init["env"]}
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    monitors = by_kind.get("ServiceMonitor", [])
    if case == "default-values":
        check(not rbac, "no RBAC without pull secrets")
        check(not monitors and "Service" not in by_kind, "no ServiceMonitor/Service by default")
        check(pod["automountServiceAccountToken"] is False, "no API token without pull secrets")
        check(pod["tolerations"] == [{"operator": "Exists"}], "default tolerations")
        check(pod["priorityClassName"] == "system-node-critical", "default priority class")
        check(pod["nodeSelector"] == {"kubernetes.io/os": "linux"}, "default nodeSelector")
        check(init["image"] == "ghcr.io/example/chunksnap:0.1.0", "image tag defaults to appVersion")
        check(env["RESTART_CONTAINERD"] == "true", "containerd restarted by default")
        check(config["store_budget_bytes"] == 20 << 30, "default budget 20 GiB")
        check(set(config) <= DAEMON_KEYS, f"defaults use only keys the daemon knows: {set(config)}")
        check(config["metrics_address"] == "0.0.0.0:9883", "default metrics address")
    elif case == "pullsecrets-servicemonitor-values":
        roles = by_kind.get("Role", [])
        check(sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"], "a Role per namespace")
        check(len(by_kind.get("RoleBinding", [])) == 2, "a RoleBinding per namespace")
        check("ClusterRole" not in by_kind, "no ClusterRole for listed namespaces")
        for r in roles:
            check(r["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"],
                                  "resourceNames": ["regcred"]}], f"minimal rule: {r['rules']}")
        (sm,) = monitors or fail("ServiceMonitor missing")
        check(sm["spec"]["endpoints"][0]["interval"] == "15s", "ServiceMonitor interval")
        check(sm["metadata"]["labels"].get("release") == "prometheus", "ServiceMonitor labels")
        (svc,) = by_kind["Service"]
        check(svc["spec"]["clusterIP"] == "None", "metrics Service is headless")
        args = main_c["command"]
        check(args[:2] == ["/usr/local/bin/chunksnap", "pull-secrets"], f"pull-secrets container: {args}")
        for a, b in [("--namespace", "team-a"), ("--namespace", "team-b"), ("--name", "regcred")]:
            check(any(args[i:i + 2] == [a, b] for i in range(len(args))), f"missing {a} {b}")
        check(config["docker_config"] == "/run/chunksnap/pull-secrets.json", "daemon reads pull secrets")
        check(config["credential_provider_config"] == "/etc/eks/image-credential-provider/config.json"
              and config["credential_provider_bin_dir"] == "/etc/eks/image-credential-provider",
              "daemon runs the node's kubelet credential providers")
        check(pod["automountServiceAccountToken"] is True, "API token mounted for pull secrets")
        check(args.index("team-a") < args.index("team-b"), "namespaces keep their precedence order")
        check(pod_namespace_env(main_c), "pull-secrets knows its own namespace (POD_NAMESPACE)")
    elif case == "plainhttp-resources-values":
        check(pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "builds",
                                      "effect": "NoSchedule"}], "custom tolerations")
        # Helm merges maps: the default os selector stays unless set to null.
        check(pod["nodeSelector"] == {"kubernetes.io/os": "linux", "chunksnap.io/enabled": "true"},
              f"custom nodeSelector: {pod['nodeSelector']}")
        check(pod["priorityClassName"] == "chunksnap-critical", "custom priority class")
        check(main_c["resources"]["limits"] == {"cpu": "200m", "memory": "256Mi"}, "custom resources")
        check(main_c["image"] == "registry.local:5000/chunksnap:dev", "custom image")
        check(main_c["imagePullPolicy"] == "Always", "custom pull policy")
        check(main_c["ports"][0]["containerPort"] == 9600, "custom metrics port")
        check(config["metrics_address"] == "0.0.0.0:9600", "metrics address")
        check(config["plain_http"] == ["registry.local:5000"], "plain-http hosts")
        check(config["insecure"] == ["registry.internal"], "insecure hosts")
        check(config["mirrors"] == {"docker.io": ["mirror.local:5000"]}, "mirrors")
        check(config["store_budget_bytes"] == 50 << 30, "budget 50 GiB")
        check(config["log_level"] == "debug", "log level")
        check(env["RESTART_CONTAINERD"] == "false", "containerd.restart=false")
        (cr,) = by_kind.get("ClusterRole", []) or fail("allNamespaces needs a ClusterRole")
        check(cr["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}],
              f"minimal cluster rule: {cr['rules']}")
        check("Role" not in by_kind and len(by_kind.get("ClusterRoleBinding", [])) == 1, "one ClusterRoleBinding")
        check("--all-namespaces" in main_c["command"], "pull-secrets watches all namespaces")
        check(pod_namespace_env(main_c), "all namespaces: the release namespace wins (POD_NAMESPACE)")
        check(not monitors, "no ServiceMonitor unless enabled")
    elif case == "prewarm-values":
        (watch,) = prewarm
        args = watch["command"]
        check(args[:4] == ["/usr/local/bin/chunksnap", "--address", "/host/run/chunksnap/chunksnap.sock",
                           "prewarm-watch"], f"prewarm container: {args}")
        for a, b in [("--namespace", "web"), ("--exclude-namespace", "batch")]:
            check(any(args[i:i + 2] == [a, b] for i in range(len(args))), f"missing {a} {b}")
        check("--require-annotation" in args, "opt-in by annotation")
        check({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in watch["env"],
              "the watcher knows its node")
        check(not watch.get("securityContext", {}).get("privileged"), "prewarm container must not be privileged")
        check([m["mountPath"] for m in watch["volumeMounts"]] == ["/host/run/chunksnap"], "only the socket dir")
        check(pod["automountServiceAccountToken"] is True, "API token mounted for the watcher")
        (cr,) = by_kind.get("ClusterRole", []) or fail("prewarm needs a ClusterRole")
        check(cr["rules"] == [
            {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ], f"minimal prewarm rules: {cr['rules']}")
        check(len(by_kind.get("ClusterRoleBinding", [])) == 1, "one ClusterRoleBinding")
        check(config["cri_address"] == "/run/containerd/containerd.sock", "CRI socket")
        check(config["prewarm_concurrency"] == 2, "concurrency")
        check(config["prewarm_rollout_budget_bytes"] == 512 << 20, "rollout budget")
        check(config["prewarm_jitter_ms"] == 10000, "jitter")
        check(config["prewarm_allow_full"] is False, "no full-layer pre-pulls by default")
    else:
        fail(f"unknown case {case}")


def pod_namespace_env(container):
    return {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} \
        in container.get("env", [])


if __name__ == "__main__":
    case = sys.argv[1]
    try:
        main(case, sys.stdin.read())
    except AssertionError as err:
        print(f"chart check {case}: FAILED: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"chart check {case}: ok")
