"""systemd's socket activation and notification protocols, in Python over
the engine, without libsystemd: listen_fds() reads what a socket activator
passed (as sd_listen_fds_with_names), notify() sends the datagram that
sd_pid_notify_with_fds sends, and store_fds() puts descriptors in the
service manager's descriptor store."""

from __future__ import annotations

from fdpass._platform import require_posix

require_posix(__name__)

import os
import re
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fdpass._channel import MAX_FDS, FDChannel

if TYPE_CHECKING:
    from fdpass._channel import _FileDescriptorLike

__all__ = ["SD_LISTEN_FDS_START", "listen_fds", "notify", "store_fds"]

#: The first descriptor a socket activator passes; the rest follow in order.
SD_LISTEN_FDS_START = 3

# LISTEN_PIDFDID is set by systemd 257 and later; unset with the others.
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDS", "LISTEN_FDNAMES")
_NUMBER = re.compile(r"[+-]?[0-9]+")
_SNDBUF_SIZE = 8 * 1024 * 1024  # what libsystemd asks for on its notify socket
_FDNAME_MAX = 255


def listen_fds(*, unset_environment: bool = True) -> list[tuple[str, int]]:
    """The descriptors a socket activator passed, as (name, fd) pairs from
    fd 3 on, in order; the name is "unknown" where none was given.  [] when
    LISTEN_PID is absent or not this process, or LISTEN_FDS is absent.
    Each descriptor is made close-on-exec.  Malformed values raise
    ValueError naming the variable.  unset_environment removes LISTEN_PID,
    LISTEN_PIDFDID, LISTEN_FDS and LISTEN_FDNAMES, on every path."""
    try:
        return _listen_fds_with_names()
    finally:
        if unset_environment:
            for name in _LISTEN_VARIABLES:
                os.environ.pop(name, None)


def _listen_fds_with_names() -> list[tuple[str, int]]:
    # The order of sd_listen_fds_with_names: names split first, then the
    # count checked and the descriptors made close-on-exec, then the match.
    names_value = os.environ.get("LISTEN_FDNAMES")
    names = None if names_value is None else _split_names(names_value)
    count = _listen_fds_count()
    if count == 0:
        return []
    if names is None:
        names = ["unknown"] * count
    elif len(names) != count:
        raise ValueError(f"LISTEN_FDNAMES has {len(names)} names for LISTEN_FDS={count} "
                         "descriptors")
    return list(zip(names, range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)))


def _split_names(value: str) -> list[str]:
    """Split on ':' keeping empty names between separators, as libsystemd's
    EXTRACT_DONT_COALESCE_SEPARATORS does; an empty value has no names."""
    return value.split(":") if value else []


def _listen_fds_count() -> int:
    pid = _variable("LISTEN_PID", 1, "a process id")
    if pid is None or pid != os.getpid():
        return 0
    pidfd_id = _variable("LISTEN_PIDFDID", 0, "a pidfd inode number")
    if pidfd_id is not None and _own_pidfd_id() not in (None, pidfd_id):
        return 0  # LISTEN_PID was recycled: the descriptors were for another process
    count = _variable("LISTEN_FDS", 1, "a positive count")
    if count is None:
        return 0
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
    return count


def _variable(name: str, minimum: int, what: str) -> int | None:
    """The environment variable name as a number of at least minimum; None
    when it is absent, ValueError naming it when it is something else."""
    value = os.environ.get(name)
    if value is None:
        return None
    if not _NUMBER.fullmatch(value):
        raise ValueError(f"{name}={value!r} is not a number")
    if int(value) < minimum:
        raise ValueError(f"{name}={value!r} is not {what}")
    return int(value)


def _own_pidfd_id() -> int | None:
    """This process's pidfd inode number where the kernel has pidfs (Linux
    6.9+: each process its own inode), else None.  Before pidfs every pidfd
    shared one anonymous inode, so a pidfd of another process tells."""
    pidfd_open = getattr(os, "pidfd_open", None)
    parent = os.getppid()
    if pidfd_open is None or parent <= 0:
        return None
    inodes = []
    try:
        for pid in (os.getpid(), parent):
            fd = pidfd_open(pid)
            try:
                inodes.append(os.fstat(fd).st_ino)
            finally:
                os.close(fd)
    except OSError:
        return None
    return inodes[0] if inodes[0] != inodes[1] else None


def notify(state: str, fds: Iterable[_FileDescriptorLike] = ()) -> bool:
    """Send state ("READY=1", "STATUS=...", "FDSTORE=1"...) to the service
    manager in one datagram to $NOTIFY_SOCKET (a path, or an abstract name
    written with a leading '@'), with fds attached: the datagram libsystemd's
    sd_pid_notify_with_fds sends.  False when NOTIFY_SOCKET is unset;
    OSError when sending fails; ValueError for a NOTIFY_SOCKET that is no
    path or abstract name."""
    if not isinstance(state, str):
        raise TypeError(f"state must be a str, not {type(state).__name__}")
    value = os.environ.get("NOTIFY_SOCKET")
    if value is None:
        return False
    address = _notify_address(value)
    payload = state.encode("utf-8")
    descriptors = list(fds)
    if len(descriptors) > MAX_FDS:
        raise ValueError(f"notify sends at most {MAX_FDS} descriptors, not {len(descriptors)}")
    if descriptors and not payload:
        raise ValueError("notify needs a non-empty state to carry descriptors")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF_SIZE)
        except OSError:
            pass  # as libsystemd: a bigger buffer is a wish
        sock.connect(address)
        if descriptors:
            with FDChannel(sock, closefd=False) as channel:
                channel.send_fds(descriptors, payload)
        else:
            sock.send(payload, getattr(socket, "MSG_NOSIGNAL", 0))
    return True


def _notify_address(value: str) -> str:
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET={value!r} is neither an absolute path nor an abstract "
                     "name starting with '@' (vsock addresses are not supported)")


def store_fds(name: str, fds: Iterable[_FileDescriptorLike]) -> bool:
    """Put fds in the service manager's descriptor store under name
    (notify("FDSTORE=1\\nFDNAME=" + name, fds)); a restarted service gets
    them back from listen_fds().  The name is checked as systemd checks it:
    1..255 printable ASCII characters, no ':'; ValueError otherwise, and
    for no descriptors."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not (0 < len(name) <= _FDNAME_MAX and all(" " <= c <= "~" and c != ":" for c in name)):
        raise ValueError(f"{name!r} is no descriptor name systemd accepts: 1..{_FDNAME_MAX} "
                         "printable ASCII characters, no ':'")
    descriptors = list(fds)
    if not descriptors:
        raise ValueError("store_fds needs at least one descriptor")
    return notify("FDSTORE=1\nFDNAME=" + name, descriptors)
