#!/usr/bin/env bash
# Case `python-native`: a Python dependency bump that ships compiled code. v1 and v2 are debian:v1
# plus an app layer of pinned wheels with C extensions and bundled shared libraries (numpy,
# pandas, pillow, lxml, `pip install --target /app/site-packages`); v2 bumps all four by a patch
# or minor release, so their `.so` files are rebuilt and every `*.dist-info` directory is renamed.
#
# Recipe contract: see docs/benchmarks.md. Needs pip and PyPI (cached afterwards). The wheels
# are the current interpreter's (CPython 3.11 on x86_64 here).
set -euo pipefail
shopt -s inherit_errexit
out=$1
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
source "$here/../lib.sh"
cache=${BENCH_CACHE:?}/python-native
mkdir -p "$cache/wheels"
export SOURCE_DATE_EPOCH=1716163200
# Bump the recipe version when the build below changes; the pins are part of the key.
key=$( (echo recipe-v1; python3 -c 'import sys; print(sys.version_info[:2])'; cat "$here"/requirements-v*.txt) | sha256sum | cut -c1-12)

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

update_case "$out" /app/site-packages/numpy/version.py
