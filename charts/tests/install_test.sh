#!/usr/bin/env bash
# Runs the chart's node installer (charts/chunksnap/files/install.sh) against a fake host root
# with fake nsenter/systemctl/chunksnap on PATH, and checks what it does on a fresh node, on a
# re-run, on a config change, with containerd.restart=false, and when the daemon never starts.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
script="$root/charts/chunksnap/files/install.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fakes="$work/fakes"
mkdir -p "$fakes"
# nsenter: drop its options, run the command with host paths mapped under $HOST_ROOT.
cat > "$fakes/nsenter" <<'FAKE'
#!/usr/bin/env bash
while [[ $1 != -- ]]; do shift; done
shift
cmd="$1"; shift
if [[ $cmd == /* ]]; then cmd="$HOST_ROOT$cmd"; fi
exec "$cmd" "$@"
FAKE
# systemctl: record the call; starting chunksnap creates its socket unless FAKE_DAEMON_FAILS.
cat > "$fakes/systemctl" <<'FAKE'
#!/usr/bin/env bash
echo "systemctl $*" >> "$LOG"
case "$*" in
    "restart chunksnap.service" | "start chunksnap.service")
        if [[ -z ${FAKE_DAEMON_FAILS:-} ]]; then
            rm -f "$HOST_ROOT$SOCKET"
            python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$HOST_ROOT$SOCKET"
        fi ;;
    "is-active --quiet chunksnap.service") [[ -z ${FAKE_DAEMON_FAILS:-} ]] ;;
esac
FAKE
printf '#!/bin/sh\necho "journalctl $*" >> "$LOG"\n' > "$fakes/journalctl"
# The chunksnap binary: only `containerd-config`, changing the file the first time.
cat > "$work/chunksnap" <<'FAKE'
#!/usr/bin/env bash
[[ $1 == --config && $3 == containerd-config && $4 == --containerd-config ]] || exit 2
[[ -f $HOST_ROOT$2 ]] || exit 3
echo "chunksnap $*" >> "$LOG"
file="$HOST_ROOT$5"
grep -qs chunksnap "$file" || printf '[proxy_plugins.chunksnap]\n  type = "snapshot"\n' >> "$file"
FAKE
chmod +x "$fakes"/* "$work/chunksnap"
mkdir -p "$work/config"
echo 'root = "/var/lib/chunksnap"' > "$work/config/config.toml"
echo '[Unit]' > "$work/config/chunksnap.service"

export HOST_ROOT="$work/host" SOURCE_BIN="$work/chunksnap" CONFIG_DIR="$work/config" \
    LOG="$work/log" PATH="$fakes:$PATH" INSTALL_DIR=/opt/chunksnap STATE_DIR=/var/lib/chunksnap \
    SOCKET=/run/chunksnap/chunksnap.sock CONTAINERD_CONFIG=/etc/containerd/config.toml \
    CONTAINERD_UNIT=containerd.service RESTART_CONTAINERD=true START_TIMEOUT=5
mkdir -p "$HOST_ROOT/etc/containerd"
echo 'version = 2' > "$HOST_ROOT$CONTAINERD_CONFIG"

failures=0
run_case() { # name, then expected (+) / unexpected (-) log lines
    local name="$1"; shift
    : > "$LOG"
    local status=0
    sh "$script" > "$work/out" 2>&1 || status=$?
    for expectation in "$@"; do
        local want="${expectation:1}"
        case "$expectation" in
            +*) grep -qxF "$want" "$LOG" "$work/out" || { echo "install test $name: missing '$want'"; failures=$((failures+1)); } ;;
            -*) ! grep -qxF "$want" "$LOG" "$work/out" || { echo "install test $name: unexpected '$want'"; failures=$((failures+1)); } ;;
            =*) [[ $status == "$want" ]] || { echo "install test $name: exit $status, want $want"; failures=$((failures+1)); } ;;
        esac
    done
    if (( failures )); then sed 's/^/    /' "$LOG" "$work/out"; else echo "install test $name: ok"; fi
}

run_case fresh-node =0 \
    "+systemctl enable /etc/chunksnap/chunksnap.service" "+systemctl daemon-reload" \
    "+systemctl restart chunksnap.service" \
    "+chunksnap --config /etc/chunksnap/config.toml containerd-config --containerd-config /etc/containerd/config.toml" \
    "+systemctl restart containerd.service"
[[ -x "$HOST_ROOT/opt/chunksnap/bin/chunksnap" && -f "$HOST_ROOT/etc/chunksnap/config.toml" \
    && -f "$HOST_ROOT/etc/chunksnap/chunksnap.service" && -d "$HOST_ROOT/var/lib/chunksnap" ]] \
    || { echo "install test fresh-node: host files missing"; failures=$((failures+1)); }

run_case rerun =0 "+systemctl start chunksnap.service" "-systemctl restart chunksnap.service" \
    "-systemctl daemon-reload" "-systemctl restart containerd.service" \
    "+chunksnap-install: containerd config unchanged; containerd not restarted"

echo 'log_level = "debug"' >> "$work/config/config.toml"
run_case config-change =0 "+systemctl restart chunksnap.service" "-systemctl restart containerd.service"

echo 'version = 2' > "$HOST_ROOT$CONTAINERD_CONFIG"
RESTART_CONTAINERD=false run_case no-containerd-restart =0 "-systemctl restart containerd.service" \
    "+chunksnap-install: containerd config changed; restart containerd.service to use chunksnap (containerd.restart=false)"

echo 'version = 2' > "$HOST_ROOT$CONTAINERD_CONFIG"
rm -f "$HOST_ROOT$SOCKET"
FAKE_DAEMON_FAILS=1 START_TIMEOUT=1 run_case daemon-never-starts =1 \
    "+journalctl -u chunksnap.service --no-pager -n 30" "-systemctl restart containerd.service"
grep -q chunksnap "$HOST_ROOT$CONTAINERD_CONFIG" \
    && { echo "install test daemon-never-starts: containerd config was switched"; failures=$((failures+1)); }

(( failures == 0 )) || { echo "install tests: $failures failure(s)"; exit 1; }
