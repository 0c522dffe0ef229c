#!/usr/bin/env bash
# Measures what the TCP probe costs: loopback loads with the agent off, on, and with the
# bpftrace reference script (bench/tcp_link.bt), interleaved over several rounds.
# Writes BENCHMARKS.md at the repo root and prints the same table. Needs root.
#
# Environment (defaults in brackets):
#   BENCH_ROUNDS   rounds; each runs every mode once, in order          [5]
#   BENCH_SECONDS  seconds per measurement                              [3]
#   BENCH_MODES    subset/order of: off on before bpftrace              ["off on bpftrace"]
#   BENCH_BEFORE   an earlier gopher binary, run as mode "before" with the same configuration
#                  (what a change saves, side by side in the same rounds) [unset]
#   BENCH_BEFORE_NAME  how the report names that build (e.g. its commit)  [BENCH_BEFORE]
#   BENCH_LOADS    subset/order of: rr churn bulk                       ["rr churn bulk"]
#   BENCH_LOAD_CPU CPU the load generator (client and server) is pinned to  [1]
#   BENCH_PROBE_CPU CPU the agent / bpftrace user space is pinned to    [0]
#   BENCH_NICE     nice level of the load generator and the probe: keeps other work on the
#                  machine (builds…) off their CPUs                     [-20]
#   BENCH_OUT      report file                                          [<repo>/BENCHMARKS.md]
#   BENCH_CONFIG   the agent's configuration in mode "on"              [<repo>/bench/bench.toml]
#                  (bench/bench_endpoint.toml: the tcp and endpoint probes together)
#   CARGO_TARGET_DIR  where the binaries are built                      [<repo>/target]
#   BENCH_NO_BUILD=1  use the binaries already built
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${BENCH_ROUNDS:-5}
SECS=${BENCH_SECONDS:-3}
MODES=${BENCH_MODES:-off on bpftrace}
LOADS=${BENCH_LOADS:-rr churn bulk}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
PROBE_CPU=${BENCH_PROBE_CPU:-0}
NICE=${BENCH_NICE:--20}
OUT=${BENCH_OUT:-$REPO/BENCHMARKS.md}
CONFIG=${BENCH_CONFIG:-$REPO/bench/bench.toml}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
AGENT=$TARGET/release/gopher
LOADGEN=$TARGET/release/gopher-loadgen
METRICS_URL=http://127.0.0.1:18888/metrics
READY_LINE='gopher_probe_state{probe="tcp",state="running"} 1'
AGENT_READY_TIMEOUT=30
WORK=$(mktemp -d /tmp/gopher-bench.XXXXXX)
RESULTS=$WORK/results.jsonl

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# --- checks -----------------------------------------------------------------------------------
for m in $MODES; do
    case $m in off | on | before | bpftrace) ;; *) die "unknown mode '$m' in BENCH_MODES (off on before bpftrace)" ;; esac
done
for l in $LOADS; do
    case $l in rr | churn | bulk) ;; *) die "unknown load '$l' in BENCH_LOADS (rr churn bulk)" ;; esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
