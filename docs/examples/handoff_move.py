"""A live connection moved with its state: the old process has answered a
client once; its successor takes the listener, then the connection, and
answers the same client next, counting on from the state."""

import socket
import subprocess
import sys
import tempfile

import fdpass
from fdpass.handoff import Item

SUCCESSOR = r"""
import socket
import sys
import fdpass

with fdpass.handoff.take(sys.argv[1], timeout=10) as takeover:
    takeover.sockets["http"].close()                 # this one serves only what moves
    takeover.ready()
    for item in takeover.items(timeout=10):          # each item the caller's once yielded
        with socket.socket(fileno=item.fds[0]) as conn:
            conn.sendall(b"answer %d, from the successor" % (int(item.state) + 1))
"""

with tempfile.TemporaryDirectory() as tmp, socket.create_server(("127.0.0.1", 0)) as http:
    path = tmp + "/handoff.sock"
    client = socket.create_connection(http.getsockname(), timeout=10)
    conn, _ = http.accept()
    conn.sendall(b"answer 1, from the old process")
    print(client.recv(100))  # b'answer 1, from the old process'
    with fdpass.handoff.Offer(path, {"http": http}) as offer:
        successor = subprocess.Popen([sys.executable, "-c", SUCCESSOR, path])
        offer.wait(timeout=10)                       # the successor is ready
        moved = offer.move([Item("client", [conn], state=b"1")], timeout=10)
    # Taken: the successor acknowledged it, and our copy is closed.
    print(len(moved.taken), len(moved.kept), conn.fileno())  # 1 0 -1
with client:
    print(client.recv(100))  # b'answer 2, from the successor'
successor.wait()
