"""A parent starts a child and hands it what the child could not open
itself: a file already deleted from the disk, and the write end of a pipe
the parent reads the child's answer from."""

import os
import socket
import subprocess
import sys
import tempfile

import fdpass

CHILD = """
import socket, sys
import fdpass

with fdpass.FDChannel(socket.socket(fileno=int(sys.argv[1]))) as parent:
    with parent.recv_file("r") as letter, parent.recv_file("w") as answer:
        answer.write(letter.read().upper())
"""

ours, theirs = socket.socketpair()
child = subprocess.Popen([sys.executable, "-c", CHILD, str(theirs.fileno())],
                         pass_fds=[theirs.fileno()])
theirs.close()  # the child has its own copy
reading, writing = os.pipe()
with fdpass.FDChannel(ours) as channel:
    fd, path = tempfile.mkstemp()
    os.remove(path)                     # gone from the disk; the descriptor lives
    with open(fd, "w+") as letter:
        letter.write("a file nobody else can open\n")
        letter.flush()
        letter.seek(0)                  # the child reads from here: the offset is shared
        channel.send_fd(letter)
        channel.send_fd(writing)
        os.close(writing)               # the child has its own copy now
        with open(reading) as answer:
            print(answer.read(), end="")  # A FILE NOBODY ELSE CAN OPEN
print(child.wait(timeout=60))  # 0
