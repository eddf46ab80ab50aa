"""The loops docs/performance.md counts under callgrind, in one process.

python pingpong.py N MODE: MODE "loop" is send_fd(0); os.close(recv_fd());
"bench" adds what the pinned ping-pong's workers do around them (the
receiver's one-byte reply, the sender's read of it): both sides' work per
message.  "recv_file" and "recv_socket" are the converters, recv_file()
of a read-only file and recv_socket() of a socket; "open_file" and
"open_socket" their floors, recv_fd() then open(fd, "rb") or
socket.socket(fileno=fd).  Each runs at module level, as docs/performance.md has counted
since CPython 3.11, and in a function ("floop", "fbench"), where names are
locals, as in the bench's workers.  .ci/callgrind/count subtracts the same
run with N = 0."""

import os
import socket
import sys
import textwrap

import fdpass

N, MODE = int(sys.argv[1]), sys.argv[2]
a, b = socket.socketpair()
rx = fdpass.FDChannel(b)
send_fd, recv_fd, recv_file, recv_socket = (fdpass.FDChannel(a).send_fd, rx.recv_fd,
                                            rx.recv_file, rx.recv_socket)
ro = open(__file__, "rb")
close, read, write = os.close, os.read, os.write
sa, sb = a.fileno(), b.fileno()

BODY = {
    "loop": "send_fd(0)\nclose(recv_fd())\n",
    "bench": "send_fd(0)\nclose(recv_fd())\nwrite(sb, b'k')\nread(sa, 1)\n",
    "recv_file": "send_fd(ro)\nrecv_file().close()\n",
    "open_file": "send_fd(ro)\nopen(recv_fd(), 'rb').close()\n",
    "recv_socket": "send_fd(sa)\nrecv_socket().close()\n",
    "open_socket": "send_fd(sa)\nsocket.socket(fileno=recv_fd()).close()\n",
}
body = BODY.get(MODE.removeprefix("f"))
if body is None:
    sys.exit(f"unknown mode {MODE!r}")
loop = "for _ in range(N):\n" + textwrap.indent(body, "    ")
if MODE.startswith("f"):
    names = "send_fd, recv_fd, recv_file, recv_socket, close, read, write, sa, sb, ro, open"
    exec(f"def run(N, {', '.join(f'{n}={n}' for n in names.split(', '))}):\n"
         + textwrap.indent(loop, "    ") + "run(N)\n")
else:
    exec(loop)
