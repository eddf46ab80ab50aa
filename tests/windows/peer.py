"""The other process of the Windows tests: `python peer.py ROLE PORT ...`
connects to the test on 127.0.0.1:PORT and plays ROLE.  What it finds
goes to stdout; a failed check exits non-zero."""

from __future__ import annotations

import sys

if sys.platform != "win32":
    raise SystemExit("Windows only")

import _winapi
import msvcrt
import os
import socket
from collections.abc import Callable

# The embeddable interpreter's ._pth file leaves the script's folder off
# sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import winsupport  # noqa: E402

import fdpass  # noqa: E402


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return data


def read_to_end(fd: int) -> bytes:
    with open(fd, "rb") as f:
        return f.read()


def raw_receiver(sock: socket.socket) -> None:
    """IO::FDPass::recv on Win32 from its description: our pid as 4 bytes
    LE, then 8 bytes LE, a handle the sender made in this process."""
    sock.sendall(os.getpid().to_bytes(4, "little"))
    handle = int.from_bytes(read_exact(sock, 8), "little")
    assert winsupport.is_handle(handle), f"{handle:#x} is no handle of this process"
    data = read_to_end(msvcrt.open_osfhandle(handle, 0))
    sock.settimeout(winsupport.TIMEOUT)
    assert sock.recv(1) == b"", "the sender wrote more than 8 bytes"
    print(data.decode())


def raw_sender(sock: socket.socket) -> None:
    """IO::FDPass::send on Win32 from its description: read the receiver's
    pid (4 bytes LE), duplicate a pipe's write end into it (same access,
    not inheritable), write the handle value as 8 bytes LE."""
    r, w = os.pipe()
    pid = int.from_bytes(read_exact(sock, 4), "little")
    process = _winapi.OpenProcess(_winapi.PROCESS_DUP_HANDLE, False, pid)
    handle = _winapi.DuplicateHandle(_winapi.GetCurrentProcess(), msvcrt.get_osfhandle(w),
                                     process, 0, False, _winapi.DUPLICATE_SAME_ACCESS)
    _winapi.CloseHandle(process)
    sock.sendall(handle.to_bytes(8, "little"))
    os.close(w)
    assert sock.recv(1) == b"", "the receiver wrote more than its pid"
    print(pid, read_to_end(r).decode())


def use(fd: int, kind: str, tag: bytes) -> None:
    """Write tag through what arrived: f (a file), p (a pipe's write end)
    or s (a socket)."""
    if kind == "s":
        with socket.socket(fileno=fd) as s:
            s.sendall(tag)
    else:
        os.write(fd, tag)
        os.close(fd)


def channel_receiver(sock: socket.socket) -> None:
    """Each message's payload names the kinds of what it carries."""
    count = int(sys.argv[3])
    with fdpass.FDChannel(sock) as ch:
        for number in range(count):
            data, fds = ch.recv_message(1024)
            kinds = data.decode()
            assert len(kinds) == len(fds), (kinds, fds)
            for fd, kind in zip(fds, kinds):
                use(fd, kind, f"{kind}{number}".encode())
    print("received", count)


def channel_sender(sock: socket.socket) -> None:
    """A pipe's read end, a socket and a file open for writing, one per
    message, then all three in one."""
    path = sys.argv[3]
    r, w = os.pipe()
    os.write(w, b"through the pipe")
    os.close(w)
    mine, theirs = socket.socketpair()
    with fdpass.FDChannel(sock) as ch, mine, theirs, open(path, "wb") as f:
        ch.send_fd(r)
        ch.send_fd(theirs)
        ch.send_fd(f)
        ch.send_fds([r, theirs, f], b"three")
        os.close(r)
        mine.sendall(b"through the socket")
        data, fds = ch.recv_message(16)
        for fd in fds:
            os.close(fd)
        assert data == b"done", data
    print("sent")


def round_trips(sock: socket.socket) -> None:
    """Take each handle and send one back; the census before and after."""
    count = int(sys.argv[3])
    with fdpass.FDChannel(sock) as ch:
        r, w = os.pipe()
        os.close(ch.recv_fd())
        ch.send_fd(w)  # the channel's own handles (the test's process) exist from here
        before = winsupport.handle_count()
        for _ in range(count - 1):
            os.close(ch.recv_fd())
            ch.send_fd(w)
        for fd in ch.recv_message(16)[1]:  # the test's last word
            os.close(fd)
        after = winsupport.handle_count()
        os.close(r)
        os.close(w)
    print(before, after)


def send_and_exit(sock: socket.socket) -> None:
    """Three handles in one message, then gone, with nobody taking them."""
    r, w = os.pipe()
    with fdpass.FDChannel(sock) as ch:
        ch.send_fds([r, w, r], b"never taken")
    print("exiting")


def hold(sock: socket.socket) -> None:
    """A channel that takes one message, then waits for the end."""
    with fdpass.FDChannel(sock) as ch:
        for fd in ch.recv_message(16)[1]:
            os.close(fd)
        try:
            ch.recv_message(16)
        except EOFError:
            print("eof")


ROLES: dict[str, Callable[[socket.socket], None]] = {
    "raw-receiver": raw_receiver,
    "raw-sender": raw_sender,
    "channel-receiver": channel_receiver,
    "channel-sender": channel_sender,
    "round-trips": round_trips,
    "send-and-exit": send_and_exit,
    "hold": hold,
}

if __name__ == "__main__":
    connection = socket.create_connection(("127.0.0.1", int(sys.argv[2])), winsupport.TIMEOUT)
    with connection:
        ROLES[sys.argv[1]](connection)
