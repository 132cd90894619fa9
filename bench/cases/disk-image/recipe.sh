#!/usr/bin/env bash
# Case `disk-image`: a large disk image shipped in a layer, as VM images (KubeVirt
# containerDisks under /disk/) and appliance images are. v1 is debian:v1 plus a layer holding
# /disk/disk.img, a 1 GiB ext4 filesystem made from the debian:v1 rootfs (mostly free space);
# v2 is the same image after the bookworm-security update was applied inside it in place (the
# changed files rewritten through a loop mount), so a few MB of blocks differ in a 1 GiB file.
#
# Recipe contract: see docs/benchmarks.md. Needs root (loop mount), mkfs.ext4, python3.
set -euo pipefail
shopt -s inherit_errexit
out=$1
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
source "$here/../lib.sh"
cache=${BENCH_CACHE:?}/disk-image
mkdir -p "$cache"
export SOURCE_DATE_EPOCH=1716163200
v1tar=${BENCH_DEBIAN_V1_TAR:?}
v2tar=${BENCH_DEBIAN_V2_TAR:?}
key=$( (echo recipe-v1; cat "$here/recipe.sh" "$here/apply.py"; basename "$v1tar"; basename "$v2tar") \
  | sha256sum | cut -c1-12)
l1="$cache/disk-v1-$key.tar"
l2="$cache/disk-v2-$key.tar"

if [ ! -s "$l1" ] || [ ! -s "$l2" ]; then
  work=$(mktemp -d "$cache/work.XXXXXX")
  mnt="$work/mnt"
  cleanup() {
    mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
    rm -rf "$work"
  }
  trap cleanup EXIT
  mkdir -p "$work/r1" "$work/r2" "$mnt" "$work/v1/disk" "$work/v2/disk"
  tar --numeric-owner -xpf "$v1tar" -C "$work/r1"
  tar --numeric-owner -xpf "$v2tar" -C "$work/r2"
  img1="$work/v1/disk/disk.img"
  truncate -s 1G "$img1"
  # Fixed UUID, hash seed and times: the same input gives the same image.
  E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -b 4096 -L bench \
    -U 4b1f6a2e-6d1b-4c7e-9a51-1c2d3e4f5a6b \
    -E hash_seed=0b5e1a6c-2f3d-4e5f-8a9b-0c1d2e3f4a5b,lazy_itable_init=0,lazy_journal_init=0,nodiscard \
    -d "$work/r1" "$img1"
  cp --sparse=always "$img1" "$work/v2/disk/disk.img"
  mount -o loop "$work/v2/disk/disk.img" "$mnt"
  python3 "$here/apply.py" "$work/r1" "$work/r2" "$mnt" >&2
  umount "$mnt"
  for v in v1 v2; do
    echo "disk image $v: $(du -k --apparent-size "$work/$v/disk/disk.img" | cut -f1) KiB," \
      "$(du -k "$work/$v/disk/disk.img" | cut -f1) KiB allocated" >&2
    layer_tar "$work/$v" disk "$cache/disk-$v-$key.tar"
  done
fi
printf '%s\n%s\n' "$v1tar" "$l1" > "$out/v1.layers"
printf '%s\n%s\n' "$v1tar" "$l2" > "$out/v2.layers"
echo /etc/os-release > "$out/read"
echo update > "$out/mode"
