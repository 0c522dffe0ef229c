#!/usr/bin/env python3
"""Kafka egress throughput: rows/s the agent sustains to a local broker, with bounded memory.

End to end, as in production: an extension probe (bench/kafka_gen.py) prints ROWS distinct
changed rows every second; the release agent reads them, stores them, and every egress pass
(1 s) produces each changed record to a tansu broker (memory storage) on a free loopback port.
Rows/s delivered = the increase of gopher_kafka_delivered_total (the broker's acks) over the
measured window. Agent CPU from /proc/<pid>/stat, RSS from /proc/<pid>/status (VmHWM = peak).
Writes its marker-delimited section of BENCHMARKS.md (other sections are kept) and prints it.

Environment (defaults in brackets):
  BENCH_KAFKA_ROWS     offered rows per second, one run per value   ["150000"]
  BENCH_KAFKA_SECONDS  measured window per run, after a warm-up      [30]
  BENCH_KAFKA_WARMUP   seconds before measuring                      [10]
  BENCH_KAFKA_QUEUE    kafka.queue_buffering_max_messages            [100000]
  BENCH_KAFKA_EXTRA    extra lines for the agent's [kafka] section   [""]
  BENCH_NICE           nice level of the agent, broker and generator, and of this session's
                       autogroup: keeps other work on the machine (builds) off their CPUs [-20]
  BENCH_OUT            report file                                   [<repo>/BENCHMARKS.md]
  CARGO_TARGET_DIR     where target/release/gopher is               [<repo>/target]
  GOPHER_TANSU         the tansu binary                  [~/.cache/gopher/tansu/bin/tansu]
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from mdsection import write_section

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
AGENT = os.path.join(TARGET, "release", "gopher")
TANSU = os.environ.get("GOPHER_TANSU", os.path.expanduser("~/.cache/gopher/tansu/bin/tansu"))
OUT = os.environ.get("BENCH_OUT", os.path.join(REPO, "BENCHMARKS.md"))
RATES = [int(x) for x in os.environ.get("BENCH_KAFKA_ROWS", "150000").split()]
SECONDS = float(os.environ.get("BENCH_KAFKA_SECONDS", "30"))
WARMUP = float(os.environ.get("BENCH_KAFKA_WARMUP", "10"))
QUEUE = int(os.environ.get("BENCH_KAFKA_QUEUE", "100000"))
EXTRA = os.environ.get("BENCH_KAFKA_EXTRA", "")
NICE = int(os.environ.get("BENCH_NICE", "-20"))
GOAL = 100_000
BEGIN = "<!-- kafka: written by bench/kafka_bench.py -->"
END = "<!-- /kafka -->"
TICK = os.sysconf("SC_CLK_TCK")

META = """
[[tables]]
name = "kbench"
description = "bench/kafka_bench.py rows"
fields = [
    { name = "node", type = "key" },
    { name = "id", type = "key" },
    { name = "service", type = "label" },
    { name = "requests", type = "counter" },
    { name = "load", type = "gauge" },
]
"""


def log(msg):
    print(f"kafka-bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0


def status_kb(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def generator_pids():
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if b"kafka_gen.py" in open(f"/proc/{d}/cmdline", "rb").read() and int(d) != os.getpid():
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def metrics(url):
    """Sums of the gopher_kafka_* samples (and the rows the store refused) by family."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        key = name
        if name in ("gopher_kafka_failed_total", "gopher_kafka_dropped_total") and "{" in name_labels:
            key = name + "{" + name_labels.split("{", 1)[1]
        try:
            out[key] = out.get(key, 0.0) + float(value)
        except ValueError:
            pass
    return out


def tail(path, n=20):
    try:
        return "".join(open(path).readlines()[-n:])
    except OSError:
        return ""


def wait_port(port, proc, what, logf, timeout=30):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"kafka-bench: {what} exited with {proc.returncode}:\n{tail(logf)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"kafka-bench: {what} did not listen on {port} in {timeout} s")


def niced():
    os.nice(NICE - os.nice(0))


