#!/usr/bin/env bash
# make demo: install deps, build, and run the demo (registry + containerd + chunksnap in temp
# dirs on 127.0.0.1, a real Debian v1 -> v2 update, before/after table). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "make demo needs root (containerd, mounts)"; exit 1; fi
if ! command -v containerd >/dev/null || ! command -v docker-registry >/dev/null || ! command -v protoc >/dev/null; then
  make deps
fi
cargo build -j2 --release -p chunksnap -p chunkconv -p chunksnap-e2e --bins
CHUNKSNAP_BIN_DIR="$PWD/target/release" exec target/release/demo
