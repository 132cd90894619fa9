#!/usr/bin/env bash
# Case `rebased`: the python-app case's v1 application layer on debian:v1 (v1), then the very
# same application layer on debian:v2 (v2), as rebuilding `FROM debian` after a base-image
# security update produces (a reproducible app layer keeps its digest; only its parent moves).
# containerd must download the new base and unpack the app layer again under its new parent;
# chunksnap fetches the base's changes and links the app layer's files from the old parent's.
#
# Recipe contract: see docs/benchmarks.md (bench/cases/python-app/recipe.sh is the template).
set -euo pipefail
shopt -s inherit_errexit
out=$1
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash "$here/../python-app/recipe.sh" "$tmp"
app=$(sed -n 2p "$tmp/v1.layers")
printf '%s\n%s\n' "${BENCH_DEBIAN_V1_TAR:?}" "$app" > "$out/v1.layers"
printf '%s\n%s\n' "${BENCH_DEBIAN_V2_TAR:?}" "$app" > "$out/v2.layers"
echo /app/site-packages/requests/__version__.py > "$out/read"
echo update > "$out/mode"