[[ $SECS =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_SECONDS must be a number"
[[ $(id -u) == 0 ]] || die "needs root (eBPF, tracefs)"
has_mode() { [[ " $MODES " == *" $1 "* ]]; }
ncpu=$(nproc)
((LOAD_CPU < ncpu && PROBE_CPU < ncpu)) || die "CPUs $LOAD_CPU/$PROBE_CPU do not exist (nproc=$ncpu)"
((ncpu >= 2)) || log "warning: one CPU only: the probe shares the load generator's CPU"

if has_mode bpftrace; then
    command -v bpftrace >/dev/null || die "bpftrace not installed (needed for mode bpftrace)"
    mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing ||
        die "cannot mount tracefs on /sys/kernel/tracing"
fi
if has_mode before; then
    [[ -x ${BENCH_BEFORE:-} ]] || die "mode before needs BENCH_BEFORE, an executable gopher binary"
fi
if { has_mode on || has_mode before; } && curl -s -o /dev/null --max-time 1 "$METRICS_URL"; then
    die "something already answers on $METRICS_URL: stop it first"
fi

# --- build ------------------------------------------------------------------------------------
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    pkgs=(-p gopher-loadgen)
    has_mode on && pkgs+=(-p gopher)
    log "building ${pkgs[*]} into $TARGET"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release "${pkgs[@]}") || die "build failed"
fi
[[ -x $LOADGEN ]] || die "$LOADGEN missing"
has_mode on && { [[ -x $AGENT ]] || die "$AGENT missing"; }

# --- the probe under test ---------------------------------------------------------------------
PROBE_PID=
stop_probe() {
    [[ -n $PROBE_PID ]] || return 0
    local sig=$1 pid=$PROBE_PID
    PROBE_PID=
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "warning: pid $pid ignored SIG$sig for 10 s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
# Under sched_autogroup, nice only ranks tasks within one session; sessions (another shell's
# build…) share the CPUs equally. So the whole session of this script gets the nice level too,
# for the run, and its old one back at exit.
AUTOGROUP_OLD=
if [[ -w /proc/$$/autogroup ]] && [[ $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null) == 1 ]]; then
    AUTOGROUP_OLD=$(awk '{ print $NF }' "/proc/$$/autogroup")
    echo "$NICE" >"/proc/$$/autogroup" || log "warning: cannot set the autogroup's nice level"
fi
cleanup() {
    stop_probe TERM
    [[ -z $AUTOGROUP_OLD ]] || echo "$AUTOGROUP_OLD" >"/proc/$$/autogroup" 2>/dev/null || true
    [[ -z ${old_bpf_stats:-} ]] || sysctl -qw "kernel.bpf_stats_enabled=$old_bpf_stats" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_probe MODE ROUND: starts the agent or bpftrace pinned to PROBE_CPU, returns once it is
# accounting. Dies (loudly, with the log) if it does not get there.
start_probe() {
    local mode=$1 round=$2 logf=$WORK/$1.round$2.log
    case $mode in
    off) return 0 ;;
    on | before)
        local bin=$AGENT
        [[ $mode == on ]] || bin=$BENCH_BEFORE
        nice -n "$NICE" taskset -c "$PROBE_CPU" "$bin" --config "$CONFIG" >"$logf" 2>&1 &
        PROBE_PID=$!
        local deadline=$((SECONDS + AGENT_READY_TIMEOUT))
        until curl -fsS --max-time 1 "$METRICS_URL" 2>/dev/null | grep -qF "$READY_LINE"; do
            if ! kill -0 "$PROBE_PID" 2>/dev/null; then
                PROBE_PID=
                tail -n 30 "$logf" >&2
                die "the agent exited before its tcp probe was running (log: $logf)"
            fi
            if ((SECONDS >= deadline)); then
                tail -n 30 "$logf" >&2
                curl -sS --max-time 1 "$METRICS_URL" 2>&1 | grep -F gopher_probe_state >&2 || true
                die "no '$READY_LINE' on $METRICS_URL after ${AGENT_READY_TIMEOUT} s (log: $logf)"
            fi
            sleep 0.2
        done
        ;;
    bpftrace)
        nice -n "$NICE" taskset -c "$PROBE_CPU" bpftrace "$REPO/bench/tcp_link.bt" >"$logf" 2>&1 &
        PROBE_PID=$!
        local deadline=$((SECONDS + 60))
        until grep -q '^tcp_link.bt: accounting' "$logf"; do
            kill -0 "$PROBE_PID" 2>/dev/null || { PROBE_PID=; tail -n 30 "$logf" >&2; die "bpftrace failed (log: $logf)"; }
            ((SECONDS < deadline)) || { tail -n 30 "$logf" >&2; die "bpftrace did not attach in 60 s"; }
            sleep 0.2
        done
        ;;
    esac
}

