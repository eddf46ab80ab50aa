"""Helpers of the Windows tests: a handle census, and a peer process."""

from __future__ import annotations

import sys

import pytest

if sys.platform != "win32":
    pytest.skip("Windows only", allow_module_level=True)

import ctypes
import os
import socket
import subprocess
from ctypes import wintypes

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer.py")
#: Every wait on a peer process is bounded by this.
TIMEOUT = 60.0

_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
_kernel32.GetHandleInformation.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
_kernel32.GetHandleInformation.restype = wintypes.BOOL
_kernel32.GetProcessHandleCount.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
_kernel32.GetProcessHandleCount.restype = wintypes.BOOL
_kernel32.GetCurrentProcess.restype = wintypes.HANDLE

# Handle values are multiples of 4, handed out lowest first: a leak of
# a few hundred handles still lands below this.
_CENSUS_LIMIT = 1 << 15


def open_handles() -> set[int]:
    """Every valid handle value of this process.  Wine's
    GetProcessHandleCount always says 0, so the tests count by asking each
    value in turn (GetHandleInformation), which works on both."""
    flags = wintypes.DWORD()
    return {value for value in range(4, _CENSUS_LIMIT, 4)
            if _kernel32.GetHandleInformation(value, ctypes.byref(flags))}


def handle_count() -> int:
    """GetProcessHandleCount where it counts (Windows), else the census."""
    count = wintypes.DWORD()
    if not _kernel32.GetProcessHandleCount(_kernel32.GetCurrentProcess(), ctypes.byref(count)):
        raise ctypes.WinError(ctypes.get_last_error())
    return count.value or len(open_handles())


def is_handle(value: int) -> bool:
    flags = wintypes.DWORD()
    return bool(_kernel32.GetHandleInformation(value, ctypes.byref(flags)))


class Peer:
    """A python process running one role of peer.py, connected to this one
    over TCP on loopback."""

    def __init__(self, role: str, *args: str) -> None:
        with socket.create_server(("127.0.0.1", 0)) as server:
            server.settimeout(TIMEOUT)
            port = server.getsockname()[1]
            self.process = subprocess.Popen(
                [sys.executable, PEER, role, str(port), *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                self.sock, _ = server.accept()
            except BaseException:
                self.process.kill()
                self.process.communicate()
                raise
        self.sock.settimeout(TIMEOUT)

    def finish(self) -> str:
        """The peer's stdout, once it exited with 0 within TIMEOUT."""
        try:
            out, err = self.process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(f"peer hung: {err.decode(errors='replace')}") from None
        finally:
            self.sock.close()
        assert self.process.returncode == 0, err.decode(errors="replace")
        return out.decode().strip()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        self.sock.close()
        # Popen closes its process handle only when collected: now, so that
        # the test's census does not count it.
        handle = getattr(self.process, "_handle", None)
        if handle is not None:
            handle.Close()


def warm_up() -> None:
    """Winsock makes handles of its own on first use (an event, a helper
    socket), and keeps them: made here, before any census."""
    import fdpass

    r, w = os.pipe()
    tx, rx = fdpass.FDChannel.pair()
    with tx, rx, socket.create_server(("127.0.0.1", 0)) as server:
        tx.send_fds([r, server])
        data, fds = rx.recv_message(16)
        os.close(fds[0])
        socket.socket(fileno=fds[1]).close()
    os.close(r)
    os.close(w)
