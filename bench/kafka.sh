#!/usr/bin/env bash
# Kafka egress throughput (issue 4): builds the release agent, then runs bench/kafka_bench.py,
# which starts a local tansu broker and the agent with a row-generating extension probe,
# prints the table and writes its section of BENCHMARKS.md. Knobs: kafka_bench.py's header
# (BENCH_KAFKA_ROWS, BENCH_KAFKA_SECONDS, BENCH_KAFKA_QUEUE, BENCH_NICE, …);
# BENCH_NO_BUILD=1 uses the agent already built. Run as root (nice -20).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    echo "kafka-bench: building gopher (release) into $TARGET" >&2
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --locked --release -p gopher)
fi
CARGO_TARGET_DIR=$TARGET exec python3 "$REPO/bench/kafka_bench.py"
