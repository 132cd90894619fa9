#!/usr/bin/env bash
# Case `cold`: debian:v2 pulled onto a node with nothing on it (empty chunk store): what
# chunksnap costs when it cannot reuse anything. v1.layers is still written: the convert and
# casync figures use it as the base already in the registry.
# Recipe contract: see bench/cases/python-app/recipe.sh and docs/benchmarks.md.
set -euo pipefail
out=$1
echo "${BENCH_DEBIAN_V1_TAR:?}" > "$out/v1.layers"
echo "${BENCH_DEBIAN_V2_TAR:?}" > "$out/v2.layers"
echo /etc/os-release > "$out/read"
echo cold > "$out/mode"