def set_autogroup(level):
    """Under sched_autogroup, nice ranks tasks only within one session; sessions (another
    shell's build) share the CPUs equally. So this session gets the nice level too (as in
    bench/run.sh). Returns the old level, None when it cannot be set."""
    try:
        if open("/proc/sys/kernel/sched_autogroup_enabled").read().strip() != "1":
            return None
        old = int(open("/proc/self/autogroup").read().split()[-1])
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(level))
        return old
    except (OSError, ValueError):
        return None


def one_run(rows, tmp):
    procs = []
    bport, mport = free_port(), free_port()
    url = f"http://127.0.0.1:{mport}/metrics"
    broker = f"127.0.0.1:{bport}"
    try:
        tlog = open(os.path.join(tmp, f"tansu-{rows}.log"), "w")
        tansu = subprocess.Popen(
            [TANSU, "broker", "--listener-url", f"tcp://{broker}", "--advertised-listener-url",
             f"tcp://{broker}", "--storage-engine", "memory://tansu/"],
            stdout=tlog, stderr=tlog, env={**os.environ, "RUST_LOG": "warn"}, preexec_fn=niced)
        procs.append(tansu)
        wait_port(bport, tansu, "tansu", tlog.name)
        for topic in ("gala_gopher", "gala_gopher_metadata"):
            subprocess.run([TANSU, "topic", "create", topic, "--broker", f"tcp://{broker}",
                            "--partitions", "1"], check=True, env={**os.environ, "RUST_LOG": "warn"},
                           stdout=subprocess.DEVNULL)
        meta = os.path.join(tmp, "kbench.toml")
        with open(meta, "w") as f:
            f.write(META)
        cfg = os.path.join(tmp, f"gopher-{rows}.toml")
        with open(cfg, "w") as f:
            f.write(f"""
[global]
log_level = "warn"
[ingress]
interval = 1
[egress]
interval = 1
[imdb]
max_records_num = {max(rows, 1024)}
record_timeout = 60
[web_server]
bind_addr = "127.0.0.1"
port = {mport}
[kafka]
switch = "on"
kafka_broker = "{broker}"
queue_buffering_max_messages = {QUEUE}
{EXTRA}
[[extend_probes]]
name = "kbench"
command = "exec python3 {os.path.join(REPO, 'bench', 'kafka_gen.py')} {rows}"
meta = "{meta}"
switch = "on"
""")
        alog = open(os.path.join(tmp, f"gopher-{rows}.log"), "w")
        agent = subprocess.Popen([AGENT, "--config", cfg], stdout=alog, stderr=alog,
                                 preexec_fn=niced)
        procs.append(agent)
        wait_port(mport, agent, "the agent", alog.name)
        time.sleep(WARMUP)
        gens = generator_pids()
        m0, t0 = metrics(url), time.time()
        c0 = {"agent": cpu_ticks(agent.pid), "tansu": cpu_ticks(tansu.pid),
              "gen": sum(cpu_ticks(g) for g in gens)}
        rss, queue = [], []
        # /metrics renders every stored record (150,000 here): scraped every 15 s, as
        # Prometheus would, not more, or the bench would mostly measure the scrapes.
        last_scrape = t0
        while time.time() - t0 < SECONDS:
            time.sleep(1)
            rss.append(status_kb(agent.pid, "VmRSS"))
            if time.time() - last_scrape >= 15:
                last_scrape = time.time()
                queue.append(metrics(url).get("gopher_kafka_queue_messages", 0.0))
            if agent.poll() is not None:
                raise SystemExit(f"kafka-bench: the agent exited:\n{tail(alog.name)}")
        m1, t1 = metrics(url), time.time()
        queue.append(m1.get("gopher_kafka_queue_messages", 0.0))
        c1 = {"agent": cpu_ticks(agent.pid), "tansu": cpu_ticks(tansu.pid),
              "gen": sum(cpu_ticks(g) for g in gens)}
        wall = t1 - t0
        d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in set(m0) | set(m1)}
        lost = {k: v for k, v in d.items()
                if k.startswith(("gopher_kafka_failed_total", "gopher_kafka_dropped_total")) and v}
        res = {
            "offered_rows_per_sec": rows,
            "seconds": round(wall, 2),
            "delivered_per_sec": round(d.get("gopher_kafka_delivered_total", 0.0) / wall),
            "queued_per_sec": round(d.get("gopher_kafka_queued_total", 0.0) / wall),
            "lost": lost,
            "queue_max": int(max(queue or [0])),
            "queue_bound": QUEUE,
            "agent_cpu_pct": round(100.0 * (c1["agent"] - c0["agent"]) / TICK / wall, 1),
            "tansu_cpu_pct": round(100.0 * (c1["tansu"] - c0["tansu"]) / TICK / wall, 1),
            "gen_cpu_pct": round(100.0 * (c1["gen"] - c0["gen"]) / TICK / wall, 1),
            "agent_rss_max_mb": round(max(rss or [0]) / 1024, 1),
            "agent_hwm_mb": round(status_kb(agent.pid, "VmHWM") / 1024, 1),
            "ingested_per_sec": round(d.get("gopher_rows_ingested_total", 0.0) / wall),
            "rows_dropped": d.get("gopher_rows_dropped_total", 0.0),
        }
        log(json.dumps(res))
        return res
    finally:
        for p in reversed(procs):
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=15)
            except Exception:  # noqa: BLE001 - best effort teardown
                p.kill()
                p.wait()


