#!/usr/bin/env bash
# Case `debian-security`: the harness's debian:v1 (debootstrap minbase bookworm) -> debian:v2
# (the same after `apt-get upgrade` from bookworm-security): one layer each, a security update.
# Recipe contract: see bench/cases/python-app/recipe.sh and docs/benchmarks.md.
set -euo pipefail
out=$1
echo "${BENCH_DEBIAN_V1_TAR:?}" > "$out/v1.layers"
echo "${BENCH_DEBIAN_V2_TAR:?}" > "$out/v2.layers"
echo /etc/os-release > "$out/read"
echo update > "$out/mode"
