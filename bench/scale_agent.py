"""The agent under test for bench/scale.py: its configuration, start/stop, and scrapes.

`agent_config` is the one place that says how each binary is configured: the issue's setup
(tcp probe at the interval, imdb.max_records_num raised so nothing is refused, the eBPF map of
live sockets above the sockets held, Kafka off, metrics on a free loopback port). A binary that
needs more (a newer agent's series cap, say) gets it from BENCH_SCALE_SET_BEFORE/_AFTER, or
here.
"""
import ctypes
import http.client
import os
import signal
import subprocess
import sys
import threading
import time

from idle_cost import free_port

READY = 'gopher_probe_state{probe="tcp",state="running"} 1'


def die_with_parent():
    """preexec_fn: the child gets SIGKILL if this script dies without cleaning up (SIGKILL,
    OOM). Survives the exec of nice and taskset and of the program they run."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Settings a newer agent needs and an older one refuses ("unknown parameter"): each is tried,
# and dropped for a binary that refuses it at start (Agent.start). The tcp probe's series cap
# (issue 10, default 50,000) would otherwise fold most of the 100 k links into aggregate rows.
OPTIONAL = {"probes.tcp.params.max_series": "1000000"}
# (binary, dotted key) pairs refused so far.
REFUSED = set()


def _assign(cfg, path, value):
    keys = path.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def agent_config(which, port, interval, binary=None):
    """The configuration of binary `which` ("before" or "after") as nested dicts; `probes` is
    keyed by probe name (rendered as [[probes]] entries)."""
    cfg = {
        "global": {"log_level": '"warn"'},
        "web_server": {"bind_addr": '"127.0.0.1"', "port": str(port)},
        "kafka": {"switch": '"off"'},
        # Not needed here, and its default port (8889) may be taken by another agent on the host.
        "control": {"switch": '"off"'},
        # Above the 100 k links held plus whatever else the host runs: nothing refused.
        "imdb": {"max_records_num": "262144"},
        "probes": {
            "tcp": {"switch": '"on"', "interval": str(interval),
                    # The eBPF map of live sockets, above every socket held (default 65,536).
                    "params": {"max_links": "262144"}},
        },
    }
    for path, value in OPTIONAL.items():
        if (binary, path) not in REFUSED:
            _assign(cfg, path, value)
    for assignment in os.environ.get(f"BENCH_SCALE_SET_{which.upper()}", "").split():
        path, _, value = assignment.partition("=")
        _assign(cfg, path, value)
    return cfg


def render_toml(cfg):
    out = []

    def table(header, d):
        flat = {k: v for k, v in d.items() if not isinstance(v, dict)}
        out.append(f"[{header}]")
        out.extend(f"{k} = {v}" for k, v in flat.items())
        for k, v in d.items():
            if isinstance(v, dict):
                out.append(f"{k} = {{ " + ", ".join(f"{a} = {b}" for a, b in v.items()) + " }")
        out.append("")

    for name, d in cfg.items():
        if name == "probes":
            for probe, p in d.items():
                out.append("[[probes]]")
                out.append(f'name = "{probe}"')
                out.extend(f"{k} = {v}" for k, v in p.items() if not isinstance(v, dict))
                for k, v in p.items():
                    if isinstance(v, dict):
                        out.append(f"{k} = {{ " + ", ".join(f"{a} = {b}" for a, b in v.items()) + " }")
                out.append("")
        else:
            table(name, d)
    return "\n".join(out)


def config_text(which, port, interval, binary=None):
    return render_toml(agent_config(which, port, interval, binary))


class Agent:
    def __init__(self, binary, which, work, cpu, nice, interval):
        self.binary, self.which, self.work = binary, which, work
        self.cpu, self.nice, self.interval = cpu, nice, interval
        self.proc = None
        self.port = None
        self.log = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self, tag):
        try:
            self._start(tag)
        except RuntimeError:
            log = open(self.log, errors="replace").read() if self.log else ""
            refused = [k for k in OPTIONAL if (self.binary, k) not in REFUSED
                       and "unknown param" in log and k.rsplit(".", 1)[-1] in log]
            if not refused:
                raise
            REFUSED.update((self.binary, k) for k in refused)
            print(f"scale: {self.binary} refuses {', '.join(refused)}: started without",
                  file=sys.stderr, flush=True)
            self._start(tag)

    def _start(self, tag):
        self.port = free_port()
        cfg = os.path.join(self.work, f"{tag}.toml")
        with open(cfg, "w") as f:
            f.write(config_text(self.which, self.port, self.interval, self.binary))
        self.log = os.path.join(self.work, f"{tag}.log")
        with open(self.log, "w") as logf:
            # nice and taskset exec the agent: the pid is the agent's.
            self.proc = subprocess.Popen(
                ["nice", "-n", self.nice, "taskset", "-c", self.cpu, self.binary, "--config", cfg],
                stdout=logf, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 60
        while True:
            self.check_alive()
            try:
                if READY in self.scrape(timeout=5)["body"]:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.which}: tcp probe not running after 60 s (log {self.log})")
            time.sleep(0.3)

    def check_alive(self):
        if self.proc.poll() is not None:
            tail = open(self.log, errors="replace").read()[-3000:]
            raise RuntimeError(f"{self.which} agent exited ({self.proc.returncode}); log "
                               f"{self.log}:\n{tail}")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def scrape(self, gzip=False, timeout=60):
        """One GET /metrics: seconds to the last byte, body (text, gzip decoded), bytes on the
        wire, Content-Encoding."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Accept-Encoding": "gzip"} if gzip else {}
        t0 = time.monotonic()
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        seconds = time.monotonic() - t0
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"/metrics answered {resp.status}")
        enc = resp.getheader("Content-Encoding") or ""
        body = raw
        if enc == "gzip":
            import gzip as gz
            body = gz.decompress(raw)
        return {"seconds": seconds, "body": body.decode(), "wire_bytes": len(raw),
                "encoding": enc}

    def concurrent_scrapes(self, n):
        """Wall time for n plain scrapes started together."""
        errors = []

        def one():
            try:
                self.scrape()
            except (OSError, RuntimeError) as e:
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(n)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"concurrent scrape failed: {errors[0]}")
        return time.monotonic() - t0


