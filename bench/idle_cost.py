#!/usr/bin/env python3
"""The agent's standing cost: CPU and memory with every system probe and three extension probes
(nginx, redis, haproxy, each against a real instance this script starts on loopback) on, at the
default intervals, plus the TCP probe. Writes its section of BENCHMARKS.md.

Run as root from the repository: `python3 bench/idle_cost.py` (BENCH_IDLE_SECONDS, default 60).
Goal (issue 3): agent < 1 % of one core and < 30 MB RSS.
"""
import os
import re
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
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
AGENT = os.path.join(TARGET, "release", "gopher")
SECONDS = int(os.environ.get("BENCH_IDLE_SECONDS", "60"))
OUT = os.environ.get("BENCH_OUT", os.path.join(REPO, "BENCHMARKS.md"))
BEGIN = "<!-- idle-cost: written by bench/idle_cost.py -->"
END = "<!-- /idle-cost -->"
TICK = os.sysconf("SC_CLK_TCK")
SYSTEM_PROBES = ["system_meminfo", "system_vmstat", "system_tcp", "system_inode",
                 "system_cpu", "system_disk", "system_net"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"idle_cost: {what} did not listen on {port}")


def cpu_ticks(pid):
    """utime + stime of one process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def descendants(pid):
    kids, todo = [], [pid]
    while todo:
        p = todo.pop()
        # Children hang off the thread that spawned them: read every thread's list.
        c = []
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            tasks = []
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    c += [int(x) for x in f.read().split()]
            except OSError:
                pass
        kids += c
        todo += c
    return kids


def main():
    for tool in ("nginx", "redis-server", "haproxy"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"idle_cost: {tool} is not installed (scripts/setup.sh installs it)")
    if not os.path.exists(AGENT):
        subprocess.run(["cargo", "build", "--release", "-p", "gopher"], cwd=REPO, check=True)
    tmp = tempfile.mkdtemp(prefix="gopher-idle.")
    procs = []
    try:
        nginx_port, redis_port, haproxy_port, web_port = (free_port() for _ in range(4))
        with open(f"{tmp}/nginx.conf", "w") as f:
            f.write(f"""daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {tmp}/b; proxy_temp_path {tmp}/p;
  fastcgi_temp_path {tmp}/f; uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;
  server {{ listen 127.0.0.1:{nginx_port}; location = /nginx_status {{ stub_status; }} }} }}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(subprocess.Popen([nginx, "-c", f"{tmp}/nginx.conf", "-p", tmp]))
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        procs.append(subprocess.Popen([redis, "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--dir", tmp], stdout=subprocess.DEVNULL))
        with open(f"{tmp}/haproxy.cfg", "w") as f:
            f.write(f"""global
  stats socket {tmp}/haproxy.sock mode 600 level admin
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend fe
  bind 127.0.0.1:{haproxy_port}
  default_backend be
backend be
  server web 127.0.0.1:{nginx_port}
""")
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        procs.append(subprocess.Popen([haproxy, "-f", f"{tmp}/haproxy.cfg", "-db"]))
        for port, what in ((nginx_port, "nginx"), (redis_port, "redis"), (haproxy_port, "haproxy")):
            wait_port(port, what)

        probes = "".join(f'[[probes]]\nname = "{p}"\nswitch = "on"\ninterval = 5\n\n'
                         for p in ["tcp"] + SYSTEM_PROBES)
        ext = os.path.join(REPO, "packaging", "extend_probes")
        extend = f"""
[[extend_probes]]
name = "nginx"
command = "{ext}/nginx_probe.py"
param = "--url http://127.0.0.1:{nginx_port}/nginx_status --interval 5"
switch = "on"
meta = "{ext}/nginx.meta.toml"

[[extend_probes]]
name = "redis"
command = "{ext}/redis_probe.py"
param = "--addr 127.0.0.1:{redis_port} --interval 5"
switch = "on"
meta = "{ext}/redis.meta.toml"

[[extend_probes]]
name = "haproxy"
command = "{ext}/haproxy_probe.py"
param = "--socket {tmp}/haproxy.sock --interval 5"
switch = "on"
meta = "{ext}/haproxy.meta.toml"
"""
        with open(f"{tmp}/probes.toml", "w") as f:
            f.write(f'[web_server]\nbind_addr = "127.0.0.1"\nport = {web_port}\n\n{probes}{extend}')
        agent = subprocess.Popen([AGENT, "--config", f"{tmp}/probes.toml"],
                                 stderr=open(f"{tmp}/agent.log", "w"))
        procs.append(agent)
        url = f"http://127.0.0.1:{web_port}/metrics"
        wanted = ["gala_gopher_nginx_status_up", "gala_gopher_redis_server_up",
                  "gala_gopher_haproxy_stat_", "gala_gopher_system_cpu_", "gala_gopher_tcp_link_"]
        end = time.time() + 60
        body = ""
        while time.time() < end:
            try:
                body = urllib.request.urlopen(url, timeout=5).read().decode()
                if all(w in body for w in wanted):
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            missing = [w for w in wanted if w not in body]
            sys.exit(f"idle_cost: rows never arrived: {missing}; see {tmp}/agent.log")
        time.sleep(5)  # past start-up: meta loading, first /proc scans

        kids = descendants(agent.pid)
        a0, k0, t0 = cpu_ticks(agent.pid), sum(cpu_ticks(k) for k in kids), time.time()
        rss = []
        scrapes = 0
        while time.time() - t0 < SECONDS:
            time.sleep(1)
            rss.append(status_kb(agent.pid, "VmRSS"))
            if int(time.time() - t0) % 15 == 0:
                urllib.request.urlopen(url, timeout=5).read()  # a scrape every 15 s, like Prometheus
                scrapes += 1
        a1, k1, t1 = cpu_ticks(agent.pid), sum(cpu_ticks(k) for k in kids), time.time()
        hwm = status_kb(agent.pid, "VmHWM")
        kid_rss = sum(status_kb(k, "VmRSS") for k in kids)
        wall = t1 - t0
        agent_pct = 100.0 * (a1 - a0) / TICK / wall
        kids_pct = 100.0 * (k1 - k0) / TICK / wall
        rss_mb = max(rss) / 1024
        rows = [
            ("agent CPU, % of one core", f"{agent_pct:.2f} %", "< 1 %", "met" if agent_pct < 1 else "**not met**"),
            ("agent RSS, max sampled (peak VmHWM)", f"{rss_mb:.1f} MB ({hwm/1024:.1f} MB)", "< 30 MB",
             "met" if rss_mb < 30 else "**not met**"),
            ("extension probe processes (3 × python3), CPU", f"{kids_pct:.2f} %", "—", "reported"),
            ("extension probe processes, RSS together", f"{kid_rss/1024:.1f} MB", "—", "reported"),
        ]
        md = [BEGIN, "", "## Standing cost (issue 3)", "",
              f"`python3 bench/idle_cost.py`: the agent with the TCP probe, all {len(SYSTEM_PROBES)} system "
              "probes and the nginx, redis and haproxy extension probes on (each against a real "
              "instance started by the script), default 5 s intervals, a scrape every 15 s; "
              f"measured over {wall:.0f} s after start-up, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} CPUs, kernel {os.uname().release}. CPU from /proc/<pid>/stat "
              "(user + system), RSS from /proc/<pid>/status.", "",
              "| measure | value | goal | verdict |", "|---|---|---|---|"]
        md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        md += ["", END]
        section = "\n".join(md)
        print(section)
        write_section(OUT, BEGIN, END, section)
    finally:
        for p in reversed(procs):
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=10)
            except Exception:  # noqa: BLE001 - best effort teardown
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
