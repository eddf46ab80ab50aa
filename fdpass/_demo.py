"""`python -m fdpass demo`: a parent hands a temporary file, a pipe end and
a socket to a separate child process, which uses each and reports back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from typing import IO, Callable

from fdpass._channel import FDChannel


class DemoFailed(Exception):
    """What crossed did not work as it should have."""


def child(fd: int) -> int:
    """The child's side: receive each descriptor, use it, say what happened."""
    me = os.getpid()
    with FDChannel(fd) as ch:
        with ch.recv_file() as f:  # mode from the descriptor: r+b
            first = f.read().decode()
            f.write(f"and the child (pid {me}) appended this line\n".encode())
            f.flush()  # before the report: on it, the parent reads the file
            report(f"got fd {f.name}, a regular file opened {f.mode!r}; "
                   f"read {first.strip()!r}, appended a line")

        with ch.recv_file() as w:  # a pipe's write end: wb
            w.write(f"hello through the pipe from pid {me}\n".encode())
            report(f"got fd {w.name}, a pipe's write end opened {w.mode!r}; wrote a line into it")

        with ch.recv_socket() as s:
            s.sendall(f"hello over the socket from pid {me}".encode())
            reply = s.recv(100).decode()
            report(f"got fd {s.fileno()}, a socket ({s.family.name}, {s.type.name}); "
                   f"sent a greeting, the parent answered {reply!r}")

        try:
            ch.recv_fd()
        except EOFError:
            report("end of stream: the parent closed the channel; exiting")
            return 0
    report("expected the end of the stream, got another descriptor")
    return 1


def report(line: str) -> None:
    print(line, flush=True)


def parent(out: Callable[[str], None] = print) -> int:
    """The parent's side: spawn the child, pass it three descriptors, check
    each one's effect, and return the child's exit status."""
    me = os.getpid()
    ours, theirs = socket.socketpair()
    ch = FDChannel(ours)
    with theirs:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fdpass._demo", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    # The channel closes before the child is waited for, even on failure:
    # the child ends at the end of the stream.
    with proc, ch:
        out(f"parent (pid {me}) started child (pid {proc.pid}); they share a "
            "UNIX socketpair, wrapped on each side by fdpass.FDChannel")
        out("each descriptor crosses as one sendmsg: one 0x00 byte + SCM_RIGHTS")
        steps = (step_file, step_pipe, step_socket)
        for number, step in enumerate(steps, 1):
            step(number, me, ch, proc.stdout, out)
        ch.close()
        out(f"4. parent closed its channel; child: {proc.stdout.readline().strip()}")
    out(f"child exited with status {proc.returncode}")
    if proc.returncode == 0:
        out("all three descriptors crossed and worked")
    return proc.returncode


def ask(number: int, what: str, child_out: IO[str], out: Callable[[str], None]) -> None:
    out(f"{number}. parent -> child: {what}")
    line = child_out.readline().strip()
    if not line:
        raise DemoFailed("the child stopped before it answered")
    out(f"   child: {line}")


def check(ok: bool, message: str, out: Callable[[str], None]) -> None:
    if not ok:
        raise DemoFailed(message)
    out(f"   ok: {message}")


def step_file(number: int, me: int, ch: FDChannel, child_out: IO[str],
              out: Callable[[str], None]) -> None:
    with tempfile.NamedTemporaryFile(prefix="fdpass-demo-") as f:
        f.write(f"written by the parent (pid {me})\n".encode())
        f.flush()
        f.seek(0)
        ch.send_fd(f)
        ask(number, f"temporary file {f.name} (fd {f.fileno()})", child_out, out)
        f.seek(0)  # the child moved the offset: both descriptors share one open file
        lines = f.read().decode().splitlines()
    check(len(lines) == 2 and "child" in lines[1],
          f"the file now holds both lines: {lines!r}", out)


def step_pipe(number: int, me: int, ch: FDChannel, child_out: IO[str],
              out: Callable[[str], None]) -> None:
    r, w = os.pipe()
    with open(r, "rb") as reader:
        with open(w, "wb") as writer:
            ch.send_fd(writer)
        ask(number, f"the write end of a pipe (fd {w}), then closed it here", child_out, out)
        text = reader.read().decode().strip()
    check(text.startswith("hello through the pipe"),
          f"read from the pipe's other end: {text!r}", out)


def step_socket(number: int, me: int, ch: FDChannel, child_out: IO[str],
                out: Callable[[str], None]) -> None:
    a, b = socket.socketpair()
    with a:
        with b:
            ch.send_fd(b)
            a.settimeout(30)
            greeting = a.recv(100).decode()
            a.sendall(b"welcome")
            ask(number, f"one end of a socketpair (fd {b.fileno()}), then closed it here",
                child_out, out)
    check(greeting.startswith("hello over the socket"),
          f"received on the other end: {greeting!r}", out)


if __name__ == "__main__":
    sys.exit(child(int(sys.argv[1])))
