#!/usr/bin/env python3
"""gopher extension probe: haproxy statistics (`show stat` CSV) -> table haproxy_stat.

Every interval, reads haproxy's statistics CSV from each --socket (the stats socket of the
`global` section, e.g. `stats socket /run/haproxy/admin.sock`) or --url (a stats page with
`;csv`, e.g. http://127.0.0.1:8404/stats;csv) and prints one line per frontend, backend and
server, in the field order of haproxy.meta.toml:

    |haproxy_stat|<instance>|<proxy>|<server>|<type>|<status>|<up>|<current_sessions>|...|

Columns are found by name in the CSV header, so haproxy versions that add columns still work;
values haproxy leaves empty (not applicable to that line) stay empty (no value). When an
instance cannot be read nothing is printed for it (its records age out after the agent's
imdb.record_timeout); the reason goes to stderr once per change and the next interval retries.

Python 3 standard library only. Exits 0 on SIGTERM/SIGINT and when stdout is closed.
"""

import argparse
import csv
import io
import os
import signal
import socket
import sys
import time
import urllib.parse

PROG = "haproxy_probe"
TABLE = "haproxy_stat"

TYPES = {"0": "frontend", "1": "backend", "2": "server", "3": "listener"}

# Status values haproxy_exporter also counts as up; anything else (DOWN, DOWN 1/2, NOLB, MAINT,
# MAINT (via), MAINT (resolution), STOP, ...) is 0.
UP_STATUSES = ("UP", "UP 1/3", "UP 2/3", "OPEN", "no check", "DRAIN")

# (field, CSV column) after instance, proxy, server, type, status, up.
METRICS = [
    ("current_sessions", "scur"),
    ("max_sessions", "smax"),
    ("session_limit", "slim"),
    ("sessions", "stot"),
    ("session_rate", "rate"),
    ("current_queue", "qcur"),
    ("bytes_in", "bin"),
    ("bytes_out", "bout"),
    ("denied_requests", "dreq"),
    ("denied_responses", "dresp"),
    ("request_errors", "ereq"),
    ("connection_errors", "econ"),
    ("response_errors", "eresp"),
    ("retry_warnings", "wretr"),
    ("redispatch_warnings", "wredis"),
    ("check_failures", "chkfail"),
    ("check_downs", "chkdown"),
    ("downtime_seconds", "downtime"),
    ("weight", "weight"),
    ("active_servers", "act"),
    ("backup_servers", "bck"),
    ("http_requests", "req_tot"),
    ("http_responses_1xx", "hrsp_1xx"),
    ("http_responses_2xx", "hrsp_2xx"),
    ("http_responses_3xx", "hrsp_3xx"),
    ("http_responses_4xx", "hrsp_4xx"),
    ("http_responses_5xx", "hrsp_5xx"),
    ("http_responses_other", "hrsp_other"),
]


def log(msg):
    # One line per message: the agent logs the probe's stderr line by line.
    sys.stderr.write("%s: %s\n" % (PROG, msg.replace("\r", " ").replace("\n", " ").strip()))
    sys.stderr.flush()


def clean(value):
    """A value must not contain the separator or end the line."""
    return str(value).replace("|", "_").replace("\n", " ").replace("\r", " ")


def emit(values):
    sys.stdout.write("|%s|%s|\n" % (TABLE, "|".join(clean(v) for v in values)))
    sys.stdout.flush()


def read_socket(path, timeout):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b"show stat\n")
        chunks = []
        total = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > (64 << 20):
                raise ValueError("more than 64 MiB of statistics")
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        s.close()


