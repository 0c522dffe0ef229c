#!/usr/bin/env python3
"""A TCP server whose accepted connection is served and closed by a forked child, for gopher's
integration tests: the listener's owner (this process) is not the process that closes the
server socket.

fork_server.py ADDR SEND RECV: listen on ADDR (any free port), print "ready <port>", accept one
connection, fork; the parent drops its copy of the connection at once; the child receives exactly
RECV bytes, sends exactly SEND bytes, closes the connection first and prints "closed <its pid>".
The parent keeps the listener until stdin closes (or a line "close" arrives), then prints
"closed".
"""
import os
import socket
import sys

from peer import recv_exact


def main():
    addr, send, recv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.bind((addr, 0))
    ls.listen(16)
    print("ready", ls.getsockname()[1], flush=True)
    conn, _ = ls.accept()
    child = os.fork()
    if child == 0:
        ls.close()
        recv_exact(conn, recv)
        conn.sendall(b"s" * send)
        conn.close()
        print("closed", os.getpid(), flush=True)
        os._exit(0)
    conn.close()
    os.waitpid(child, 0)
    for line in sys.stdin:
        if line.strip() == "close":
            break
    ls.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main()
