#!/usr/bin/env python3
"""Backends and clients for gopher's load-balancer link tests (agent/tests/lb_links.rs).

backend ADDR PORT [ADDR PORT ...]
    listen on every ADDR:PORT; print "ready"; for every accepted connection print
    "conn <peer_ip> <local_ip> <local_port>" and hold it open without answering (an HTTP
    request stays in flight); print "gone <peer_ip> <local_ip> <local_port>" when the peer
    closes. Runs until stdin closes.
clients SRC DST PORT N tcp|http
    open N connections from SRC to DST:PORT, send one byte (tcp) or one HTTP request (http),
    print "ready"; on a line "close" (or stdin closed) close them all and print "closed".
dns SRC SERVER NAME N
    send N DNS queries for NAME (A record), each from its own UDP socket bound to SRC, wait
    for every answer and print "answered <ip>" for the first one's A record.
"""
import selectors
import socket
import struct
import sys
import threading


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def backend(pairs):
    sel = selectors.DefaultSelector()
    for addr, port in pairs:
        ls = socket.socket(family(addr), socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, int(port)))
        ls.listen(128)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, "listen")
    print("ready", flush=True)
    stop = threading.Event()

    def watch_stdin():
        for _ in sys.stdin:
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            if key.data == "listen":
                conn, peer = sock.accept()
                local = conn.getsockname()
                desc = f"{peer[0]} {local[0]} {local[1]}"
                print("conn", desc, flush=True)
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, desc)
            else:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    print("gone", key.data, flush=True)


def clients(src, dst, port, n, kind):
    conns = []
    for _ in range(int(n)):
        c = socket.socket(family(dst), socket.SOCK_STREAM)
        c.bind((src, 0))
        c.connect((dst, int(port)))
        if kind == "http":
            c.sendall(f"GET /hold HTTP/1.1\r\nHost: {dst}\r\n\r\n".encode())
        else:
            c.sendall(b"x")
        conns.append(c)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "close":
            break
    for c in conns:
        c.close()
    print("closed", flush=True)


def dns(src, server, name, n):
    first = None
    for i in range(int(n)):
        s = socket.socket(family(server), socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.settimeout(5)
        qid = 0x4000 + i
        q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        q += struct.pack(">HH", 1, 1)
        s.sendto(q, (server, 53))
        answer, _ = s.recvfrom(4096)
        s.close()
        (rid, flags, _, ancount, _, _) = struct.unpack(">HHHHHH", answer[:12])
        if rid != qid or ancount < 1:
            raise SystemExit(f"bad answer id={rid} flags={flags:#x} ancount={ancount}")
        if first is None:
            first = socket.inet_ntoa(answer[-4:])
    print("answered", first, flush=True)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "backend":
        backend(list(zip(args[0::2], args[1::2])))
    elif mode == "clients":
        clients(*args)
    elif mode == "dns":
        dns(*args)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
