#!/usr/bin/env bash
# Case `npm-bundles`: an npm bump of packages that ship large single files. v1 and v2 are
# debian:v1 plus an app layer with `node_modules` of four pinned packages whose weight is in a
# few big bundles or a native binary (typescript's `lib/*.js`, @babel/standalone's `babel.js`,
# prettier's plugins, esbuild's Go binary in @esbuild/linux-x64), installed with `npm ci` from
# the committed lock files; v2 bumps all four, so each big file is rebuilt rather than edited.
#
# Recipe contract: see docs/benchmarks.md. Needs npm and the npm registry (cached afterwards).
set -euo pipefail
shopt -s inherit_errexit
out=$1
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
source "$here/../lib.sh"
cache=${BENCH_CACHE:?}/npm-bundles
mkdir -p "$cache"
command -v npm >/dev/null || { echo "npm-bundles: npm is needed to build this case" >&2; exit 1; }
export SOURCE_DATE_EPOCH=1716163200
key=$( (echo recipe-v1; cat "$here"/v*/package*.json) | sha256sum | cut -c1-12)

build() { # version -> path of the app layer tar (cached)
  local v=$1 tar="$cache/app-$1-$key.tar"
  if [ ! -s "$tar" ]; then
    local root="$cache/root"
    rm -rf "$root"
    mkdir -p "$root/app"
    cp "$here/$v/package.json" "$here/$v/package-lock.json" "$root/app/"
    (cd "$root/app" && npm ci --ignore-scripts --no-audit --no-fund --omit=dev --loglevel=error >&2)
    layer_tar "$root" app "$tar"
    rm -rf "$root"
  fi
  echo "$tar"
}

update_case "$out" /app/node_modules/typescript/package.json
