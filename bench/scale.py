#!/usr/bin/env python3
"""What N idle TCP links and a connection churn cost the agent (issue 10), before and after.

Two parts, both with the real agent on this host:

1. Idle links. For each link count N, `gopher-loadgen hold` processes open N/2 loopback
   connections, both ends here, each from its own source address (127.1.x.y) to one of ~500
   listeners (127.0.0.1, ports from BENCH_SCALE_PORT_BASE): N distinct `tcp_link` links, N/2
   client-role and N/2 server-role. A process may hold 20,000 files, so they are spread over
   several processes. With the links held, each agent binary (before, after) is started in
   turn, round after round, the order alternating: wait until its store holds the links
   (checked on the link_count samples of the hold processes), let one interval pass, measure
   its CPU over WINDOW seconds with no scrape, then scrape: plain (3x), gzip (3x), 4 concurrent.
   RSS steady = VmRSS at the end of the quiet window; peaks = VmHWM before any measured
   scrape, over the one-at-a-time scrapes, and after the concurrent ones. VmHWM is reset
   (/proc/PID/clear_refs 5) before each one-at-a-time scrape: what a scrape adds at its peak
   is its VmHWM minus the VmRSS just before it (the least of three, per encoding).
2. Churn (after binary only): `gopher-loadgen churn` for CHURN_SECONDS; events lost =
   increase of gopher_ebpf_events_lost_total; exactness = the agent's server-role rx_bytes for
   the churn port against the bytes loadgen's server read (`server_rx_bytes`), and client-role
   tx_bytes against the same.

The agent runs pinned to AGENT_CPU and the load to LOAD_CPU, both at nice BENCH_NICE (and this
session's autogroup too, as bench/run.sh does). Raw JSON lines go to a work directory (printed);
the report goes to its marked block of BENCHMARKS.md (scale_report.py renders it;
`python3 bench/scale.py --render WORKDIR` renders it again from a run's work directory).

Environment (defaults in brackets):
  BENCH_SCALE_LINKS       link counts, one set of runs each            ["10000 100000"]
  BENCH_SCALE_ROUNDS      rounds (each runs every binary once)         [3]
  BENCH_SCALE_WINDOW      quiet CPU window, seconds                    [20]
  BENCH_SCALE_INTERVAL    tcp probe interval, seconds                  [5]
  BENCH_SCALE_LISTENERS   listeners in all                             [500]
  BENCH_SCALE_PORT_BASE   first listener port (ports below 32768 stay clear of ephemerals) [21000]
  BENCH_SCALE_PER_PROC    connections per hold process (2 files each, 20,000 max) [8000]
  BENCH_SCALE_BEFORE      "before" agent binary; skipped if missing   [/work/before/gopher]
  BENCH_SCALE_AFTER       "after" agent binary           [$CARGO_TARGET_DIR/release/gopher]
  BENCH_SCALE_LOADGEN     loadgen binary          [$CARGO_TARGET_DIR/release/gopher-loadgen]
  BENCH_SCALE_SET_BEFORE, BENCH_SCALE_SET_AFTER  extra config for one binary: space-separated
                          dotted assignments with TOML values, e.g.
                          "probes.tcp.params.max_links=524288 imdb.record_timeout=120"  [""]
                          (scale_agent.OPTIONAL: settings tried on every binary and dropped
                          for one that refuses them, e.g. the tcp probe's max_series)
  BENCH_SCALE_CHURN_SECONDS  churn length; 0 skips it                  [60]
  BENCH_SCALE_CHURN_CLIENTS  churn client threads                      [4]
  BENCH_SCALE_CHURN_CPUS  CPUs of the churn load (taskset list). Every CPU by default: one CPU
                          of the 2-CPU VM tops out near 9.3 k loopback conn/s (the kernel's
                          handshake and teardown), both reach ~13.6 k; the agent, still pinned
                          to its CPU, then shares it with the load      [every CPU]
  BENCH_AGENT_CPU, BENCH_LOAD_CPU  CPUs of the agent and of the load  [0, 1]
  BENCH_NICE              nice level of agent and load                 [-20]
  BENCH_OUT               report file                                  [<repo>/BENCHMARKS.md]
  BENCH_SCALE_NOTE        a sentence for the report's method section (what the binaries are) [""]
"""
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import scale_agent as sa
from idle_cost import cpu_ticks, status_kb
from mdsection import write_section
from scale_report import BEGIN, END, render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
ENV = os.environ.get
LINKS = [int(x) for x in ENV("BENCH_SCALE_LINKS", "10000 100000").split()]
ROUNDS = int(ENV("BENCH_SCALE_ROUNDS", "3"))
WINDOW = float(ENV("BENCH_SCALE_WINDOW", "20"))
INTERVAL = int(ENV("BENCH_SCALE_INTERVAL", "5"))
LISTENERS = int(ENV("BENCH_SCALE_LISTENERS", "500"))
PORT_BASE = int(ENV("BENCH_SCALE_PORT_BASE", "21000"))
PER_PROC = int(ENV("BENCH_SCALE_PER_PROC", "8000"))
BINARIES = {
    "before": ENV("BENCH_SCALE_BEFORE", "/work/before/gopher"),
    "after": ENV("BENCH_SCALE_AFTER", os.path.join(TARGET, "release", "gopher")),
}
LOADGEN = ENV("BENCH_SCALE_LOADGEN", os.path.join(TARGET, "release", "gopher-loadgen"))
CHURN_SECONDS = float(ENV("BENCH_SCALE_CHURN_SECONDS", "60"))
CHURN_CLIENTS = int(ENV("BENCH_SCALE_CHURN_CLIENTS", "4"))
AGENT_CPU = ENV("BENCH_AGENT_CPU", "0")
LOAD_CPU = ENV("BENCH_LOAD_CPU", "1")
CHURN_CPUS = ENV("BENCH_SCALE_CHURN_CPUS", f"0-{(os.cpu_count() or 1) - 1}")
NICE = ENV("BENCH_NICE", "-20")
OUT = ENV("BENCH_OUT", os.path.join(REPO, "BENCHMARKS.md"))
TICK = os.sysconf("SC_CLK_TCK")



