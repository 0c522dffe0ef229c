#!/usr/bin/env bash
# Control channel round trip (issue 5): how long a SetProbe off/on takes until the change is
# applied. Builds the release agent and gopher-toggle-bench (bench/toggle), starts the agent with
# the tcp probe and a small extension probe on and the control channel on a free loopback port,
# runs BENCH_TOGGLE_ROUNDS (default 20) rounds of toggles, each checked against bpftool and /proc
# (see bench/toggle/src/main.rs), prints the table and writes its block of BENCHMARKS.md.
# BENCH_TOGGLE_SETTLE_MS (default 0: back to back) pauses, untimed, before each timed step.
# BENCH_NO_BUILD=1 uses the binaries already built; BENCH_OUT overrides the report file.
# Run as root (cgroup eBPF programs, bpftool).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
ROUNDS=${BENCH_TOGGLE_ROUNDS:-20}
SETTLE=${BENCH_TOGGLE_SETTLE_MS:-0}
OUT=${BENCH_OUT:-$REPO/BENCHMARKS.md}
log() { echo "control-bench: $*" >&2; }

[[ $(id -u) == 0 ]] || { log "run as root"; exit 1; }
command -v bpftool >/dev/null || { log "bpftool is missing"; exit 1; }
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    log "building gopher and gopher-toggle-bench (release) into $TARGET"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --locked --release \
        -p gopher -p gopher-toggle-bench)
fi

tmp=$(mktemp -d /tmp/gopher-control-bench.XXXXXX)
agent=
cleanup() {
    if [[ -n $agent ]] && kill -0 "$agent" 2>/dev/null; then
        kill -TERM "$agent"
        wait "$agent" || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
cport=$(free_port)
mport=$(free_port)

# The extension probe: a shell loop printing one row a second (its `sleep` child is in the
# same process group, which switching off ends as a whole).
cat >"$tmp/probe.sh" <<'EOF'
i=0
while :; do
    i=$((i + 1))
    printf '|tbench|%s|%d|\n' "$(hostname)" "$i"
    sleep 1
done
EOF
cat >"$tmp/tbench.toml" <<'EOF'
[[tables]]
name = "tbench"
description = "bench/control.sh rows"
fields = [
    { name = "host", type = "key" },
    { name = "ticks", type = "counter" },
]
EOF
cat >"$tmp/gopher.toml" <<EOF
[global]
log_level = "warn"
[web_server]
bind_addr = "127.0.0.1"
port = $mport
[kafka]
switch = "off"
[control]
listen = "127.0.0.1:$cport"
# bench/toggle sends no token: a throwaway agent on loopback, for the round trip only.
insecure = true
[[probes]]
name = "tcp"
switch = "on"
interval = 5
[[extend_probes]]
name = "tbench"
command = "exec sh probe.sh"
meta = "tbench.toml"
switch = "on"
EOF

"$TARGET/release/gopher" --config "$tmp/gopher.toml" >"$tmp/gopher.log" 2>&1 &
agent=$!
for _ in $(seq 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$cport") 2>/dev/null; then break; fi
    kill -0 "$agent" 2>/dev/null || { log "agent exited:"; cat "$tmp/gopher.log" >&2; exit 1; }
    sleep 0.1
done
log "agent $agent, control on 127.0.0.1:$cport; $ROUNDS rounds"

"$TARGET/release/gopher-toggle-bench" --addr "http://127.0.0.1:$cport" --rounds "$ROUNDS" --settle-ms "$SETTLE" \
    --tcp tcp --ext tbench >"$tmp/table.md" || { log "bench failed; agent log:"; cat "$tmp/gopher.log" >&2; exit 1; }
cat "$tmp/table.md"
if grep -qiE 'warn|error' "$tmp/gopher.log"; then
    log "agent log:"; cat "$tmp/gopher.log" >&2
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
PYTHONPATH="$REPO/bench" python3 - "$OUT" "$tmp/table.md" "$ROUNDS" "$SETTLE" "$(nproc)" "$cpu" \
    "$(uname -r)" "$(date -u +%Y-%m-%d)" <<'EOF'
import sys
from mdsection import write_section

out, table, rounds, settle, ncpu, cpu, kernel, day = sys.argv[1:]
spacing = ("back to back" if settle == "0" else f"{settle} ms apart")
BEGIN = "<!-- control-toggle: written by bench/control.sh -->"
END = "<!-- /control-toggle -->"
with open(table, encoding="utf-8") as f:
    rows = f.read().strip()
text = f"""{BEGIN}
## Control channel: toggle round trip

`sudo bash bench/control.sh` ({day}; {ncpu} vCPUs shared with other work, {cpu}, Linux {kernel}).
The release agent runs the `tcp` probe and a small extension probe (a shell loop printing one
row a second); `gopher-toggle-bench` (bench/toggle) does {rounds} rounds of `SetProbe` off → on of
each over one gRPC connection on loopback, steps {spacing}, timing each call from request to
answer (nearest-rank percentiles over the {rounds} samples; one untimed round first). The agent
answers once the change is applied, and after each step the bench checks that it was, without
asking the agent: `bpftool cgroup show` on the cgroup2 mount lists none of the agent's `gopher_`
programs after tcp off and at least two new ones after tcp on; the extension probe's pid is gone
from `/proc` after off, and the new pid is alive after on.

What a round trip holds:
- **tcp off**: stopping the probe's task, detaching and unloading its cgroup eBPF programs
  and maps.
- **tcp on**: reading the kernel's BTF (`/sys/kernel/btf/vmlinux`, parsed anew each time),
  loading and verifying the eBPF object, attaching its programs to the cgroup2 root, and waiting
  (polled every 10 ms) until the probe reports running.
- **extension off**: SIGTERM (and SIGCONT) to the probe's process group, then polling (5 ms,
  doubling to 50 ms) until the leader is reaped and no member is left.
- **extension on**: spawning `/bin/sh -c COMMAND` in a new process group and waiting (polled
  every 10 ms) until it runs.
- **no-op SetProbe**: `tcp` on while already on: the floor (gRPC, the control lock, answering).
- **ListProbes**: every probe's state.

An earlier run found tcp off bimodal, ~1 ms or ~43 ms: answers written in two pieces (HTTP/2
HEADERS, then DATA; seen with strace) had the second held back by Nagle until the client's
delayed ACK, because the control listener's accepted sockets lacked `TCP_NODELAY`. The agent now
sets it on every accepted connection; the figures below are from after that fix. Most of tcp on
is the BTF parse, which could be cached across restarts of the probe (not done).

{rows}
{END}"""
write_section(out, BEGIN, END, text)
print(f"control-bench: wrote its block of {out}", file=sys.stderr)
EOF
