"""The Windows backend: typed Python over CPython's own _winapi, msvcrt and
socket.share, so that a Windows install needs no compiler.

Windows has no SCM_RIGHTS: a handle reaches another process only when one
side duplicates it into the other (DuplicateHandle), and a socket only
through WSADuplicateSocket (socket.share).  The functional pair speaks
IO::FDPass's Win32 protocol; FDChannel speaks the versioned frame that
docs/windows.md describes."""

from __future__ import annotations

import sys

if sys.platform != "win32":
    raise ImportError("fdpass._windows is fdpass's Windows backend; this is not Windows")

import _winapi
import codecs
import errno
import msvcrt
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, Union

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

from fdpass._errors import ProtocolError

_T = TypeVar("_T", bound="FDChannel")

#: Most handles and sockets one message carries.
MAX_FDS = 64

#: What stands for close-on-exec here: no handle fdpass makes is inheritable.
CLOEXEC_METHOD = "not inheritable (DuplicateHandle bInheritHandle=FALSE, WSA_FLAG_NO_HANDLE_INHERIT)"

#: The frame version this backend speaks (docs/windows.md, "The frame").
FRAME_VERSION = 1
_MAGIC = b"FDPW"
_HEADER = struct.Struct("<4sBBHI")  # magic, version, type, count, body length
_ITEM = struct.Struct("<B3xI")      # kind, size of what follows
_HELLO, _MESSAGE = 0, 1
_HANDLE, _SOCKET = 1, 2
_MAX_BODY = 16 << 20
# How long the rest of a frame may take once its first byte came (or, when
# sending, once the socket took the first byte): a peer stalled mid-frame
# breaks the stream, it cannot hold a call for ever.
_STALL = 10.0
# How soon a call waiting in another thread notices close().
_WAKE_STEP = 0.1

_PROCESS_DUP_HANDLE = _winapi.PROCESS_DUP_HANDLE
_SYNCHRONIZE = 0x00100000
_FILE_TYPE_DISK, _FILE_TYPE_PIPE = 1, 3


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


_FileDescriptorLike = Union[int, _HasFileno]

_state = threading.local()


def get_errno() -> int:
    """The errno of this thread's last failed send or recv (Perl's $!)."""
    return int(getattr(_state, "errno", 0))


def _posix_errno(error: OSError) -> int:
    """The POSIX errno for a Winsock or Win32 error: Python gives Winsock's
    own codes (10035 for WSAEWOULDBLOCK) as errno, which code written for
    the POSIX contract would not recognise."""
    code = error.errno or 0
    name = errno.errorcode.get(code, "")
    if name == "WSAEWOULDBLOCK" or isinstance(error, BlockingIOError):
        return errno.EAGAIN
    if name.startswith("WSA"):
        return int(getattr(errno, name[3:], code))
    return code


def _fail(error: OSError) -> None:
    _state.errno = _posix_errno(error)


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


