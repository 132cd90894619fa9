#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 60) and prints how many
# executions each ran. Needs a nightly toolchain; installs cargo-fuzz if it is missing.
#
#   FUZZ_SECONDS=300 scripts/fuzz.sh            # all targets
#   FUZZ_SECONDS=30 scripts/fuzz.sh tarscan     # one target
#
# New inputs go to fuzz/target/corpus/<target> (not committed); the seeds in fuzz/corpus/<target>
# are read only. A crash is saved under fuzz/artifacts/<target>/ and fails the script: copy it to
# fuzz/corpus/<target>/ once fixed, so `cargo test` keeps it as a regression test.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
jobs="${CARGO_BUILD_JOBS:-2}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
    echo "fuzz: the $toolchain toolchain is required (rustup toolchain install $toolchain)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

CARGO_BUILD_JOBS="$jobs" cargo "+$toolchain" fuzz build

summary=()
for t in "${targets[@]}"; do
    work="target/corpus/$t"
    mkdir -p "$work" "corpus/$t"
    log="target/fuzz-$t.log"
    echo "fuzz: $t for ${seconds}s" >&2
    status=0
    CARGO_BUILD_JOBS="$jobs" cargo "+$toolchain" fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    line="$t: ${execs:-?} executions in ${seconds}s"
    if [ "$status" -ne 0 ]; then
        line+=" — FAILED (see fuzz/$log)"
        tail -n 40 "$log" >&2
    fi
    summary+=("$line")
done

printf '%s\n' "${summary[@]}"
! printf '%s\n' "${summary[@]}" | grep -q FAILED
