#!/usr/bin/env bash
# Case `rebuilt-binary`: a statically structured release binary, as Go and Rust services ship,
# rebuilt after a small code change. v1 and v2 are debian:v1 plus an app layer holding a Rust
# program (serde_json, regex, clap) built with `cargo build --release`; v2 changes one function
# and a version string, which moves code and data after it throughout the binary.
#
# Recipe contract: see docs/benchmarks.md. Needs cargo and crates.io (cached afterwards).
set -euo pipefail
shopt -s inherit_errexit
out=$1
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
source "$here/../lib.sh"
cache=${BENCH_CACHE:?}/rebuilt-binary
mkdir -p "$cache"
export SOURCE_DATE_EPOCH=1716163200
key=$( (echo recipe-v1; cat "$here/recipe.sh" "$here"/src/*) | sha256sum | cut -c1-12)

build() { # version -> path of the app layer tar (cached)
  local v=$1 tar="$cache/app-$1-$key.tar"
  if [ ! -s "$tar" ]; then
    # One source tree and target dir for both versions: paths embedded in the binary match.
    local proj="$cache/project" root="$cache/root"
    rm -rf "$proj/src" "$root"
    mkdir -p "$proj/src" "$root/app/bin"
    cp "$here/src/Cargo.toml" "$here/src/Cargo.lock" "$proj/"
    cp "$here/src/main.rs" "$proj/src/main.rs"
    if [ "$v" = v2 ]; then
      python3 "$here/src/bump.py" "$proj/src/main.rs"
    fi
    (cd "$proj" && CARGO_TARGET_DIR="$cache/target" cargo build --quiet --release --locked \
      -j"${JOBS:-2}" >&2)
    cp "$cache/target/release/bench-server" "$root/app/bin/server"
    grep -o 'const VERSION: &str = "[^"]*"' "$proj/src/main.rs" | cut -d'"' -f2 > "$root/app/VERSION"
    layer_tar "$root" app "$tar"
    rm -rf "$root"
  fi
  echo "$tar"
}

update_case "$out" /app/VERSION
