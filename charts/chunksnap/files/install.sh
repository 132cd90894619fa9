#!/bin/sh
# chunksnap node installer, run by the DaemonSet's init container (privileged, hostPID).
# It installs the daemon as a host systemd service, then points containerd at it. Every step
# is idempotent: a re-run on an installed node changes nothing and restarts nothing.
# Inputs (environment): INSTALL_DIR STATE_DIR SOCKET CONTAINERD_CONFIG CONTAINERD_UNIT
#   RESTART_CONTAINERD START_TIMEOUT; host paths are mounted under /host.
# HOST_ROOT, SOURCE_BIN and CONFIG_DIR exist for charts/tests/install_test.sh.
set -eu

HOST="${HOST_ROOT:-/host}"
SOURCE_BIN="${SOURCE_BIN:-/usr/local/bin/chunksnap}"
CONFIG_DIR="${CONFIG_DIR:-/config}"
log() { echo "chunksnap-install: $*"; }
# Run on the host: PID 1's namespaces give the host's files, systemd and containerd.
on_host() { nsenter --target 1 --mount --uts --ipc --net --pid -- "$@"; }

# Copies $1 to $2 (mode $3) via temp + rename unless identical; true when it changed.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        return 1
    fi
    cp "$1" "$2.tmp.$$"
    chmod "$3" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
}

mkdir -p "$HOST$INSTALL_DIR/bin" "$HOST/etc/chunksnap" "$HOST$STATE_DIR" "$HOST$(dirname "$SOCKET")"
changed=""
install_file "$SOURCE_BIN" "$HOST$INSTALL_DIR/bin/chunksnap" 0755 && changed="binary $changed"
install_file "$CONFIG_DIR/config.toml" "$HOST/etc/chunksnap/config.toml" 0644 && changed="config $changed"
install_file "$CONFIG_DIR/chunksnap.service" "$HOST/etc/chunksnap/chunksnap.service" 0644 && changed="unit $changed"

# `enable` with a path links the unit into /etc/systemd/system and enables it at boot.
on_host systemctl enable /etc/chunksnap/chunksnap.service >/dev/null
if [ -n "$changed" ]; then
    log "updated: $changed; restarting chunksnap.service"
    on_host systemctl daemon-reload
    on_host systemctl restart chunksnap.service
else
    on_host systemctl start chunksnap.service
fi

# containerd is switched over only once the daemon serves, so pulls never wait on it here.
waited=0
until [ -S "$HOST$SOCKET" ] && on_host systemctl is-active --quiet chunksnap.service; do
    if [ "$waited" -ge "$START_TIMEOUT" ]; then
        log "chunksnap socket $SOCKET not ready after ${START_TIMEOUT}s; containerd left unchanged"
        on_host journalctl -u chunksnap.service --no-pager -n 30 || true
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done

before="$(sha256sum "$HOST$CONTAINERD_CONFIG" 2>/dev/null || echo missing)"
# The proxy plugin address is the daemon config's `address`.
on_host "$INSTALL_DIR/bin/chunksnap" --config /etc/chunksnap/config.toml \
    containerd-config --containerd-config "$CONTAINERD_CONFIG"
after="$(sha256sum "$HOST$CONTAINERD_CONFIG" 2>/dev/null || echo missing)"
if [ "$before" = "$after" ]; then
    log "containerd config unchanged; containerd not restarted"
elif [ "$RESTART_CONTAINERD" = "true" ]; then
    # Running containers survive: their shims are not children of containerd.
    log "containerd config changed; restarting $CONTAINERD_UNIT"
    on_host systemctl restart "$CONTAINERD_UNIT"
else
    log "containerd config changed; restart $CONTAINERD_UNIT to use chunksnap (containerd.restart=false)"
fi