@contextmanager
def _borrowed(socket_fd: int) -> Iterator[socket.socket]:
    """A socket.socket over the caller's SOCKET handle, released (never
    closed) afterwards."""
    sock = socket.socket(fileno=socket_fd)
    try:
        yield sock
    finally:
        sock.detach()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """n bytes, or EOFError at the end of the stream."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the peer closed the connection")
        data += chunk
    return bytes(data)


def _rendezvous_read(sock: socket.socket, n: int, may_refuse: bool) -> bytes:
    """n bytes of a rendezvous.  Windows cannot say whether a socket is
    non-blocking, so, as IO::FDPass does on Win32, the socket is made
    blocking when a read would block, and put back afterwards.  With
    may_refuse, a read that would block before any byte came raises
    BlockingIOError instead: nothing was consumed, the caller may retry."""
    data = bytearray()
    made_blocking = False
    try:
        while len(data) < n:
            try:
                chunk = sock.recv(n - len(data))
            except BlockingIOError:
                if may_refuse and not data:
                    raise
                sock.setblocking(True)
                made_blocking = True
                continue
            if not chunk:
                raise EOFError("the peer closed the connection")
            data += chunk
    finally:
        if made_blocking:
            sock.setblocking(False)
    return bytes(data)


def send(socket_fd: int, fd_to_pass: int) -> bool:
    """IO::FDPass::send on Win32: read the receiver's pid (4 bytes LE),
    duplicate fd_to_pass's handle into it, write the new value (8 bytes LE).
    False, with get_errno() set, on failure."""
    _check_int(socket_fd, "socket_fd")
    _check_int(fd_to_pass, "fd_to_pass")
    try:
        with _borrowed(socket_fd) as sock:
            # Nothing is read on a non-blocking socket with no pid waiting:
            # EAGAIN, and the caller may try again, as the seed says.
            pid = int.from_bytes(_rendezvous_read(sock, 4, may_refuse=True), "little")
            handle = _duplicate_into_pid(msvcrt.get_osfhandle(fd_to_pass), pid)
            try:
                sock.sendall(handle.value.to_bytes(8, "little"))
            except BaseException:
                handle.close_remote()
                raise
            finally:
                handle.release()
        return True
    except EOFError:
        _state.errno = errno.ECONNRESET
    except OSError as error:
        _fail(error)
    return False


def recv(socket_fd: int) -> int:
    """IO::FDPass::recv on Win32: write this process's pid, read the
    handle value the sender duplicated into it, and make a C runtime
    descriptor of it.  -1, with get_errno() set, on failure."""
    _check_int(socket_fd, "socket_fd")
    try:
        with _borrowed(socket_fd) as sock:
            sock.sendall(os.getpid().to_bytes(4, "little"))
            handle = int.from_bytes(_rendezvous_read(sock, 8, may_refuse=False), "little")
            return _to_descriptor(handle)
    except EOFError:
        _state.errno = errno.ECONNRESET
    except OSError as error:
        _fail(error)
    return -1


def wait_for_discards(timeout: float | None = None) -> bool:
    """As on POSIX; this backend closes what it discards at once, in the
    call that discards it, so nothing is ever left to wait for."""
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None or a number >= 0, got {timeout!r}")
    return True


def _to_descriptor(handle: int) -> int:
    """A C runtime descriptor (binary, as IO::FDPass's flags 0) that owns
    handle; the handle is closed if that fails."""
    try:
        return msvcrt.open_osfhandle(handle, 0)
    except BaseException:
        _close_handle(handle)
        raise


def _close_handle(handle: int) -> None:
    try:
        _winapi.CloseHandle(handle)
    except OSError:
        pass


class _Pushed:
    """A handle duplicated into another process, with what it takes to
    close it there again if the frame that names it never leaves."""

    def __init__(self, value: int, process: int, own_process: bool) -> None:
        self.value = value
        self._process = process
        self._own_process = own_process

    def close_remote(self) -> None:
        try:
            mine = _winapi.DuplicateHandle(
                self._process, self.value, _winapi.GetCurrentProcess(), 0, False,
                _winapi.DUPLICATE_CLOSE_SOURCE | _winapi.DUPLICATE_SAME_ACCESS)
        except OSError:
            return  # the process is gone, and the handle with it
        _close_handle(mine)

    def release(self) -> None:
        if self._own_process:
            _close_handle(self._process)


def _open_process(pid: int) -> int:
    return _winapi.OpenProcess(_PROCESS_DUP_HANDLE | _SYNCHRONIZE, False, pid)


def _duplicate(source: int, process: int) -> int:
    return _winapi.DuplicateHandle(
        _winapi.GetCurrentProcess(), source, process, 0, False, _winapi.DUPLICATE_SAME_ACCESS)


def _duplicate_into_pid(source: int, pid: int) -> _Pushed:
    process = _open_process(pid)
    try:
        return _Pushed(_duplicate(source, process), process, own_process=True)
    except BaseException:
        _close_handle(process)
        raise


# --- FDChannel -------------------------------------------------------------


class _Item(NamedTuple):
    """One handle or socket of a received message, not yet the caller's."""

    kind: int
    handle: int       # _HANDLE: a handle value in this process
    share: bytes      # _SOCKET: socket.share()'s bytes


def _discard(item: _Item) -> None:
    """The one discard path: whatever a receiver does not hand over is
    closed here.  A socket is closed abortively (no linger), whatever its
    sender set, so that a discard never waits."""
    if item.kind == _HANDLE:
        _close_handle(item.handle)
        return
    try:
        sock = socket.fromshare(item.share)
    except OSError:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("<HH", 1, 0))
    except OSError:
        pass
    sock.close()


