#!/usr/bin/env bash
# Idle-link scale and churn benchmark (issue 10): builds the release agent ("after") and
# gopher-loadgen, then runs bench/scale.py, which holds 10 k and 100 k loopback links with
# `gopher-loadgen hold`, measures the before and after agents side by side, runs the churn,
# and writes its block of BENCHMARKS.md. Knobs: scale.py's header (BENCH_SCALE_LINKS,
# BENCH_SCALE_ROUNDS, BENCH_SCALE_BEFORE, BENCH_SCALE_SET_AFTER, …); BENCH_NO_BUILD=1 uses the
# binaries already built. Run as root. Every process it starts is stopped when it ends, also on
# failure or Ctrl-C (the hold processes and the agent are its children; scale.py stops them).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
[[ $(id -u) == 0 ]] || { echo "scale: needs root (eBPF)" >&2; exit 1; }
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    echo "scale: building gopher and gopher-loadgen (release) into $TARGET" >&2
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --locked --release -p gopher -p gopher-loadgen)
fi
CARGO_TARGET_DIR=$TARGET exec python3 "$REPO/bench/scale.py"
