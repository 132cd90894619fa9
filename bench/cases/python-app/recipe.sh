#!/usr/bin/env bash
# Case `python-app`: a debian:v1 base layer plus an application layer of many small files
# (`pip install --target /app/site-packages` of pinned wheels). v2 keeps the base and rebuilds
# the app layer with a few packages bumped (requests, urllib3, certifi, idna, Django, Jinja2,
# Werkzeug, sqlparse), as a routine dependency update would.
#
# Recipe contract (see docs/benchmarks.md): recipe.sh OUT writes OUT/v1.layers and OUT/v2.layers
# (uncompressed layer tars, bottom first, one path per line) and may write OUT/read (a file the
# container reads) and OUT/mode (`update`, the default, or `cold`). Env: BENCH_CACHE (cache dir),
# BENCH_DEBIAN_V1_TAR, BENCH_DEBIAN_V2_TAR (the harness's debian layer tars).
set -euo pipefail
shopt -s inherit_errexit
out=$1
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
source "$here/../lib.sh"
cache=${BENCH_CACHE:?}/python-app
mkdir -p "$cache/wheels"
# Reproducible layers: fixed mtimes, hash-based .pyc (py_compile honours SOURCE_DATE_EPOCH).
export SOURCE_DATE_EPOCH=1716163200
# Bump the recipe version when the build below changes; the pins are part of the key.
key=$( (echo recipe-v1; cat "$here"/requirements-v*.txt) | sha256sum | cut -c1-12)

build() { # version -> path of the app layer tar (cached)
  local v=$1 tar="$cache/app-$1-$key.tar"
  if [ ! -s "$tar" ]; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$cache/wheels" -r "$here/requirements-$v.txt" >&2
    # Same build path for v1 and v2: .pyc files embed it.
    local root="$cache/build"
    rm -rf "$root"
    mkdir -p "$root/app"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-index \
      --find-links "$cache/wheels" --target "$root/app/site-packages" \
      -r "$here/requirements-$v.txt" >&2
    rm -rf "$root/app/site-packages/bin"
    layer_tar "$root" app "$tar"
    rm -rf "$root"
  fi
  echo "$tar"
}

update_case "$out" /app/site-packages/requests/__version__.py
