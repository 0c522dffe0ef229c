#!/usr/bin/env python3
"""Soak (issue 13): the release agent for SOAK_SECONDS (default 30 min) under connection churn,
probe toggling through the control channel and SIGHUP reloads, sampling its RSS, open files and
threads every SAMPLE seconds. Resources are "flat" when the median of the last fifth of the
run is within 10 % (RSS; +2 for fds and threads) of the median of the second fifth (the first
fifth is warm-up: caches and arenas fill). Writes its marked block of BENCHMARKS.md.

What runs against the agent (all at once):
- `gopher-loadgen churn` back to back (connections opened and closed as fast as one client
  pair can on one CPU): the TCP probe's close events, link state and ageing;
- an extension probe printing a changing row every second (a child process and its pipe);
- every TOGGLE seconds: `gopher ctl set tcp --switch off`, then `on`, and the same for the
  extension probe (eBPF programs detached and attached, a child killed and spawned);
- every HUP seconds: SIGHUP (the configuration reloaded: tables registered again);
- a plain and a gzip scrape every 5 s.

Knobs (environment): BENCH_SOAK_SECONDS [1800], BENCH_SOAK_SAMPLE [30], BENCH_SOAK_TOGGLE [20],
BENCH_SOAK_HUP [45], BENCH_SOAK_OUT [BENCHMARKS.md], BENCH_SOAK_NOTE (free text in the block).
Stdlib only. Run as root (bench/soak.sh builds first)."""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mdsection import write_section  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
GOPHER = os.path.join(TARGET, "release", "gopher")
LOADGEN = os.path.join(TARGET, "release", "gopher-loadgen")
SECONDS = float(os.environ.get("BENCH_SOAK_SECONDS", "1800"))
SAMPLE = float(os.environ.get("BENCH_SOAK_SAMPLE", "30"))
TOGGLE = float(os.environ.get("BENCH_SOAK_TOGGLE", "20"))
HUP = float(os.environ.get("BENCH_SOAK_HUP", "45"))
OUT = os.environ.get("BENCH_SOAK_OUT", os.path.join(REPO, "BENCHMARKS.md"))
NOTE = os.environ.get("BENCH_SOAK_NOTE", "")
METRICS_PORT, CONTROL_PORT = 18895, 18896
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"

META = """
[[tables]]
name = "soak_row"
description = "a changing row per second"
fields = [
    { name = "n", type = "key" },
    { name = "v", type = "gauge" },
]
"""


def config(work):
    return f"""
[global]
log_level = "warn"
[web_server]
bind_addr = "127.0.0.1"
port = {METRICS_PORT}
[kafka]
switch = "off"
[control]
switch = "on"
listen = "127.0.0.1:{CONTROL_PORT}"
state_file = "{work}/state.toml"
[imdb]
record_timeout = 30
[[probes]]
name = "tcp"
switch = "on"
interval = 1
[[extend_probes]]
name = "soakext"
command = "/bin/sh"
param = "-c 'i=0; while :; do i=$((i+1)); echo \\"|soak_row|$((i % 50))|$i|\\"; sleep 1; done'"
meta = "{work}/soak.toml"
switch = "on"
"""