# Run time and run count of the probe's own BPF programs, as the kernel counts them
# (kernel.bpf_stats_enabled): its in-kernel cost, measured directly. Only the programs the probe
# process holds (program and link fds name them in /proc/PID/fdinfo): other agents on a shared
# machine attach their own programs to the same cgroup, and those are not this probe's cost.
# Prints "NS RUNS"; "0 0" without a probe (off mode).
bpf_run_ns() {
    [[ -n $PROBE_PID ]] || { echo "0 0"; return; }
    bpftool -j prog show 2>/dev/null |
        python3 -c '
import glob, json, sys
ids = set()
for f in glob.glob("/proc/%s/fdinfo/*" % sys.argv[1]):
    try:
        for line in open(f):
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    except OSError:
        pass
progs = [p for p in json.load(sys.stdin) if p.get("id") in ids]
print(sum(p.get("run_time_ns", 0) for p in progs), sum(p.get("run_cnt", 0) for p in progs))' "$PROBE_PID" ||
        echo "0 0"
}
old_bpf_stats=$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null || echo 0)
sysctl -qw kernel.bpf_stats_enabled=1 || log "note: cannot enable kernel.bpf_stats_enabled; BPF ns/op will read 0"
# What the statistics themselves add to every run they report (bench/stats_overhead.py): the
# report shows BPF ns/op as counted and without it.
if ! STATS_JSON=$(python3 "$REPO/bench/stats_overhead.py"); then
    log "note: cannot measure bpf_stats' own clock reads; BPF ns/op is shown as counted only"
    STATS_JSON='{"stats_ns_per_run": 0}'
fi
log "bpf_stats' own cost per run: $STATS_JSON"

# run_load LOAD: one measurement, one JSON line. --watch-pid has the load generator measure the
# probe's own CPU time over exactly its window.
run_load() {
    local watch=()
    [[ -n $PROBE_PID ]] && watch=(--watch-pid "$PROBE_PID")
    local lg=(nice -n "$NICE" taskset -c "$LOAD_CPU" "$LOADGEN" "${watch[@]}")
    case $1 in
    rr) "${lg[@]}" rr --conns 16 --size 100 --seconds "$SECS" ;;
    churn) "${lg[@]}" churn --seconds "$SECS" ;;
    bulk) "${lg[@]}" bulk --seconds "$SECS" ;;
    esac
}

# --- rounds -----------------------------------------------------------------------------------
nmodes=$(wc -w <<<"$MODES")
nloads=$(wc -w <<<"$LOADS")
log "$ROUNDS rounds x modes ($MODES) x loads ($LOADS) x ${SECS} s; load on CPU $LOAD_CPU, probe on CPU $PROBE_CPU, nice $NICE"
log "about $(awk -v n="$((ROUNDS * nmodes * nloads))" -v s="$SECS" 'BEGIN { printf "%d", n * (s + 1) }') s plus probe start-up; work files in $WORK"
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        start_probe "$mode" "$round"
        sleep 1 # let start-up work (map creation, first scans) settle
        for load in $LOADS; do
            read -r b0 n0 <<<"$(bpf_run_ns)"
            line=$(run_load "$load") || die "loadgen $load failed in round $round, mode $mode"
            read -r b1 n1 <<<"$(bpf_run_ns)"
            printf '{"round":%d,"mode":"%s","bpf_ns":%d,"bpf_runs":%d,%s\n' "$round" "$mode" "$((b1 - b0))" "$((n1 - n0))" "${line#\{}" >>"$RESULTS"
            python3 "$REPO/bench/report.py" --progress "$(tail -n 1 "$RESULTS")" >&2
            sleep 0.5
        done
        if [[ -n $PROBE_PID ]] && ! kill -0 "$PROBE_PID" 2>/dev/null; then
            PROBE_PID=
            tail -n 30 "$WORK/$mode.round$round.log" >&2
            die "$mode exited during round $round: its numbers would be meaningless"
        fi
        if [[ $mode == bpftrace ]]; then
            stop_probe INT # bpftrace detaches and runs END on SIGINT
            lost=$(grep -ciE 'lost [0-9]+ events' "$WORK/bpftrace.round$round.log" || true)
            ((lost == 0)) || log "note: bpftrace reported lost events $lost time(s) in round $round"
        else
            stop_probe TERM
        fi
    done
done

# --- report -----------------------------------------------------------------------------------
bpftrace_version=$(command -v bpftrace >/dev/null && bpftrace --version 2>/dev/null || echo "n/a")
python3 "$REPO/bench/report.py" "$RESULTS" "$OUT" \
    --nproc "$ncpu" --kernel "$(uname -r)" --date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --cpu-model "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    --rounds "$ROUNDS" --seconds "$SECS" --modes "$MODES" --loads "$LOADS" \
    --load-cpu "$LOAD_CPU" --probe-cpu "$PROBE_CPU" --nice "$NICE" --bpftrace "$bpftrace_version" \
    --before "${BENCH_BEFORE_NAME:-${BENCH_BEFORE:-}}" --stats "$STATS_JSON"
log "raw results: $RESULTS; report: $OUT"