def _discard_all(items: Iterable[_Item]) -> None:
    for item in items:
        _discard(item)


def _item_fd(item: _Item) -> int:
    """What recv_fd and friends return: a C runtime descriptor for a
    handle, the SOCKET value (socket.socket(fileno=...)) for a socket."""
    if item.kind == _HANDLE:
        return _to_descriptor(item.handle)
    return socket.fromshare(item.share).detach()


def _take_all(items: list[_Item]) -> list[int]:
    """Each item made the caller's; if one fails, every other is closed."""
    taken: list[int] = []
    try:
        for item in items:
            taken.append(_item_fd(item))
    except BaseException:
        for fd, item in zip(taken, items):
            _close_fd_or_socket(fd, item)
        _discard_all(items[len(taken) + 1:])
        raise
    return taken


def _close_fd_or_socket(fd: int, item: _Item) -> None:
    if item.kind == _HANDLE:
        os.close(fd)
    else:
        socket.socket(fileno=fd).close()


def _resolve(f: object) -> tuple[socket.socket | None, int]:
    """A socket.socket to share, or a C runtime descriptor's handle; every
    argument error raised here, before anything is duplicated."""
    if isinstance(f, socket.socket):
        if f.fileno() == -1:
            raise ValueError("cannot send a closed socket")
        return f, 0
    if isinstance(f, bool) or not isinstance(f, int):
        fileno = getattr(f, "fileno", None)
        if fileno is None:
            raise TypeError(
                f"expected an int descriptor or an object with fileno(), not {type(f).__name__}")
        f = fileno()
        if not isinstance(f, int):
            raise TypeError(f"fileno() returned {type(f).__name__}, not int")
    if f < 0:
        raise ValueError(f"descriptor {f} is negative")
    if f > 0x7FFFFFFF:
        raise OverflowError(f"descriptor {f} does not fit a C int")
    return None, msvcrt.get_osfhandle(f)


def _file_mode(handle: int) -> str:
    """The binary mode a handle's own access allows, found by asking it
    for nothing: a zero-byte read or write, or a peek at a pipe."""
    kind = _winapi.GetFileType(handle)
    if kind == _FILE_TYPE_PIPE:
        try:
            _winapi.PeekNamedPipe(handle, 0)
            return "rb"
        except OSError:
            return "wb"
    if kind != _FILE_TYPE_DISK:
        return "r+b"

    def allowed(probe: Any) -> bool:
        try:
            probe()
            return True
        except PermissionError:
            return False

    readable = allowed(lambda: _winapi.ReadFile(handle, 0))
    writable = allowed(lambda: _winapi.WriteFile(handle, b""))
    if readable and writable:
        return "r+b"
    return "rb" if readable else "wb"


_NEWLINES = (None, "", "\n", "\r", "\r\n")


