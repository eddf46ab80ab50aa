"""A restart by handoff: the old process offers its listener, a new and
unrelated process takes it, and serves a client who connected to the
same address."""

import os
import socket
import subprocess
import sys
import tempfile

import fdpass

SUCCESSOR = r"""
import sys
import fdpass

with fdpass.handoff.take(sys.argv[1], timeout=10) as takeover:  # every socket, by name
    http = takeover.sockets["http"]
    takeover.ready()                                  # the old process may stop now
with http:
    conn, _ = http.accept()
    with conn:
        conn.sendall(b"served by the successor")
"""

with tempfile.TemporaryDirectory() as tmp, socket.create_server(("127.0.0.1", 0)) as http:
    path = tmp + "/handoff.sock"
    address = http.getsockname()
    with fdpass.handoff.Offer(path, {"http": http}) as offer:   # http is still ours to serve
        successor = subprocess.Popen([sys.executable, "-c", SUCCESSOR, path])
        took_over = offer.wait(timeout=10)           # returns once the successor is ready
    # Who took over: its uid and gid, and its pid where the platform says it
    # (Linux; -1 elsewhere, as in the portable build).
    print(took_over.uid == os.geteuid())  # True
# Our copy of the listener is closed; the socket lives on in the successor.
with socket.create_connection(address, timeout=10) as client:
    print(client.recv(100))  # b'served by the successor'
successor.wait()
