#!/usr/bin/env bash
# Runs every test: unit, property, integration (real eBPF, netns, promtool) and lints.
# Under CI (CI=true) a test that would skip for lack of root, eBPF or a tool fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
  export GOPHER_STRICT_TESTS=1
fi
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
# Default members only: the eBPF crate builds for bpfel via the agent's build.rs, not for the host.
# Integration tests share the host's network stack and eBPF hooks: one test binary at a time.
cargo test --locked -- --test-threads=1
