#!/bin/sh
# Builds the rootfs tarballs of the `debian-v1` / `debian-v2` test images.
#   debian.sh v1 OUT.tar          debootstrap --variant=minbase bookworm
#   debian.sh v2 V1.tar OUT.tar   v1 + `apt-get upgrade` from bookworm-security
# Tarballs use numeric owners and keep xattrs; apt lists and caches are cleaned so the layer looks
# like a real base image. Writes OUT.tar.tmp and renames it, so a cached OUT.tar is always whole.
set -eu
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

work=$(mktemp -d /var/tmp/chunksnap-e2e-debian.XXXXXX)
cleanup() {
    for m in proc dev/pts dev; do umount -l "$work/root/$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
root="$work/root"

clean_apt() {
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/cache/apt/archives/partial/* "$root"/var/log/apt/* "$root"/var/log/dpkg.log \
        "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
    : > "$root/etc/resolv.conf" 2>/dev/null || true
}

pack() {
    tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$root" -cf "$1.tmp" .
    mv "$1.tmp" "$1"
}

case "$1" in
v1)
    out=$2
    debootstrap --variant=minbase bookworm "$root" "$MIRROR"
    clean_apt
    pack "$out"
    ;;
v2)
    v1=$2 out=$3
    mkdir -p "$root"
    tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$root" -xf "$v1"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    printf 'deb %s bookworm-security main\n' "$SECURITY" > "$root/etc/apt/sources.list.d/security.list"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q update
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q -y upgrade
    umount "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d"
    clean_apt
    pack "$out"
    ;;
*)
    echo "usage: $0 v1 OUT.tar | v2 V1.tar OUT.tar" >&2
    exit 2
    ;;
esac
