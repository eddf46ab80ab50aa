"""Helpers the tests share: a leak census and a raw, hostile peer."""

from __future__ import annotations

import array
import io
import os
import socket
import subprocess
import sys

import fdpass
import fdpass._engine

#: Linux's numbers, for Pythons whose socket module lacks the names.
SO_PASSCRED = getattr(socket, "SO_PASSCRED", 16)
SO_PASSPIDFD = getattr(socket, "SO_PASSPIDFD", 76)

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fdpass.__file__)))


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what each refers to."""
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        numbers = [int(name) for name in os.listdir(listing) if int(name) != listing]
    finally:
        os.close(listing)
    found = {}
    for fd in numbers:
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
    return found


def wait_for_discards(timeout: float = 30.0) -> bool:
    """Wait until fdpass has closed every descriptor it discarded, where an
    engine hands them to a closer thread; True when it has (at once for an
    engine that closes them itself)."""
    wait = getattr(fdpass._engine, "wait_for_discards", None)
    return True if wait is None else bool(wait(timeout))


def raw_send(sock: socket.socket, data: bytes, *groups: list[int]) -> None:
    """Send like a hostile peer: any payload, one SCM_RIGHTS message a group."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds)) for fds in groups]
    sock.sendmsg([data], ancillary)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def received_fds(outcome: object) -> list[int]:
    """The descriptors a receive call handed out: an int (-1: none), a list,
    recv_message's (data, fds), or a file or socket object that owns one."""
    if isinstance(outcome, int):
        return [outcome] if outcome >= 0 else []
    if isinstance(outcome, list):
        return outcome
    if isinstance(outcome, tuple):
        return list(outcome[1])
    if isinstance(outcome, (io.IOBase, socket.socket)):
        return [outcome.fileno()]
    raise AssertionError(f"a receive call returned {outcome!r}")


def release(outcome: object) -> None:
    """Close what a receive call handed out."""
    if isinstance(outcome, (io.IOBase, socket.socket)):
        outcome.close()
    else:
        close_all(received_fds(outcome))


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run this interpreter on args from the folder fdpass was imported from,
    so that a child imports the same build, never a source tree in the cwd."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=120, cwd=PACKAGE_ROOT)


def python_child(code: str, *args: str) -> subprocess.Popen[str]:
    """Start this interpreter on code (as run_python), its stdout a pipe;
    use it in a with block, which closes the pipe and reaps the child."""
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            text=True, cwd=PACKAGE_ROOT)
