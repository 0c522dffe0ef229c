#!/usr/bin/env python3
"""A TCP peer with a known pid for gopher's integration tests.

server: listen on ADDR:PORT (0 = any free port), print "ready <port>", accept one connection,
        receive exactly RECV bytes, send exactly SEND bytes, then keep the connection open until
        stdin is closed (or a line "close" arrives), then close and print "closed".
client: connect to ADDR:PORT, send SEND bytes, receive RECV bytes, print "done", wait for
        stdin like the server, close, print "closed".
"""
import socket
import sys


def recv_exact(sock, n):
    got = 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            raise SystemExit(f"peer closed after {got} of {n} bytes")
        got += len(chunk)


def wait_stdin():
    for line in sys.stdin:
        if line.strip() == "close":
            break


def main():
    mode, addr, port, send, recv = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if mode == "server":
        ls = socket.socket(family, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(16)
        print("ready", ls.getsockname()[1], flush=True)
        conn, _ = ls.accept()
        recv_exact(conn, recv)
        conn.sendall(b"s" * send)
        print("done", flush=True)
    else:
        conn = socket.socket(family, socket.SOCK_STREAM)
        conn.connect((addr, port))
        conn.sendall(b"c" * send)
        recv_exact(conn, recv)
        print("done", flush=True)
    wait_stdin()
    conn.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main()