def section(results):
    best = max(r["delivered_per_sec"] for r in results)
    md = [BEGIN, "", "## Kafka egress throughput (issue 4)", "",
          "`python3 bench/kafka_bench.py` (or `bash bench/kafka.sh`, which builds the release agent "
          "first): an extension probe (`bench/kafka_gen.py`) prints a given number of distinct rows "
          "per second, each with a changed value; the release agent stores them and produces every "
          "changed record once per 1 s egress pass to a local tansu 0.6 broker (memory storage, one "
          "partition) on loopback. **delivered** = the increase of `gopher_kafka_delivered_total` "
          "(broker acknowledgements) over the window; /metrics is scraped every 15 s (each scrape "
          "renders every stored record, so it is part of the cost); **queue max** is the "
          "`gopher_kafka_queue_messages` seen at those scrapes; CPU from /proc/<pid>/stat, RSS from "
          f"/proc/<pid>/status. Agent, broker and generator share the same {os.cpu_count()} CPUs, "
          f"at nice {NICE} (and this session's autogroup too, against other work on the machine). "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {os.uname().release}, "
          f"{results[0]['seconds']:.0f} s windows after {WARMUP:.0f} s warm-up.", "",
          "| offered rows/s | delivered rows/s | failed / dropped | queue max (bound) | agent CPU | agent RSS max (peak VmHWM) | broker CPU | generator CPU |",
          "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lost = ", ".join(f"{k.replace('gopher_kafka_', '')} {v:.0f}" for k, v in r["lost"].items()) or "0"
        md.append(f"| {r['offered_rows_per_sec']:,} | **{r['delivered_per_sec']:,}** | {lost} | "
                  f"{r['queue_max']:,} ({r['queue_bound']:,}) | {r['agent_cpu_pct']} % | "
                  f"{r['agent_rss_max_mb']} MB ({r['agent_hwm_mb']} MB) | {r['tansu_cpu_pct']} % | "
                  f"{r['gen_cpu_pct']} % |")
    verdict = "met" if best >= GOAL else "**not met**"
    md += ["", f"Goal ≥ {GOAL:,} rows/s delivered: {best:,} rows/s, {verdict}.", "",
           "CPU is in % of one core (200 % = both CPUs).", "",
           "<details><summary>Raw results</summary>", "", "```"]
    md += [json.dumps(r, separators=(",", ":")) for r in results]
    md += ["```", "", "</details>", "", END]
    return "\n".join(md)


def main():
    for path, what in ((AGENT, "the release agent (cargo build --release -p gopher)"),
                       (TANSU, "tansu (scripts/setup.sh)")):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"kafka-bench: {path} missing: needs {what}")
    tmp = tempfile.mkdtemp(prefix="gopher-kafka-bench.")
    old_autogroup = set_autogroup(NICE)
    try:
        results = [one_run(rows, tmp) for rows in RATES]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old_autogroup is not None:
            set_autogroup(old_autogroup)
    text = section(results)
    print(text)
    write_section(OUT, BEGIN, END, text)


if __name__ == "__main__":
    main()