def log(msg):
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def resources(pid):
    status = open(f"/proc/{pid}/status", encoding="ascii").read()
    field = {line.split(":")[0]: line.split(":")[1].strip() for line in status.splitlines()}
    return {
        "rss_kb": int(field["VmRSS"].split()[0]),
        "threads": int(field["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def scrape(gzip):
    req = urllib.request.Request(f"http://127.0.0.1:{METRICS_PORT}/metrics")
    if gzip:
        req.add_header("Accept-Encoding", "gzip")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def ctl(*args):
    return subprocess.run([GOPHER, "ctl", "--addr", f"http://127.0.0.1:{CONTROL_PORT}", *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=60, check=False)


def verdict(samples, key, slack_ratio, slack_abs):
    n = len(samples)
    if n < 10:
        return None
    early = [s[key] for s in samples[n // 5: 2 * n // 5]]
    late = [s[key] for s in samples[4 * n // 5:]]
    e, l = statistics.median(early), statistics.median(late)
    return {"early": e, "late": l, "max": max(s[key] for s in samples),
            "flat": l <= e * (1 + slack_ratio) + slack_abs}


def main():
    if os.geteuid() != 0:
        sys.exit("soak: needs root (eBPF)")
    work = tempfile.mkdtemp(prefix="gopher-soak-")
    with open(os.path.join(work, "soak.toml"), "w", encoding="ascii") as f:
        f.write(META)
    cfg = os.path.join(work, "gopher.toml")
    with open(cfg, "w", encoding="ascii") as f:
        f.write(config(work))
    agent = subprocess.Popen([GOPHER, "--config", cfg], stderr=open(os.path.join(work, "agent.log"), "w"))
    churn = None
    samples, errors = [], {"ctl": 0, "scrape": 0}
    toggles = hups = scrapes = churn_conns = 0
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                scrape(False)
                break
            except OSError:
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise RuntimeError(f"the agent did not serve /metrics; see {work}/agent.log")
                time.sleep(0.5)
        start = time.monotonic()
        next_sample = next_toggle = next_hup = next_scrape = start
        log(f"{SECONDS:.0f} s; agent pid {agent.pid}; work dir {work}")
        while (now := time.monotonic()) < start + SECONDS:
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited ({agent.returncode}); see {work}/agent.log")
            if churn is None or churn.poll() is not None:
                if churn is not None:
                    out = churn.stdout.read().strip().splitlines()
                    if out:
                        churn_conns += json.loads(out[-1]).get("ops", 0)
                churn = subprocess.Popen([LOADGEN, "churn", "--seconds", "30"],
                                         stdout=subprocess.PIPE, text=True)
            if now >= next_sample:
                s = resources(agent.pid)
                s["t"] = round(now - start)
                samples.append(s)
                log(f"t={s['t']}s rss={s['rss_kb'] / 1024:.1f}MB fds={s['fds']} threads={s['threads']}")
                next_sample += SAMPLE
            if now >= next_toggle:
                for probe in ("tcp", "soakext"):
                    for switch in ("off", "on"):
                        if ctl("set", probe, "--switch", switch).returncode != 0:
                            errors["ctl"] += 1
                toggles += 1
                next_toggle += TOGGLE
            if now >= next_hup:
                agent.send_signal(signal.SIGHUP)
                hups += 1
                next_hup += HUP
            if now >= next_scrape:
                for gz in (False, True):
                    try:
                        scrape(gz)
                        scrapes += 1
                    except OSError:
                        errors["scrape"] += 1
                next_scrape += 5
            time.sleep(0.2)
    finally:
        if churn is not None and churn.poll() is None:
            churn.kill()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
    result = {
        "seconds": SECONDS, "samples": samples, "toggles": toggles, "hups": hups,
        "scrapes": scrapes, "errors": errors, "churn_connections": churn_conns,
        "rss": verdict(samples, "rss_kb", 0.10, 1024),
        "fds": verdict(samples, "fds", 0.0, 2),
        "threads": verdict(samples, "threads", 0.0, 2),
    }
    with open(os.path.join(work, "soak.json"), "w", encoding="ascii") as f:
        json.dump(result, f)
    write_report(result)
    ok = all(result[k] and result[k]["flat"] for k in ("rss", "fds", "threads"))
    log(f"{'flat' if ok else 'NOT flat'}; details {work}/soak.json")
    sys.exit(0 if ok else 1)


def write_report(r):
    def row(name, v, unit, scale=1.0):
        if not v:
            return f"| {name} | – | – | – | too short to judge |"
        return (f"| {name} | {v['early'] / scale:.1f}{unit} | {v['late'] / scale:.1f}{unit} | "
                f"{v['max'] / scale:.1f}{unit} | {'flat' if v['flat'] else '**grew**'} |")
    lines = [
        BEGIN,
        f"## Soak: {r['seconds'] / 60:.0f} minutes of churn, toggles and reloads (issue 13)",
        "",
        f"`sudo bash bench/soak.sh`: {r['seconds'] / 60:.0f} min; {r['churn_connections']:,} churn "
        f"connections; {r['toggles']} rounds of tcp + extension probe off/on through `gopher ctl`; "
        f"{r['hups']} SIGHUP reloads; {r['scrapes']} scrapes (plain and gzip); failed ctl calls "
        f"{r['errors']['ctl']}, failed scrapes {r['errors']['scrape']}. Median of the second fifth "
        "(after warm-up) against the median of the last fifth.",
        "",
        "| resource | early | late | max | verdict |",
        "|---|---|---|---|---|",
        row("RSS", r["rss"], " MB", 1024.0),
        row("open files", r["fds"], ""),
        row("threads", r["threads"], ""),
    ]
    if NOTE:
        lines += ["", NOTE]
    lines.append(END)
    write_section(OUT, BEGIN, END, "\n".join(lines))


if __name__ == "__main__":
    main()
