"""Client connections that fail or are reset, each in a way of its own, from one process.

usage: failures.py BLACKHOLE_ADDRESS. To 127.0.0.1: three connects to a closed port (refused);
one connection the server resets (SO_LINGER 0 close) and one this client resets. To the
blackholed address, port 9: one connect that times out. Prints
"done <closed port> <server port> <errno of each failure>"; end of stdin exits.
"""

import socket
import struct
import sys

ABORT = struct.pack("ii", 1, 0)

closed = socket.socket()
closed.bind(("127.0.0.1", 0))
closed_port = closed.getsockname()[1]
closed.close()
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
server_port = server.getsockname()[1]
errors = []


def failing(address, port):
    c = socket.socket()
    c.settimeout(30)
    try:
        c.connect((address, port))
        errors.append("connected")
    except OSError as e:
        errors.append(str(e.errno))
    c.close()


for _ in range(3):
    failing("127.0.0.1", closed_port)
failing(sys.argv[1], 9)

# The server resets: the client reads ECONNRESET.
c = socket.create_connection(("127.0.0.1", server_port))
s, _ = server.accept()
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
s.close()
try:
    c.recv(1)
    errors.append("no reset")
except ConnectionResetError as e:
    errors.append(str(e.errno))
c.close()

# The client resets.
c = socket.create_connection(("127.0.0.1", server_port))
s, _ = server.accept()
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
c.close()
s.close()

print("done", closed_port, server_port, ",".join(errors), flush=True)
sys.stdin.read()
