"""The loops docs/performance.md counts under callgrind, in one process.

python pingpong.py N MODE: MODE "loop" is send_fd(0); os.close(recv_fd());
"bench" adds what the pinned ping-pong's workers do around them (the
receiver's one-byte reply, the sender's read of it): both sides' work per
message.  Each runs at module level, as docs/performance.md has counted
since CPython 3.11, and in a function ("floop", "fbench"), where names are
locals, as in the bench's workers.  .ci/callgrind/count subtracts the same
run with N = 0."""

import os
import socket
import sys

import fdpass

N, MODE = int(sys.argv[1]), sys.argv[2]
a, b = socket.socketpair()
send_fd, recv_fd = fdpass.FDChannel(a).send_fd, fdpass.FDChannel(b).recv_fd
close, read, write = os.close, os.read, os.write
sa, sb = a.fileno(), b.fileno()


def floop(n: int, send_fd=send_fd, recv_fd=recv_fd, close=close) -> None:
    for _ in range(n):
        send_fd(0)
        close(recv_fd())


def fbench(n: int, send_fd=send_fd, recv_fd=recv_fd, close=close, read=read,
           write=write, sa=sa, sb=sb) -> None:
    for _ in range(n):
        send_fd(0)
        close(recv_fd())
        write(sb, b"k")
        read(sa, 1)


if MODE == "loop":
    for _ in range(N):
        send_fd(0)
        close(recv_fd())
elif MODE == "bench":
    for _ in range(N):
        send_fd(0)
        close(recv_fd())
        write(sb, b"k")
        read(sa, 1)
elif MODE == "floop":
    floop(N)
elif MODE == "fbench":
    fbench(N)
else:
    sys.exit(f"unknown mode {MODE!r}")
