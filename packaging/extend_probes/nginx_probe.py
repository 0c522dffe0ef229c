#!/usr/bin/env python3
"""gopher extension probe: nginx stub_status -> table nginx_status.

Every interval, fetches each --url (an nginx `stub_status` page) and prints one line per URL:

    |nginx_status|<server>|<up>|<active>|<accepts>|<handled>|<requests>|<reading>|<writing>|<waiting>|

in the field order of nginx.meta.toml. When a page cannot be read, the line says up=0 and leaves
the numbers empty (no value), so stale numbers do not linger; the reason goes to stderr once per
change. The probe never exits on a target error: nginx may restart under it.

nginx needs a stub_status location, for example:

    location = /nginx_status { stub_status; allow 127.0.0.1; deny all; }

Python 3 standard library only. Exits 0 on SIGTERM/SIGINT and when stdout is closed.
"""

import argparse
import base64
import os
import re
import signal
import socket
import sys
import time
import urllib.parse

PROG = "nginx_probe"
TABLE = "nginx_status"

STATUS_RE = re.compile(
    r"Active connections:\s*(\d+)\s+"
    r"server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)\s+"
    r"Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)"
)


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


class HTTPStatus(Exception):
    """The server answered, but not with 200."""

    def __init__(self, code):
        Exception.__init__(self, "HTTP %d" % code)
        self.code = code


class Target:
    def __init__(self, url, timeout):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL: %r" % url)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.server = ("[%s]:%d" if ":" in self.host else "%s:%d") % (self.host, self.port)
        self.netloc = parts.netloc.rpartition("@")[2]
        self.path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self.url = "%s://%s%s" % (parts.scheme, self.netloc, self.path)
        self.headers = {"User-Agent": "gopher-nginx-probe"}
        if parts.username is not None:
            creds = "%s:%s" % (
                urllib.parse.unquote(parts.username),
                urllib.parse.unquote(parts.password or ""),
            )
            self.headers["Authorization"] = "Basic " + base64.b64encode(
                creds.encode()
            ).decode()
        self.timeout = timeout
        self.last_error = None
        self.opener = None

    def get(self):
        """The page's body; HTTPStatus if the answer is not 200."""
        if self.scheme == "https":
            return self.get_https()
        # Plain HTTP/1.0 by hand: urllib would cost the probe a third more memory.
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            head = "".join("%s: %s\r\n" % kv for kv in self.headers.items())
            req = "GET %s HTTP/1.0\r\nHost: %s\r\n%sConnection: close\r\n\r\n" % (
                self.path,
                self.netloc,
                head,
            )
            s.sendall(req.encode("latin-1"))
            chunks, total = [], 0
            while total < (1 << 20):
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        finally:
            s.close()
        head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/"):
            raise ValueError("%s did not answer in HTTP: %r" % (self.url, head[:40]))
        if status[1] != b"200":
            raise HTTPStatus(int(status[1]) if status[1].isdigit() else 0)
        return body.decode("utf-8", "replace")

    def get_https(self):
        import urllib.error
        import urllib.request

        if self.opener is None:
            # Never go through an http_proxy from the environment: the target is local.
            self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(self.url, headers=self.headers)
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                return resp.read(1 << 20).decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            raise HTTPStatus(e.code)

    def read(self):
        m = STATUS_RE.search(self.get())
        if not m:
            raise ValueError(
                "%s is not an nginx stub_status page (is `stub_status;` set in that location?)"
                % self.url
            )
        return [int(g) for g in m.groups()]

    def collect(self):
        try:
            nums = self.read()
        except Exception as e:  # noqa: BLE001 - whatever the target does, keep probing
            if isinstance(e, HTTPStatus):
                why = "HTTP %d from %s" % (e.code, self.url)
                if e.code == 404:
                    why += " (no stub_status location there?)"
            elif isinstance(e, ValueError):
                why = str(e)
            else:
                why = "%s: %s" % (self.url, getattr(e, "reason", None) or e or type(e).__name__)
            if why != self.last_error:
                log("cannot read %s: %s; retrying every interval" % (self.server, why))
                self.last_error = why
            emit([self.server, 0] + [""] * 7)
            return
        if self.last_error is not None:
            log("%s readable again" % self.server)
            self.last_error = None
        emit([self.server, 1] + nums)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG, description="Print nginx stub_status as gopher nginx_status rows."
    )
    p.add_argument(
        "--url",
        action="append",
        help="stub_status URL (repeatable; http://user:pass@host/... for basic auth); "
        "default http://127.0.0.1/nginx_status",
    )
    p.add_argument("--interval", type=float, default=5.0, help="seconds between rows (default 5)")
    p.add_argument("--timeout", type=float, default=2.0, help="per-request timeout, seconds (default 2)")
    p.add_argument("--once", action="store_true", help="print one round and exit")
    a = p.parse_args(argv)
    if a.interval <= 0 or a.timeout <= 0:
        p.error("--interval and --timeout must be > 0")
    return a


def run(args):
    targets = [Target(u, args.timeout) for u in (args.url or ["http://127.0.0.1/nginx_status"])]
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