def scrape_alone(agent, gzip=False):
    """One scrape with the agent's VmHWM reset just before it (clear_refs 5): the result also
    holds the peak during it (hwm_kb) and what it added to the RSS then (peak_add_kb)."""
    with open(f"/proc/{agent.pid}/clear_refs", "w") as f:
        f.write("5")
    base = status_kb(agent.pid, "VmRSS")
    s = agent.scrape(gzip=gzip)
    s["hwm_kb"] = status_kb(agent.pid, "VmHWM")
    s["peak_add_kb"] = s["hwm_kb"] - base
    return s

def log(msg):
    print(f"scale: {msg}", file=sys.stderr, flush=True)


class Holds:
    """The `gopher-loadgen hold` processes holding one link count's connections."""

    def __init__(self):
        self.procs = []

    def start(self, links):
        conns = links // 2
        nproc = max(1, -(-conns // PER_PROC))
        ports_each = max(1, -(-LISTENERS // nproc))
        if PORT_BASE + nproc * ports_each > 32768:
            sys.exit(f"scale: ports {PORT_BASE}+{nproc * ports_each} run into the ephemeral range")
        log(f"{links} links: {conns} connections over {nproc} hold process(es), "
            f"{nproc * ports_each} listeners from port {PORT_BASE}")
        t0 = time.monotonic()
        for k in range(nproc):
            n = conns // nproc + (1 if k < conns % nproc else 0)
            first = PORT_BASE + k * ports_each
            cmd = ["nice", "-n", NICE, "taskset", "-c", LOAD_CPU, LOADGEN, "hold",
                   "--ports", f"{first}-{first + ports_each - 1}", "--conns", str(n),
                   "--src-first", str(k * PER_PROC)]
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                               preexec_fn=sa.die_with_parent))
        ready = []
        for p in self.procs:
            # The ready line, or EOF if it failed (its stderr shows why).
            if not select.select([p.stdout], [], [], max(1.0, t0 + 180 - time.monotonic()))[0]:
                raise RuntimeError(f"hold process {p.pid} not ready after 180 s")
            line = p.stdout.readline()
            if not line:
                p.wait()
                raise RuntimeError(f"hold process {p.pid} failed (exit {p.returncode})")
            ready.append(json.loads(line))
        if sum(r["accepted"] for r in ready) != conns:
            raise RuntimeError(f"hold processes accepted {ready}, wanted {conns} connections")
        log(f"holding {conns} connections after {time.monotonic() - t0:.1f} s")
        return {"connections": conns, "processes": nproc, "listeners": nproc * ports_each,
                "setup_seconds": round(time.monotonic() - t0, 2)}

    def pids(self):
        # `nice` and `taskset` exec the loadgen, so the Popen pid is the holder's.
        return {p.pid for p in self.procs}

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def measure_links(binary, which, links, round_no, holds, work):
    """One agent run against the held links: one result dict."""
    agent = sa.Agent(binary, which, work, AGENT_CPU, NICE, INTERVAL)
    try:
        agent.start(f"{which}.{links}.r{round_no}")
        pids = holds.pids()
        # Rows reach the store one collect and one ingest pass after start.
        time.sleep(2 * INTERVAL + 1)
        deadline = time.monotonic() + 12 * INTERVAL
        while True:
            seen = sa.links_of(agent.scrape()["body"], pids)
            if seen >= links or time.monotonic() > deadline:
                break
            time.sleep(INTERVAL)
        if seen < links:
            log(f"warning: {which} sees {seen} of {links} held links")
        time.sleep(INTERVAL)  # the check scrape's own cost out of the window
        hwm_idle0 = status_kb(agent.pid, "VmHWM")
        c0, t0 = cpu_ticks(agent.pid), time.monotonic()
        time.sleep(WINDOW)
        c1, t1 = cpu_ticks(agent.pid), time.monotonic()
        rss = status_kb(agent.pid, "VmRSS")
        hwm_idle = status_kb(agent.pid, "VmHWM")
        plain = [scrape_alone(agent) for _ in range(3)]
        gz = [scrape_alone(agent, gzip=True) for _ in range(3)]
        for s in plain[:-1] + gz[:-1]:
            s["body"] = None  # 141 MB each at 100 k links with the old agent
        # VmHWM was reset before each scrape: the peak of them all is the highest of theirs.
        hwm_serial = max([hwm_idle] + [s["hwm_kb"] for s in plain + gz])
        m = sa.parse(gz[-1]["body"])
        conc = agent.concurrent_scrapes(4)
        hwm = max(hwm_serial, status_kb(agent.pid, "VmHWM"))
        # Renders the 4 concurrent scrapes cost, where the agent counts renders: the counter
        # moves by those plus one for the scrape that reads it (or the one before: either way
        # one).
        renders = m["extra"].get("gopher_scrape_renders_total")
        if renders is not None:
            after = sa.parse(agent.scrape()["body"])["extra"]["gopher_scrape_renders_total"]
            renders = after - renders - 1
        r = {
            "kind": "links", "binary": which, "links": links, "round": round_no,
            "links_seen": seen,
            "cpu_pct": 100.0 * (c1 - c0) / TICK / (t1 - t0),
            "window_s": round(t1 - t0, 2),
            "rss_kb": rss, "hwm_kb": hwm, "hwm_before_window_kb": hwm_idle0,
            "hwm_no_scrape_kb": hwm_idle, "hwm_serial_kb": hwm_serial,
            "scrape_s": statistics.median(s["seconds"] for s in plain),
            "scrape_bytes": len(plain[-1]["body"]),
            "gzip_s": statistics.median(s["seconds"] for s in gz),
            "gzip_bytes": gz[-1]["wire_bytes"],
            "gzip_encoded": gz[-1]["encoding"] == "gzip",
            "concurrent4_s": conc,
            # What one scrape adds to the agent's RSS at its peak (VmHWM reset just before it,
            # minus VmRSS then); the least of the three, as a collect may overlap one.
            "plain_peak_add_kb": min(s["peak_add_kb"] for s in plain),
            "gzip_peak_add_kb": min(s["peak_add_kb"] for s in gz),
            "samples": m["samples"],
            "collect_s": m["collect_s"],
            "events_lost": m["events_lost"],
            "rows_dropped": m["rows_dropped"],
            "imdb_tcp_link": m["imdb_tcp_link"],
            "concurrent4_renders": renders,
            "links_aggregated": m["extra"].get("gopher_tcp_links_aggregated_total"),
            "ebpf_map_full": m["extra"].get("gopher_ebpf_map_full_total"),
        }
        other = (r["imdb_tcp_link"] or 0) - seen
        if other > max(1000, links // 20):
            log(f"warning: {other} other tcp_link records on the host during this run: "
                "someone else's connections are measured too")
        agent.check_alive()
        return r
    finally:
        agent.stop()


def churn(binary, work):
    """The churn part (after binary): one result dict."""
    agent = sa.Agent(binary, "after", work, AGENT_CPU, NICE, INTERVAL)
    try:
        agent.start("after.churn")
        time.sleep(INTERVAL + 1)
        m0 = sa.parse(agent.scrape()["body"])
        log(f"churn: {CHURN_SECONDS:.0f} s, {CHURN_CLIENTS} clients on CPU {CHURN_CPUS}")
        out = subprocess.run(
            ["nice", "-n", NICE, "taskset", "-c", CHURN_CPUS, LOADGEN, "--watch-pid", str(agent.pid),
             "churn", "--seconds", str(CHURN_SECONDS), "--clients", str(CHURN_CLIENTS)],
            check=True, stdout=subprocess.PIPE, text=True, preexec_fn=sa.die_with_parent).stdout
        lg = json.loads(out.strip().splitlines()[-1])
        if "port" not in lg:
            raise RuntimeError("this gopher-loadgen churn does not report its port: rebuild it")
        # Closes reach the store at the next collect and ingest pass: wait until the totals
        # match, or 4 intervals.
        want = lg["server_rx_bytes"]
        deadline = time.monotonic() + 4 * INTERVAL + 2
        while True:
            body = agent.scrape()["body"]
            rx, tx, rows = sa.port_bytes(body, lg["port"])
            if (rx == want and tx == want) or time.monotonic() > deadline:
                break
            time.sleep(1)
        m1 = sa.parse(body)
        agent.check_alive()
        return {
            "kind": "churn", "binary": "after", "seconds": lg["seconds"], "connections": lg["ops"],
            "rate": lg["ops_per_sec"], "clients": CHURN_CLIENTS, "cpus": CHURN_CPUS, "port": lg["port"],
            "agent_cpu_pct": 100.0 * (lg["watch_cpu_ns"] or 0) / 1e9 / lg["seconds"],
            "loadgen_server_rx_bytes": want, "agent_server_rx_bytes": rx,
            "agent_client_tx_bytes": tx, "agent_rows_for_port": rows,
            "events_lost": m1["events_lost"] - m0["events_lost"],
            "ebpf_map_full": (m1["extra"].get("gopher_ebpf_map_full_total", 0)
                              - m0["extra"].get("gopher_ebpf_map_full_total", 0)
                              if "gopher_ebpf_map_full_total" in m1["extra"] else None),
            "rows_dropped": m1["rows_dropped"] - m0["rows_dropped"],
            "collect_s": m1["collect_s"],
        }
    finally:
        agent.stop()


def set_autogroup_nice():
    """Under sched_autogroup, nice only ranks tasks within one session (see bench/run.sh)."""
    try:
        if open("/proc/sys/kernel/sched_autogroup_enabled").read().strip() != "1":
            return None
        old = open("/proc/self/autogroup").read().split()[-1]
        with open("/proc/self/autogroup", "w") as f:
            f.write(NICE)
        return old
    except OSError:
        return None


def main():
    if os.geteuid() != 0:
        sys.exit("scale: needs root (eBPF)")
    if not os.access(LOADGEN, os.X_OK):
        sys.exit(f"scale: {LOADGEN} missing (bench/scale.sh builds it)")
    binaries = [(w, b) for w, b in BINARIES.items() if os.access(b, os.X_OK)]
    for w, b in BINARIES.items():
        if not os.access(b, os.X_OK):
            log(f"note: no {w} binary at {b}: skipped")
    if not binaries:
        sys.exit("scale: no agent binary to measure")
    work = tempfile.mkdtemp(prefix="gopher-scale.")
    results = os.path.join(work, "results.jsonl")
    log(f"work files and agent logs in {work}")
    old_autogroup = set_autogroup_nice()
    # This script's scrapes and parsing stay off the agent's CPU (the held links are idle).
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    holds = Holds()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t_start = time.monotonic()
    runs, setups = [], {}
    try:
        with open(results, "a") as res:
            def record(r):
                runs.append(r)
                res.write(json.dumps(r) + "\n")
                res.flush()

            for links in LINKS:
                setups[links] = holds.start(links)
                for rnd in range(1, ROUNDS + 1):
                    order = binaries if rnd % 2 else binaries[::-1]
                    for which, binary in order:
                        r = measure_links(binary, which, links, rnd, holds, work)
                        record(r)
                        log(f"{links} links r{rnd} {which}: seen {r['links_seen']}, "
                            f"CPU {r['cpu_pct']:.2f} %, RSS {r['rss_kb'] / 1024:.0f} MiB "
                            f"(peak {r['hwm_kb'] / 1024:.0f}), scrape {r['scrape_s']:.2f} s "
                            f"{r['scrape_bytes'] / 1e6:.1f} MB / gzip {r['gzip_bytes'] / 1e6:.1f} MB, "
                            f"{r['samples']} samples, collect {r['collect_s']}")
                holds.stop()
            after = dict(binaries).get("after")
            if CHURN_SECONDS > 0 and after:
                c = churn(after, work)
                record(c)
                log(f"churn: {c['rate']:.0f} conn/s, lost {c['events_lost']}, server rx "
                    f"{c['agent_server_rx_bytes']} vs loadgen {c['loadgen_server_rx_bytes']}")
    finally:
        holds.stop()
        if old_autogroup is not None:
            try:
                with open("/proc/self/autogroup", "w") as f:
                    f.write(old_autogroup)
            except OSError:
                pass
    elapsed = time.monotonic() - t_start
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "kernel": os.uname().release, "nproc": os.cpu_count(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                           if ln.startswith("model name")), "?"),
        "rounds": ROUNDS, "window": WINDOW, "interval": INTERVAL, "agent_cpu": AGENT_CPU,
        "load_cpu": LOAD_CPU, "nice": NICE, "setups": setups, "elapsed_s": round(elapsed),
        "binaries": {w: b for w, b in binaries},
        "configs": {w: sa.config_text(w, 0, INTERVAL, b) for w, b in binaries},
        "churn_clients": CHURN_CLIENTS, "note": ENV("BENCH_SCALE_NOTE", ""),
    }
    with open(os.path.join(work, "meta.json"), "w") as f:
        json.dump(meta, f)
    write_report(runs, meta)
    log(f"done in {elapsed:.0f} s; raw results {results}; report {OUT}")


def write_report(runs, meta):
    text = render(runs, meta, OUT)
    write_section(OUT, BEGIN, END, text)
    print(text)


def rerender(work):
    """`scale.py --render WORKDIR`: the report again from a run's results.jsonl and meta.json."""
    with open(os.path.join(work, "results.jsonl")) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)
    meta["setups"] = {int(k): v for k, v in meta["setups"].items()}
    write_report(runs, meta)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        rerender(sys.argv[2])
    else:
        main()
