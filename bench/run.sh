#!/usr/bin/env bash
# `make bench`: chunksnap vs containerd's plain pull, casync and a zstd floor, on real images, over
# loopback and a shaped 100 Mbit/s + 20 ms link. Prints a table; writes target/bench/results.json
# and target/bench/chart.png. See docs/benchmarks.md.
#
#   bash bench/run.sh            # the full run (3 runs per figure, both profiles, every case)
#   bash bench/run.sh sweep      # chunk-size sweep (16/32/64 KiB) on the debian case
#   BENCH_RUNS=1 BENCH_PROFILES=loopback bash bench/run.sh     # quick, CI-sized
#   BENCH_CASES=debian-security,cold bash bench/run.sh         # a subset of bench/cases/
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "bench/run.sh needs root (containerd, mounts, network namespaces)" >&2
  exit 1
fi
for tool in containerd runc docker-registry casync skopeo zstd tc ip /usr/bin/time mkfs.ext4 mount \
  umount mountpoint fstrim; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run make deps" >&2; exit 1; }
done

jobs=${JOBS:-2}
cargo build --release -j"$jobs" -p chunkconv -p chunksnap
cargo build --release -j"$jobs" -p chunksnap-e2e --bin bench
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export CHUNKSNAP_BIN_DIR="$target/release"

"$target/release/bench" "$@" &
pid=$!
# The bench cleans up after itself (also on SIGINT/SIGTERM); this catches a hard kill.
# Node state lives on a loop-mounted ext4 image the bench makes: OUT/nodefs.PID(.img).
out=${BENCH_OUT:-target/bench}
cleanup() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^csbench$pid-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  local mnt="$out/nodefs.$pid"
  if mountpoint -q "$mnt" 2>/dev/null; then
    echo "bench/run.sh: detaching $mnt left by the bench" >&2
    umount -R -l "$mnt" 2>/dev/null || umount -l "$mnt" || true
  fi
  rmdir "$mnt" 2>/dev/null || true
  rm -f "$out/nodefs.$pid.img"
}
trap 'kill -INT $pid 2>/dev/null || true' INT TERM
set +e
wait "$pid"
rc=$?
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
set -e
cleanup
exit "$rc"
