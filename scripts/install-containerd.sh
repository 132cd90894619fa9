#!/usr/bin/env bash
# Installs the containerd versions of scripts/containerd-versions under $PREFIX/containerd-<minor>/
# (idempotent: a prefix already holding the pinned version is kept) for the e2e matrix.
#
# The .debs come from Debian's own archive (scripts/apt/newer-containerd.list) through a private
# apt state under $PREFIX/apt, so the system's sources and installed packages are untouched; they are
# unpacked with dpkg-deb -x, not installed. They need only libc >= 2.34 and runc (Debian 12 has both).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${CHUNKSNAP_CONTAINERD_PREFIX:-/opt/chunksnap-test}"
list="$root/scripts/apt/newer-containerd.list"
versions="${CHUNKSNAP_CONTAINERD_VERSIONS:-$root/scripts/containerd-versions}"
state="$PREFIX/apt"
O=(-o "Dir::Etc::SourceList=$list" -o Dir::Etc::SourceParts=/dev/null
   -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache"
   -o Dir::State::status=/var/lib/dpkg/status -q)

installed_version() { cat "$1/VERSION" 2>/dev/null || true; }

updated=0
apt_update() {
    if [[ $updated == 0 ]]; then
        mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
        apt-get "${O[@]}" update >/dev/null
        updated=1
    fi
}

# Picks the pinned version when the archive still has it, else the newest of the same minor.
choose_version() {
    local minor=$1 pinned=$2 available
    available="$(apt-cache "${O[@]}" madison containerd | awk -F'|' '{gsub(/ /,"",$2); print $2}')"
    if grep -qxF "$pinned" <<<"$available"; then
        echo "$pinned"
        return
    fi
    local newest
    newest="$(grep -E "^${minor//./\\.}\\." <<<"$available" | sort -V | tail -n1 || true)"
    if [[ -z $newest ]]; then
        echo "install-containerd: no containerd $minor.* in the archive (pinned $pinned is gone)" >&2
        exit 1
    fi
    {
        echo "################################################################################"
        echo "WARNING: containerd $pinned has left Debian's archive; using $newest instead."
        echo "WARNING: update scripts/containerd-versions to pin it."
        echo "################################################################################"
    } >&2
    echo "$newest"
}

grep -vE '^\s*(#|$)' "$versions" | while read -r minor pinned; do
    dest="$PREFIX/containerd-$minor"
    if [[ "$(installed_version "$dest")" == "$pinned" && -x "$dest/usr/bin/containerd" ]]; then
        echo "containerd $minor: $pinned already in $dest"
        continue
    fi
    apt_update
    version="$(choose_version "$minor" "$pinned")"
    if [[ "$(installed_version "$dest")" == "$version" && -x "$dest/usr/bin/containerd" ]]; then
        echo "containerd $minor: $version already in $dest"
        continue
    fi
    work="$(mktemp -d)"
    (cd "$work" && apt-get "${O[@]}" -o APT::Sandbox::User=root download "containerd=$version" >/dev/null)
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    dpkg-deb -x "$work"/containerd_*.deb "$dest.tmp"
    rm -rf "$work"
    echo "$version" >"$dest.tmp/VERSION"
    "$dest.tmp/usr/bin/containerd" --version >/dev/null
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    echo "containerd $minor: installed $version in $dest"
done
