"""A listener that never accepts, and clients of its own that fill its accept queue.

usage: backlog.py BACKLOG CLIENTS [ADDRESS] (default 127.0.0.1). Prints "ready <port>" once every client has sent its SYN;
"close" on stdin closes the clients (the listener stays, its queue too) and prints "closed";
end of stdin exits.
"""

import socket
import sys

backlog, clients = int(sys.argv[1]), int(sys.argv[2])
address = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
listener = socket.socket()
listener.bind((address, 0))
listener.listen(backlog)
port = listener.getsockname()[1]
held = []
for _ in range(clients):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex((address, port))
    held.append(c)
print("ready", port, flush=True)
for line in sys.stdin:
    if line.strip() == "close":
        for c in held:
            c.close()
        held.clear()
        print("closed", flush=True)