class Target:
    def __init__(self, socket_path=None, url=None, timeout=2.0):
        self.socket_path = socket_path
        self.timeout = timeout
        self.last_error = None
        # (proxy, server, type) of the last rows read: reported with up = 0 while unreadable,
        # so that `up == 0` alerts fire instead of the rows silently ageing out.
        self.last_keys = []
        if socket_path is not None:
            self.instance = "unix:" + socket_path
            return
        # Only stats pages need HTTP: importing it costs a few MB of RSS, so not for sockets.
        import base64
        import urllib.request

        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL: %r" % url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.instance = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
        netloc = parts.netloc.rpartition("@")[2]
        self.url = urllib.parse.urlunsplit(
            (parts.scheme, netloc, parts.path or "/", parts.query, "")
        )
        self.headers = {"User-Agent": "gopher-haproxy-probe"}
        if parts.username is not None:
            creds = "%s:%s" % (
                urllib.parse.unquote(parts.username),
                urllib.parse.unquote(parts.password or ""),
            )
            self.headers["Authorization"] = "Basic " + base64.b64encode(
                creds.encode()
            ).decode()
        # Never go through an http_proxy from the environment: the target is local.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch(self):
        if self.socket_path is not None:
            return read_socket(self.socket_path, self.timeout)
        import urllib.request

        req = urllib.request.Request(self.url, headers=self.headers)
        with self.opener.open(req, timeout=self.timeout) as resp:
            return resp.read(64 << 20).decode("utf-8", "replace")

    def rows(self):
        text = self.fetch()
        if not text.startswith("# "):
            first = text.strip().splitlines()[0] if text.strip() else "an empty reply"
            raise ValueError("not haproxy statistics CSV: %s" % first[:120])
        lines = csv.reader(io.StringIO(text[2:]))
        header = next(lines)
        col = {name: i for i, name in enumerate(header)}
        for need in ("pxname", "svname", "status", "type"):
            if need not in col:
                raise ValueError("statistics CSV has no %r column" % need)

        def get(rec, name):
            i = col.get(name)
            return rec[i] if i is not None and i < len(rec) else ""

        out = []
        for rec in lines:
            if not rec or not rec[0]:
                continue
            status = get(rec, "status")
            up = 1 if status in UP_STATUSES else 0
            row = [
                self.instance,
                get(rec, "pxname"),
                get(rec, "svname"),
                TYPES.get(get(rec, "type"), get(rec, "type")),
                status,
                up,
            ]
            row.extend(get(rec, column) for _, column in METRICS)
            out.append(row)
        return out

    def collect(self):
        try:
            rows = self.rows()
        except Exception as e:  # noqa: BLE001 - whatever the target does, keep probing
            if isinstance(getattr(e, "code", None), int) and hasattr(e, "geturl"):  # HTTPError
                why = "HTTP %d from %s" % (e.code, self.url)
            else:
                why = str(getattr(e, "reason", None) or e) or type(e).__name__
            if why != self.last_error:
                log("cannot read %s: %s; retrying every interval" % (self.instance, why))
                self.last_error = why
            for px, sv, ty in self.last_keys:
                emit([self.instance, px, sv, ty, "", 0] + [""] * len(METRICS))
            return
        if self.last_error is not None:
            log("%s readable again" % self.instance)
            self.last_error = None
        self.last_keys = [(row[1], row[2], row[3]) for row in rows]
        for row in rows:
            emit(row)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG, description="Print haproxy statistics as gopher haproxy_stat rows."
    )
    p.add_argument(
        "--socket",
        action="append",
        default=[],
        help="haproxy stats socket path (repeatable; default /run/haproxy/admin.sock "
        "when neither --socket nor --url is given)",
    )
    p.add_argument(
        "--url",
        action="append",
        default=[],
        help="stats page CSV URL, e.g. http://127.0.0.1:8404/stats;csv (repeatable)",
    )
    p.add_argument("--interval", type=float, default=5.0, help="seconds between rows (default 5)")
    p.add_argument("--timeout", type=float, default=2.0, help="per-instance timeout, seconds (default 2)")
    p.add_argument("--once", action="store_true", help="print one round and exit")
    a = p.parse_args(argv)
    if a.interval <= 0 or a.timeout <= 0:
        p.error("--interval and --timeout must be > 0")
    if not a.socket and not a.url:
        a.socket = ["/run/haproxy/admin.sock"]
    return a


def run(args):
    targets = [Target(socket_path=s, timeout=args.timeout) for s in args.socket]
    targets += [Target(url=u, timeout=args.timeout) for u in args.url]
    deadline = time.monotonic()
    while True:
        for t in targets:
            t.collect()
        if args.once:
            return
        deadline += args.interval
        delay = deadline - time.monotonic()
        if delay < 0:  # fell behind (slow target): start the next round now, on a fresh grid
            deadline = time.monotonic()
            delay = 0
        time.sleep(delay)


def main(argv):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        args = parse_args(argv)
        try:
            run(args)
        except BrokenPipeError:
            raise
        except ValueError as e:  # bad --url
            log(str(e))
            return 2
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader is gone: exit quietly (point stdout at /dev/null so the final flush is silent).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
