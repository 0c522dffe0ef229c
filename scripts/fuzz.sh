#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/, AddressSanitizer on) and runs each for a bounded time
# over its committed corpus (fuzz/corpus/<target>/), failing on any crash, leak, timeout or
# broken oracle. scripts/test.sh runs it after the unit and integration tests, and counts each
# target as one test in its closing line; alone: `bash scripts/fuzz.sh [target…]`.
#
# GOPHER_FUZZ_SECONDS: seconds per target (default 20). New inputs found during the run go to
# a scratch directory, not into the committed corpus (fuzz/README.md says how to grow it); a
# crashing input is kept under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
SECONDS_PER=${GOPHER_FUZZ_SECONDS:-20}
# Its own target dir: ASan and coverage flags would otherwise rebuild the test build's crates.
export CARGO_TARGET_DIR="${GOPHER_FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
# cc builds the bundled C libraries with -fsanitize=address under ASan (zstd among them);
# librdkafka's configure then links its probes against libzstd.a and needs the ASan runtime
# too, which it takes from LDFLAGS (without it configure fails, "Argument list too long").
export LDFLAGS="${LDFLAGS:+$LDFLAGS }-fsanitize=address"
# --fuzz-dir right after the subcommand: after a `--` it would go to libFuzzer, which ignores
# the flag and takes `fuzz` for its first corpus dir (reading fuzz/target, writing finds there).
fuzz() {
  local sub=$1
  shift
  cargo +"$TOOLCHAIN" fuzz "$sub" --fuzz-dir fuzz "$@"
}

if ! cargo +"$TOOLCHAIN" fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is missing (scripts/test-deps.sh installs it)"
  echo "fuzz: 0 passed, 1 failed"
  exit 1
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(fuzz list)
fi

echo "== cargo fuzz build (${#targets[@]} targets, AddressSanitizer)"
start=$(date +%s)
# cargo fuzz has no --locked: check fuzz/Cargo.lock the way the test build checks its own.
if ! cargo +"$TOOLCHAIN" metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null ||
  ! fuzz build; then
  echo "fuzz: build FAILED"
  echo "fuzz: 0 passed, ${#targets[@]} failed"
  exit 1
fi
echo "fuzz: built in $(($(date +%s) - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
passed=0
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "fuzz/corpus/$t"
  log="$scratch/$t.log"
  dirs=("$scratch/$t" "$PWD/fuzz/corpus/$t")
  # -timeout: one input taking longer is a hang worth reporting; rss: a runaway allocation.
  if fuzz run "$t" "${dirs[@]}" -- \
      -max_total_time="$SECONDS_PER" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "fuzz: $t ok (${runs:-?} inputs in ${SECONDS_PER} s)"
    passed=$((passed + 1))
  else
    tail -n 60 "$log"
    echo "fuzz: $t FAILED (input kept under fuzz/artifacts/$t/; replay: cargo fuzz run --fuzz-dir fuzz $t <file>)"
    failed=$((failed + 1))
  fi
done
# test.sh folds this line into the suite's closing line.
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
