#!/usr/bin/env bash
# Soak (issue 13): builds the release agent and gopher-loadgen, then runs bench/soak.py for
# 30 minutes (BENCH_SOAK_SECONDS) of churn, probe toggling and SIGHUP with the agent's RSS, open
# files and threads sampled; writes its block of BENCHMARKS.md and exits non-zero when they grew.
# BENCH_NO_BUILD=1 uses the binaries already built. Run as root.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
[[ $(id -u) == 0 ]] || { echo "soak: needs root (eBPF)" >&2; exit 1; }
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --locked --release -p gopher -p gopher-loadgen)
fi
CARGO_TARGET_DIR=$TARGET exec python3 "$REPO/bench/soak.py"