def _check_file_args(mode: str | None, buffering: int, encoding: str | None,
                     errors: str | None, newline: str | None) -> None:
    """What open() would refuse, refused before anything is received."""
    if mode is not None:
        if not isinstance(mode, str):
            raise TypeError(f"mode must be str, not {type(mode).__name__}")
        chars = set(mode)
        if (len(chars) != len(mode) or not chars <= set("rwaxb+t")
                or sum(c in chars for c in "rwax") != 1 or {"b", "t"} <= chars):
            raise ValueError(f"invalid mode: {mode!r}")
    binary = mode is None or "b" in mode
    if binary and (encoding is not None or errors is not None or newline is not None):
        raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
    if not binary and buffering == 0:
        raise ValueError("can't have unbuffered text I/O")
    if encoding is not None:
        codecs.lookup(encoding)
    if newline not in _NEWLINES:
        raise ValueError(f"illegal newline value: {newline!r}")


class FDChannel:
    """Handles and sockets over a connected stream socket, between two
    Windows processes that both use fdpass's FDChannel."""

    def __init__(self, sock: _FileDescriptorLike, *, closefd: bool = True) -> None:
        if isinstance(sock, socket.socket):
            self._sock = sock
            self._borrowed = False
        else:
            fileno = _check_int(sock if isinstance(sock, int) else sock.fileno(), "fileno()")
            if fileno < 0:
                raise ValueError(f"socket descriptor {fileno} is negative")
            self._sock = socket.socket(fileno=fileno)
            self._borrowed = True
        self._closefd = closefd
        self._closed = False
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._peer_pid = -1
        self._peer_process: int | None = None
        self._pending: list[_Item] = []
        self._draining = False
        try:
            if self._sock.fileno() == -1:
                raise ValueError("the socket is closed")
            if self._sock.type != socket.SOCK_STREAM:
                raise ValueError(f"FDChannel needs a stream socket, not {self._sock.type!r}")
            self._sock.getpeername()
            with self._stall_bounded():
                self._sock.sendall(_HEADER.pack(_MAGIC, FRAME_VERSION, _HELLO, 0, 4)
                                   + os.getpid().to_bytes(4, "little"))
        except BaseException:
            self._release_socket()
            raise

    @classmethod
    def pair(cls: type[_T]) -> tuple[_T, _T]:
        """Two connected channels over socket.socketpair()."""
        a, b = socket.socketpair()
        try:
            first = cls(a)
        except BaseException:
            a.close()
            b.close()
            raise
        try:
            return first, cls(b)
        except BaseException:
            first.close()
            b.close()
            raise

    # --- life -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed or self._sock.fileno() == -1

    @property
    def type(self) -> socket.SocketKind:
        return self._sock.type

    def fileno(self) -> int:
        return -1 if self._closed else self._sock.fileno()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed channel")

    def close(self) -> None:
        """Close the channel: what the peer sent and this side never took
        (whole frames already here) is closed first.  A call waiting in
        another thread wakes within _WAKE_STEP, and raises ValueError."""
        if self._closed:
            return
        self._closed = True
        with self._recv_lock:
            try:
                self._drain()
            finally:
                if self._peer_process is not None:
                    _close_handle(self._peer_process)
                    self._peer_process = None
                self._release_socket()

    def _release_socket(self) -> None:
        if self._closefd:
            self._sock.close()
        elif self._borrowed:
            self._sock.detach()

    def _drain(self) -> None:
        """Discard every whole frame that has arrived and was not taken."""
        if self._sock.fileno() == -1:
            return
        saved = self._sock.gettimeout()
        self._sock.settimeout(0.0)
        self._draining = True
        try:
            while True:
                self._read_message()
                _discard_all(self._pending)
                self._pending = []
        except (OSError, EOFError):
            pass  # BlockingIOError: nothing more has arrived
        finally:
            self._draining = False
            if self._sock.fileno() != -1:
                self._sock.settimeout(saved)

    def shutdown(self, how: int) -> None:
        self._check_open()
        self._sock.shutdown(how)

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fileno()}"
        peer = f" peer_pid={self._peer_pid}" if self._peer_pid >= 0 else ""
        return f"<fdpass.FDChannel {state}{peer} (windows, frame v{FRAME_VERSION})>"

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def settimeout(self, value: float | None) -> None:
        self._sock.settimeout(value)

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    @property
    def peer_pid(self) -> int:
        """The process id the peer named in its hello (-1 until it came)."""
        return self._peer_pid

    @contextmanager
    def _stall_bounded(self) -> Iterator[None]:
        saved = self._sock.gettimeout()
        self._sock.settimeout(_STALL)
        try:
            yield
        except TimeoutError:
            raise ProtocolError(errno.EBADMSG, "the peer stalled in the middle of a frame; "
                                "the stream is unusable") from None
        finally:
            if self._sock.fileno() != -1:
                self._sock.settimeout(saved)

    # --- frames -----------------------------------------------------------

    def _read_frame(self) -> tuple[int, int, bytes]:
        """(type, count, body) of the next frame: its first byte waited for
        under the channel's timeout, the rest under the stall bound."""
        self._wait_readable()
        first = self._sock.recv(_HEADER.size)
        if not first:
            raise EOFError("the peer closed the connection")
        with self._stall_bounded():
            header = first + _recv_exact(self._sock, _HEADER.size - len(first))
            magic, version, kind, count, length = _HEADER.unpack(header)
            if magic != _MAGIC:
                raise ProtocolError(errno.EBADMSG, f"not an fdpass Windows frame (magic {magic!r})")
            if version != FRAME_VERSION:
                raise ProtocolError(errno.EBADMSG, f"the peer speaks frame version {version}; "
                                    f"this fdpass speaks {FRAME_VERSION}")
            if length > _MAX_BODY:
                raise ProtocolError(errno.EBADMSG, f"a frame of {length} bytes")
            body = _recv_exact(self._sock, length) if length else b""
        if kind == _HELLO:
            if len(body) != 4 or count or self._peer_pid >= 0:
                raise ProtocolError(errno.EBADMSG, "a malformed or second hello")
            self._peer_pid = int.from_bytes(body, "little")
        elif kind != _MESSAGE:
            raise ProtocolError(errno.EBADMSG, f"unknown frame type {kind}")
        return kind, count, body

    def _read_message(self) -> bytes:
        """The next message's payload; its items go to self._pending, for
        the caller to take or discard."""
        kind, count, body = self._read_frame()
        if kind == _HELLO:
            kind, count, body = self._read_frame()
        if kind != _MESSAGE:
            raise ProtocolError(errno.EBADMSG, "a second hello")
        self._pending, data = _parse_items(body, count)
        return data

    def _wait_readable(self) -> None:
        """Wait under the channel's timeout, in steps, so that a close()
        in another thread wakes the wait: Windows wakes no recv blocked
        on a socket that another thread shuts down."""
        timeout = self._sock.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed and not self._draining:
                raise ValueError("I/O operation on a closed channel")
            step = _WAKE_STEP if deadline is None else max(0.0, min(_WAKE_STEP, deadline - time.monotonic()))
            if select.select([self._sock], [], [], step)[0]:
                return
            if deadline is not None and time.monotonic() >= deadline:
                if timeout == 0.0:
                    raise BlockingIOError(errno.EAGAIN, "no message has arrived")
                raise TimeoutError("timed out")

    def _learn_peer(self) -> int:
        """The peer's process handle, from its hello (the first frame each
        side writes, at construction): read once per channel, by this call
        or by a receive in another thread, and opened on the first send."""
        while self._peer_pid < 0:
            self._check_open()
            if not self._recv_lock.acquire(timeout=_WAKE_STEP):
                continue  # a receive is under way: it reads the hello first
            try:
                if self._peer_pid < 0:
                    try:
                        kind, count, body = self._read_frame()
                    except EOFError:
                        raise BrokenPipeError(errno.EPIPE, "the peer closed the connection") from None
                    if kind != _HELLO:
                        _discard_all(_parse_items(body, count)[0])
                        raise ProtocolError(errno.EBADMSG, "the peer sent a message before its hello")
            finally:
                self._recv_lock.release()
        if self._peer_process is None:
            self._peer_process = _open_process(self._peer_pid)
        return self._peer_process

    # --- sending ----------------------------------------------------------

    def send_fd(self, f: _FileDescriptorLike) -> None:
        """Send one handle (a C runtime descriptor or a file object) or
        socket (a socket.socket) in one message."""
        self.send_fds([f])

    def send_fds(self, fs: Iterable[_FileDescriptorLike], data: ReadableBuffer = b"\0") -> None:
        """Send 1..MAX_FDS handles and sockets in one message with data."""
        items = [_resolve(f) for f in fs]
        payload = bytes(data)
        if not items or len(items) > MAX_FDS:
            raise ValueError(f"send_fds takes 1 to {MAX_FDS} descriptors, not {len(items)}")
        if not payload:
            raise ValueError("data must not be empty")
        self._check_open()
        with self._send_lock:
            process = self._learn_peer()
            self._wait_writable()
            if _winapi.WaitForSingleObject(process, 0) == _winapi.WAIT_OBJECT_0:
                raise BrokenPipeError(errno.EPIPE, f"the peer process {self._peer_pid} has ended")
            self._check_peer_still_there()
            pushed: list[_Pushed] = []
            try:
                # Handles first (a failure can still take them back), then
                # sockets; the frame keeps the caller's order.
                values: dict[int, bytes] = {}
                for index, (sock, handle) in enumerate(items):
                    if sock is None:
                        pushed.append(_Pushed(_duplicate(handle, process), process, False))
                        values[index] = pushed[-1].value.to_bytes(8, "little")
                for index, (sock, _) in enumerate(items):
                    if sock is not None:
                        values[index] = sock.share(self._peer_pid)
                body = bytearray()
                for index, (sock, _) in enumerate(items):
                    body += _ITEM.pack(_HANDLE if sock is None else _SOCKET, len(values[index]))
                    body += values[index]
                body += payload
                frame = _HEADER.pack(_MAGIC, FRAME_VERSION, _MESSAGE, len(items), len(body))
                with self._stall_bounded():
                    self._sock.sendall(frame + body)
            except BaseException as error:
                for handle_pushed in pushed:
                    handle_pushed.close_remote()
                if isinstance(error, (ConnectionResetError, ConnectionAbortedError)):
                    raise BrokenPipeError(errno.EPIPE, str(error)) from error
                raise

    def _check_peer_still_there(self) -> None:
        """BrokenPipeError if the peer has closed its end: a frame sent now
        would never be read, and its handles would stay in the peer's
        process till it exits.  Skipped while another thread receives: the
        peek could then block, and that receive sees the end itself."""
        if not self._recv_lock.acquire(blocking=False):
            return
        try:
            if not select.select([self._sock], [], [], 0)[0]:
                return
            gone = self._sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return
        except (ConnectionResetError, ConnectionAbortedError) as error:
            raise BrokenPipeError(errno.EPIPE, str(error)) from error
        finally:
            self._recv_lock.release()
        if gone:
            raise BrokenPipeError(errno.EPIPE, "the peer closed its end of the channel")

    def _wait_writable(self) -> None:
        """The channel's timeout applies before anything is duplicated."""
        timeout = self._sock.gettimeout()
        _, writable, _ = select.select([], [self._sock], [], timeout)
        if not writable:
            if timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "the socket's buffer is full")
            raise TimeoutError("timed out")

    # --- receiving --------------------------------------------------------

    def _receive(self, maxfds: int, bufsize: int | None = None) -> tuple[bytes, list[_Item]]:
        if not 1 <= maxfds <= MAX_FDS:
            raise ValueError(f"maxfds must be 1..{MAX_FDS}, not {maxfds}")
        if bufsize is not None and bufsize < 1:
            raise ValueError(f"bufsize must be at least 1, not {bufsize}")
        self._check_open()
        with self._recv_lock:
            self._check_open()
            try:
                data = self._read_message()
            except (OSError, EOFError):
                self._check_open()  # woken by close(): ValueError
                raise
            items, self._pending = self._pending, []
        if len(items) > maxfds:
            _discard_all(items)
            raise ProtocolError(errno.EBADMSG, f"{len(items)} descriptors arrived, "
                                f"more than the {maxfds} asked for; all were closed")
        if bufsize is not None and len(data) > bufsize:
            _discard_all(items)
            raise ProtocolError(errno.EBADMSG, f"a message of {len(data)} bytes, longer than "
                                f"bufsize {bufsize}; its descriptors were closed")
        return data, items

    def _receive_some(self, maxfds: int) -> list[_Item]:
        _, items = self._receive(maxfds)
        if not items:
            raise ProtocolError(errno.EBADMSG, "a message without a descriptor")
        return items

    def recv_fd(self) -> int:
        """One message's one handle (as a C runtime descriptor) or socket
        (as its SOCKET value)."""
        return _take_all(self._receive_some(1))[0]

    def recv_fds(self, maxfds: int = MAX_FDS) -> list[int]:
        return _take_all(self._receive_some(maxfds))

    def recv_message(self, bufsize: int, maxfds: int = MAX_FDS) -> tuple[bytes, list[int]]:
        data, items = self._receive(maxfds, bufsize)
        return data, _take_all(items)

    def recv_file(self, mode: str | None = None, buffering: int = -1,
                  encoding: str | None = None, errors: str | None = None,
                  newline: str | None = None) -> IO[Any]:
        """The received handle as a file object (open(fd, ...)); with
        mode=None the mode follows the handle's own access."""
        _check_file_args(mode, buffering, encoding, errors, newline)
        item = self._receive_some(1)[0]
        if item.kind != _HANDLE:
            _discard(item)
            raise ValueError("a socket arrived: use recv_socket() for sockets")
        try:
            chosen = _file_mode(item.handle) if mode is None else mode
        except BaseException:
            _discard(item)
            raise
        fd = _to_descriptor(item.handle)
        taken = False

        def opener(path: str, flags: int) -> int:
            nonlocal taken  # from here on, a failing open() closes fd itself
            taken = True
            return fd

        try:
            f = open("<received handle>", chosen, buffering, encoding, errors, newline,
                     opener=opener)
        except BaseException:
            if not taken:
                os.close(fd)
            raise
        raw = getattr(f, "buffer", f)
        getattr(raw, "raw", raw).name = fd  # as open(fd) names it
        return f

    def recv_socket(self) -> socket.socket:
        """The received socket (socket.fromshare); a handle that is no
        socket is closed, and OSError(ENOTSOCK) raised."""
        item = self._receive_some(1)[0]
        if item.kind != _SOCKET:
            _discard(item)
            raise OSError(errno.ENOTSOCK, "the descriptor received is not a socket; it was closed")
        return socket.fromshare(item.share)


def _parse_items(body: bytes, count: int) -> tuple[list[_Item], bytes]:
    """The items and payload of a message body; on a malformed body every
    handle already parsed is closed."""
    items: list[_Item] = []
    offset = 0
    try:
        for _ in range(count):
            if offset + _ITEM.size > len(body):
                raise ProtocolError(errno.EBADMSG, "a message cut short in its items")
            kind, size = _ITEM.unpack_from(body, offset)
            offset += _ITEM.size
            value = body[offset:offset + size]
            offset += size
            if len(value) != size:
                raise ProtocolError(errno.EBADMSG, "a message cut short in its items")
            if kind == _HANDLE and size == 8:
                items.append(_Item(_HANDLE, int.from_bytes(value, "little"), b""))
            elif kind == _SOCKET:
                items.append(_Item(_SOCKET, 0, value))
            else:
                raise ProtocolError(errno.EBADMSG, f"an item of kind {kind} and {size} bytes")
    except BaseException:
        _discard_all(items)
        raise
    return items, body[offset:]


__all__ = ["CLOEXEC_METHOD", "FRAME_VERSION", "MAX_FDS", "FDChannel", "get_errno", "recv", "send"]