def _label(line, name):
    i = line.find(f'{name}="')
    if i < 0:
        return None
    i += len(name) + 2
    return line[i:line.index('"', i)]


def _value(line):
    try:
        return float(line.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0.0


def links_of(body, pids):
    """Links with an open connection owned by one of `pids` (link_count samples)."""
    pids = {str(p) for p in pids}
    n = 0
    for line in body.splitlines():
        if line.startswith("gala_gopher_tcp_link_link_count{") and _label(line, "tgid") in pids \
                and _value(line) >= 1:
            n += 1
    return n


def port_bytes(body, port):
    """(server-role rx_bytes, client-role tx_bytes, rows) of the links to server port `port`."""
    port = str(port)
    rx = tx = 0
    rows = set()
    for line in body.splitlines():
        if not line.startswith("gala_gopher_tcp_link_") or _label(line, "server_port") != port:
            continue
        name = line.split("{", 1)[0]
        role = _label(line, "role")
        rows.add(line.split("{", 1)[1].rsplit("}", 1)[0])
        if name == "gala_gopher_tcp_link_rx_bytes_total" and role == "0":
            rx += int(_value(line))
        elif name == "gala_gopher_tcp_link_tx_bytes_total" and role == "1":
            tx += int(_value(line))
    return rx, tx, len(rows)


# Self-metric families summed over their samples when the agent has them (newer agents add
# some): "extra" in parse()'s answer, absent when the agent does not export the family.
EXTRA = ["gopher_tcp_links_aggregated_total", "gopher_ebpf_map_full_total",
         "gopher_scrape_renders_total", "gopher_scrapes_total", "gopher_probe_panics_total",
         "gopher_tcp_netns_errors_total"]


def parse(body):
    """The self-metrics the report needs, and the sample count."""
    samples = 0
    extra = {}
    lost = dropped = 0.0
    imdb = None
    collect = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        samples += 1
        if line.startswith("gala_gopher_"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == "gopher_ebpf_events_lost_total":
            lost += _value(line)
        elif name == "gopher_rows_dropped_total":
            dropped += _value(line)
        elif name == "gopher_imdb_records" and _label(line, "table") == "tcp_link":
            imdb = int(_value(line))
        elif name.startswith("gopher_probe_collect_seconds") and _label(line, "probe") == "tcp":
            collect[name[len("gopher_probe_collect_seconds"):]] = _value(line)
        elif name in EXTRA:
            extra[name] = extra.get(name, 0.0) + _value(line)
    if "" in collect:  # a gauge: the last collect
        collect_s = collect[""]
    elif collect.get("_count"):  # a histogram or summary: the mean since start
        collect_s = collect.get("_sum", 0.0) / collect["_count"]
    else:
        collect_s = None
    return {"samples": samples, "events_lost": lost, "rows_dropped": dropped,
            "imdb_tcp_link": imdb, "collect_s": collect_s, "extra": extra}
