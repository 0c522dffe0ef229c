#!/usr/bin/env python3
"""gopher extension probe: redis INFO -> table redis_server.

Every interval, sends INFO to each --addr over a plain socket (RESP, no client library) and prints
one line per server in the field order of redis.meta.toml:

    |redis_server|<server>|<version>|<role>|<up>|<uptime_in_seconds>|...|

Fields are named as in INFO, except `keys` and `expires` (summed over the keyspace's databases)
and `instantaneous_ops_per_second` (INFO's instantaneous_ops_per_sec: Prometheus names spell
units out).
When a server cannot be read the line says up=0 and leaves everything else empty (no value); the
reason goes to stderr once per change, and the next interval reconnects. The connection is kept
open between intervals, so the probe counts as one client in connected_clients.

Password: --password-file FILE (first line), or the REDISCLI_AUTH environment variable (as for
redis-cli); --user for an ACL user. Never on the command line, where ps would show it.

Python 3 standard library only. Exits 0 on SIGTERM/SIGINT and when stdout is closed.
"""

import argparse
import os
import signal
import socket
import sys
import time

PROG = "redis_probe"
TABLE = "redis_server"

# (field, INFO key) after server, version, role, up; "" = computed from the keyspace section.
METRICS = [
    ("uptime_in_seconds", "uptime_in_seconds"),
    ("connected_clients", "connected_clients"),
    ("blocked_clients", "blocked_clients"),
    ("used_memory", "used_memory"),
    ("used_memory_rss", "used_memory_rss"),
    ("used_memory_peak", "used_memory_peak"),
    ("maxmemory", "maxmemory"),
    ("mem_fragmentation_ratio", "mem_fragmentation_ratio"),
    ("connected_slaves", "connected_slaves"),
    ("keys", ""),
    ("expires", ""),
    ("instantaneous_ops_per_second", "instantaneous_ops_per_sec"),
    ("rdb_changes_since_last_save", "rdb_changes_since_last_save"),
    ("total_connections_received", "total_connections_received"),
    ("total_commands_processed", "total_commands_processed"),
    ("rejected_connections", "rejected_connections"),
    ("total_net_input_bytes", "total_net_input_bytes"),
    ("total_net_output_bytes", "total_net_output_bytes"),
    ("expired_keys", "expired_keys"),
    ("evicted_keys", "evicted_keys"),
    ("keyspace_hits", "keyspace_hits"),
    ("keyspace_misses", "keyspace_misses"),
    ("used_cpu_sys", "used_cpu_sys"),
    ("used_cpu_user", "used_cpu_user"),
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


class RedisError(Exception):
    pass


def parse_addr(addr):
    """'host:port', '[v6]:port', 'host' (port 6379) or 'unix:/path' -> (family, sockaddr, key)."""
    if addr.startswith("unix:") or addr.startswith("/"):
        path = addr[5:] if addr.startswith("unix:") else addr
        return socket.AF_UNIX, path, "unix:" + path
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "6379"
    elif addr.count(":") == 1:
        host, port = addr.split(":")
    else:
        host, port = addr, "6379"
    port = int(port)
    if not host or not 0 < port < 65536:
        raise ValueError("bad --addr %r (expected host:port, [v6]:port or unix:/path)" % addr)
    key = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    return None, (host, port), key


class Target:
    def __init__(self, addr, timeout, user, password):
        self.family, self.sockaddr, self.server = parse_addr(addr)
        self.timeout = timeout
        self.user = user
        self.password = password
        self.sock = None
        self.rfile = None
        self.last_error = None

    def connect(self):
        if self.family == socket.AF_UNIX:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self.sockaddr)
            except OSError:
                s.close()
                raise
        else:
            s = socket.create_connection(self.sockaddr, timeout=self.timeout)
        self.sock = s
        self.rfile = s.makefile("rb")
        if self.password is not None:
            args = ["AUTH", self.password] if self.user is None else ["AUTH", self.user, self.password]
            self.command(*args)

    def close(self):
        for f in (self.rfile, self.sock):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self.sock = self.rfile = None

    def command(self, *args):
        out = ["*%d\r\n" % len(args)]
        for a in args:
            b = a.encode()
            out.append("$%d\r\n" % len(b))
            out.append(a + "\r\n")
        self.sock.sendall("".join(out).encode())
        return self.reply()

    def reply(self):
        line = self.rfile.readline(1 << 20)
        if not line.endswith(b"\r\n"):
            raise RedisError("connection closed by the server")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            raise RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            if len(data) != n + 2:
                raise RedisError("connection closed by the server")
            return data[:-2].decode("utf-8", "replace")
        raise RedisError("unexpected reply %r" % line[:40])

    def info(self):
        if self.sock is None:
            self.connect()
        text = self.command("INFO")
        if not isinstance(text, str):
            raise RedisError("INFO returned %r" % (text,))
        fields = {}
        keys = expires = 0
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition(":")
            if not sep:
                continue
            if name.startswith("db") and name[2:].isdigit():
                # db0:keys=1,expires=0,avg_ttl=0
                kv = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
                keys += int(kv.get("keys", 0))
                expires += int(kv.get("expires", 0))
            else:
                fields[name] = value
        row = [self.server, fields.get("redis_version", ""), fields.get("role", ""), 1]
        for field, src in METRICS:
            if field == "keys":
                row.append(keys)
            elif field == "expires":
                row.append(expires)
            else:
                row.append(fields.get(src, ""))
        return row

    def collect(self):
        try:
            row = self.info()
        except Exception as e:  # noqa: BLE001 - whatever the target does, keep probing
            self.close()
            why = str(e) or type(e).__name__
            if why != self.last_error:
                log("cannot read %s: %s; retrying every interval" % (self.server, why))
                self.last_error = why
            emit([self.server, "", "", 0] + [""] * len(METRICS))
            return
        if self.last_error is not None:
            log("%s readable again" % self.server)
            self.last_error = None
        emit(row)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG, description="Print redis INFO as gopher redis_server rows."
    )
    p.add_argument(
        "--addr",
        action="append",
        help="server: host:port, [v6]:port or unix:/path (repeatable; default 127.0.0.1:6379)",
    )
    p.add_argument("--user", help="ACL user name for AUTH (needs a password)")
    p.add_argument("--password-file", help="file whose first line is the password")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between rows (default 5)")
    p.add_argument("--timeout", type=float, default=2.0, help="per-server timeout, seconds (default 2)")
    p.add_argument("--once", action="store_true", help="print one round and exit")
    a = p.parse_args(argv)
    if a.interval <= 0 or a.timeout <= 0:
        p.error("--interval and --timeout must be > 0")
    return a


def run(args):
    password = os.environ.get("REDISCLI_AUTH")
    if args.password_file:
        with open(args.password_file) as f:
            password = f.readline().rstrip("\r\n")
    if args.user is not None and password is None:
        raise ValueError("--user needs a password (--password-file or REDISCLI_AUTH)")
    targets = [
        Target(a, args.timeout, args.user, password) for a in (args.addr or ["127.0.0.1:6379"])
    ]
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
        except (ValueError, OSError) as e:  # bad --addr, unreadable --password-file
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
