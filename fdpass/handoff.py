"""Zero-downtime handoff of listening sockets to a new, unrelated process.

The running process makes an Offer at a path and keeps serving; its
successor take()s the named sockets, starts serving on them and says
ready(); only then does the old process stop.  A successor that goes away
before ready() changes nothing: the offer waits for the next one.

The protocol (version 1) is written down in the README, "Restarts without
dropping a connection".  Its steps are generators (_offer_steps,
_take_steps, _ready_steps) that yield what to send and how much to
receive; the blocking driver here and the asyncio one in fdpass.aio run
the same steps."""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, Union

from fdpass._channel import MAX_FDS, FDChannel
from fdpass._credentials import Credentials
from fdpass._engine import discard, discard_all
from fdpass._errors import ProtocolError

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath

    from fdpass._channel import _FileDescriptorLike

__all__ = ["MAGIC", "VERSION", "Offer", "Takeover", "VersionMismatch", "take"]

#: The first four bytes of every frame, in every version.
MAGIC = b"FDHO"
#: The protocol version this fdpass speaks.
VERSION = 1

# Frame: magic, version, kind (one ASCII letter), body length (big-endian).
_HEADER = struct.Struct(">4sBcI")
HELLO, SOCKETS, READY, DONE, REFUSED = b"H", b"S", b"R", b"D", b"X"
# SOCKETS body: how many sockets in all, index of this frame's first; then
# per descriptor its name, UTF-8, after its length.
_BATCH = struct.Struct(">II")
_NAME_LENGTH = struct.Struct(">H")
# REFUSED body: a reason code, then a UTF-8 explanation.
REFUSED_UID, REFUSED_VERSION, REFUSED_PROTOCOL = 1, 2, 3
_MAX_BODY = 1 << 20
_MAX_NAME = 255
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
# socket.timeout is TimeoutError from Python 3.10; before, an OSError beside it.
_TIMEOUTS = (TimeoutError, socket.timeout)


class _Recv(NamedTuple):
    """A step: receive at most size bytes and their descriptors (b"" at
    the end of the stream)."""
    size: int


class _Send(NamedTuple):
    """A step: send data whole, with fds attached to its first byte."""
    data: bytes
    fds: Sequence[int] = ()


_Step = Union[_Recv, _Send]
_Steps = Generator[_Step, Any, Any]


class _Refused(Exception):
    """Offer side: this successor is turned away, for reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _frame(kind: bytes, body: bytes = b"", version: int = VERSION) -> bytes:
    return _HEADER.pack(MAGIC, version, kind, len(body)) + body


def _read_exact(size: int, fds: list[int]) -> Generator[_Step, Any, bytes]:
    """size bytes (fewer only at the end of the stream), adding the
    descriptors that came with them to fds.  Never asks for a byte beyond
    them, so the next frame's descriptors stay in the socket."""
    data = b""
    while len(data) < size:
        chunk, received = yield _Recv(size - len(data))
        fds.extend(received)
        if not chunk:
            break
        data += chunk
    return data


def _read_frame() -> Generator[_Step, Any, tuple[bytes, bytes, list[int]] | None]:
    """One frame: (kind, body, descriptors), or None at the end of the
    stream before its first byte.  A frame that is not of this protocol and
    version raises ProtocolError, its descriptors closed."""
    fds: list[int] = []
    try:
        header = yield from _read_exact(_HEADER.size, fds)
        if not header and not fds:
            return None
        if len(header) < _HEADER.size:
            raise ProtocolError(errno.EBADMSG, "the handoff peer closed in a frame's header")
        magic, version, kind, length = _HEADER.unpack(header)
        if magic != MAGIC:
            raise ProtocolError(errno.EBADMSG,
                                f"the peer does not speak fdpass handoff: it sent {header!r}")
        if version != VERSION:
            raise VersionMismatch(version)
        if length > _MAX_BODY:
            raise ProtocolError(errno.EBADMSG, f"a handoff frame of {length} bytes")
        body = (yield from _read_exact(length, fds)) if length else b""
        if len(body) < length:
            raise ProtocolError(errno.EBADMSG, "the handoff peer closed in a frame's body")
        return kind, body, fds
    except BaseException:
        discard_all(fds)
        raise


class VersionMismatch(ProtocolError):
    """The peer speaks another version of the handoff protocol."""

    def __init__(self, version: int) -> None:
        super().__init__(errno.EBADMSG, f"the handoff peer speaks protocol version {version}; "
                                        f"this fdpass speaks version {VERSION}")
        self.version = version


def _offer_steps(offered: Sequence[tuple[str, int]]) -> Generator[_Step, Any, None]:
    """The old process's side, after the uid check: HELLO in, SOCKETS out,
    READY in, DONE out.  Returns once DONE is sent; raises _Refused for a
    successor that breaks the protocol, EOFError for one that went away."""
    try:
        hello = yield from _read_frame()
    except VersionMismatch as error:
        yield _Send(_refusal(REFUSED_VERSION, str(error)))
        raise _Refused(str(error)) from None
    except ProtocolError as error:
        raise _Refused(str(error)) from None
    if hello is None:
        raise EOFError("the successor went away before it said hello")
    yield from _expect(hello, HELLO, "HELLO")
    for first in range(0, len(offered), MAX_FDS):
        batch = offered[first:first + MAX_FDS]
        body = _BATCH.pack(len(offered), first) + b"".join(
            _NAME_LENGTH.pack(len(encoded)) + encoded
            for encoded in (name.encode("utf-8") for name, _ in batch))
        yield _Send(_frame(SOCKETS, body), [fd for _, fd in batch])
    try:
        ready = yield from _read_frame()
    except ProtocolError as error:
        raise _Refused(str(error)) from None
    if ready is None:
        raise EOFError("the successor went away before it was ready")
    yield from _expect(ready, READY, "READY")
    yield _Send(_frame(DONE))


def _expect(received: tuple[bytes, bytes, list[int]], kind: bytes,
            name: str) -> Generator[_Step, Any, None]:
    """Offer side: received must be a bare frame of kind; else refuse."""
    got, body, fds = received
    if got == kind and not body and not fds:
        return
    discard_all(fds)
    reason = f"expected {name}, got a {got!r} frame ({len(body)} bytes, {len(fds)} descriptors)"
    yield _Send(_refusal(REFUSED_PROTOCOL, reason))
    raise _Refused(reason)


def _refusal(code: int, reason: str) -> bytes:
    return _frame(REFUSED, bytes([code]) + reason.encode("utf-8"))


def _say(kind: bytes) -> Generator[_Step, Any, None]:
    """The successor sends a bare frame.  If the old process has closed
    already, what it sent before (a refusal, say) is still to be read."""
    try:
        yield _Send(_frame(kind))
    except (BrokenPipeError, ConnectionResetError):
        pass


def _take_steps() -> Generator[_Step, Any, list[tuple[str, int]]]:
    """The successor's side: HELLO out, SOCKETS in until every named
    descriptor has come; returns them, in the offer's order."""
    yield from _say(HELLO)
    received: list[tuple[str, int]] = []
    total = None
    try:
        while total is None or len(received) < total:
            got = yield from _read_frame()
            if got is None:
                raise ConnectionAbortedError(
                    errno.ECONNABORTED, "the old process closed the handoff before sending "
                    f"every socket ({len(received)} of {total if total else '?'})")
            kind, body, fds = got
            try:
                if kind == REFUSED:
                    raise _refusal_error(body)
                if kind != SOCKETS:
                    raise ProtocolError(errno.EBADMSG,
                                        f"expected a SOCKETS frame, got {kind!r}")
                total, names = _parse_batch(body, fds, len(received), total)
            except BaseException:
                discard_all(fds)
                raise
            received.extend(zip(names, fds))
        return received
    except BaseException:
        discard_all([fd for _, fd in received])
        raise


def _parse_batch(body: bytes, fds: list[int], have: int,
                 total: int | None) -> tuple[int, list[str]]:
    """Check a SOCKETS frame against what came before: (total, its names)."""
    if len(body) < _BATCH.size:
        raise ProtocolError(errno.EBADMSG, "a SOCKETS frame too short for its counts")
    announced, first = _BATCH.unpack_from(body)
    names = _names(body)
    if total is not None and announced != total or announced == 0:
        raise ProtocolError(errno.EBADMSG, f"a SOCKETS frame announcing {announced} sockets "
                                           f"after {total}")
    if first != have or not fds or len(names) != len(fds) or have + len(fds) > announced:
        raise ProtocolError(errno.EBADMSG, f"a SOCKETS frame of {len(names)} names and "
                                           f"{len(fds)} descriptors from #{first}, after "
                                           f"{have} of {announced}")
    return announced, names


def _names(body: bytes) -> list[str]:
    names = []
    offset = _BATCH.size
    try:
        while offset < len(body):
            (length,) = _NAME_LENGTH.unpack_from(body, offset)
            offset += _NAME_LENGTH.size
            if length == 0 or offset + length > len(body):
                raise ProtocolError(errno.EBADMSG, "a SOCKETS frame with a bad name length")
            names.append(body[offset:offset + length].decode("utf-8"))
            offset += length
    except (struct.error, UnicodeDecodeError) as error:
        raise ProtocolError(errno.EBADMSG, f"a SOCKETS frame with a bad name: {error}") from None
    return names


def _refusal_error(body: bytes) -> OSError:
    code = body[0] if body else 0
    reason = body[1:].decode("utf-8", "replace")
    if code == REFUSED_UID:
        return PermissionError(errno.EACCES, f"the old process refused the handoff: {reason}")
    return ProtocolError(errno.EBADMSG, f"the old process refused the handoff: {reason}")


def _ready_steps() -> Generator[_Step, Any, None]:
    """The successor's last step: READY out, DONE in."""
    yield from _say(READY)
    got = yield from _read_frame()
    if got is None:
        raise ConnectionAbortedError(
            errno.ECONNABORTED, "the old process closed the handoff without confirming "
            "ready(): it may still be serving")
    kind, body, fds = got
    discard_all(fds)
    if kind == REFUSED:
        raise _refusal_error(body)
    if kind != DONE or body:
        raise ProtocolError(errno.EBADMSG, f"expected DONE, got a {kind!r} frame")


class _Conversation:
    """Steps and the one they wait on, kept across timeouts: a wait() that
    times out while a successor is half-way goes on from there next time."""

    def __init__(self, steps: _Steps) -> None:
        self._steps = steps
        self.step: _Step | None = next(steps)
        self.result: Any = None

    def advance(self, value: object) -> None:
        """Give the current step its outcome; the next step, or the end."""
        self._resume(self._steps.send, value)

    def throw(self, error: BaseException) -> None:
        """The current step failed with error: the steps may handle it."""
        self._resume(self._steps.throw, error)

    def _resume(self, how: Callable[[Any], _Step], value: Any) -> None:
        try:
            self.step = how(value)
        except StopIteration as stop:
            self.step = None
            self.result = stop.value

    def close(self) -> None:
        self.step = None
        self._steps.close()


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("timeout must be non-negative or None")
    return time.monotonic() + timeout


def _settimeout(sock: socket.socket, deadline: float | None) -> None:
    if deadline is None:
        sock.settimeout(None)
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(errno.ETIMEDOUT, "timed out")
    sock.settimeout(left)


def _run_blocking(conversation: _Conversation, channel: FDChannel, sock: socket.socket,
                 deadline: float | None) -> Any:
    """Run conversation's steps on sock until they end; TimeoutError leaves
    a receiving step to try again, a sending step broken (the stream would
    be out of step): the caller then ends the conversation."""
    while conversation.step is not None:
        step = conversation.step
        _settimeout(sock, deadline)
        if isinstance(step, _Send):
            try:
                if step.fds:
                    channel.send_fds(step.fds, step.data)
                else:
                    sock.sendall(step.data, _NOSIGNAL)
            except _TIMEOUTS:
                raise TimeoutError(errno.ETIMEDOUT, "timed out sending") from None
            except (BrokenPipeError, ConnectionResetError) as error:
                conversation.throw(error)
                continue
            conversation.advance(None)
        else:
            try:
                received = channel.recv_message(step.size, MAX_FDS)
            except EOFError:
                received = (b"", [])
            conversation.advance(received)
    return conversation.result


def _offered_descriptors(sockets: Mapping[str, _FileDescriptorLike]) -> list[tuple[str, int]]:
    """Check what is offered: names that fit the protocol, each a socket."""
    if not isinstance(sockets, Mapping):
        raise TypeError(f"sockets must map names to sockets, not {type(sockets).__name__}")
    if not sockets:
        raise ValueError("an offer needs at least one socket")
    offered = []
    for name, sock in sockets.items():
        if not isinstance(name, str) or not 0 < len(name.encode("utf-8")) <= _MAX_NAME:
            raise ValueError(f"socket names are str of 1..{_MAX_NAME} UTF-8 bytes, not {name!r}")
        fd = sock if isinstance(sock, int) else sock.fileno()
        if not isinstance(fd, int) or fd < 0:
            raise ValueError(f"{name!r} is closed: {sock!r}")
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ValueError(f"{name!r} is not a socket: {sock!r}")
        offered.append((name, fd))
    return offered


def _listen_at(path: str | bytes, sock_timeout: float | None) -> tuple[socket.socket, int]:
    """A stream socket listening at path, mode 0600, and its inode.  A stale socket file
    (nobody listening) is replaced; one in use raises OSError(EADDRINUSE),
    any other file FileExistsError.  The mode is set before listen(), and
    until listen() nobody can connect, so no one slips in under 0777."""
    address = path
    try:
        existing = os.lstat(address)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            raise FileExistsError(errno.EEXIST, "not replacing a file that is no socket",
                                  address)
        if _in_use(address):
            raise OSError(errno.EADDRINUSE, "a process is listening there", address)
        os.unlink(address)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address)
        os.chmod(address, 0o600)
        inode = os.stat(address).st_ino
        listener.listen(16)
        listener.settimeout(sock_timeout)
        return listener, inode
    except BaseException:
        listener.close()
        raise


def _in_use(address: str | bytes) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(address)
        except ConnectionRefusedError:
            return False
        except BlockingIOError:  # its backlog is full: someone is listening
            return True
        return True


def _shut(sock: socket.socket) -> None:
    """Wake whatever waits on sock in another thread (accept, recv): on
    Linux close() alone does not."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected, or gone already


def _hang_up(channel: FDChannel, conn: socket.socket) -> None:
    """End a handoff connection: its queue may hold the peer's descriptors,
    whose last close can block for as long as the peer chose, so the
    socket closes on the closer (a call waiting on the channel in another
    thread has woken first: it never touches the number again)."""
    channel.close()
    discard(conn, own=True)


def _qualified(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


class _OfferState:
    """What Offer and fdpass.aio.AsyncOffer share: the listening socket,
    the uid check, the successor being served, and the ending."""

    def __init__(self, path: StrOrBytesPath, sockets: Mapping[str, _FileDescriptorLike],
                 uid: int | None, sock_timeout: float | None) -> None:
        self._sockets = sockets  # kept alive while offered
        self._count = len(_offered_descriptors(sockets))
        self.uid = os.geteuid() if uid is None else uid
        #: Successors turned away, with why: (Credentials, reason).
        self.refused: list[tuple[Credentials, str]] = []
        self.path = os.fspath(path)
        self._listener: socket.socket | None = None
        self._listener, self._inode = _listen_at(self.path, sock_timeout)
        self._peer: tuple[socket.socket, FDChannel, _Conversation, Credentials] | None = None

    @property
    def closed(self) -> bool:
        return self._listener is None

    def listener(self) -> socket.socket:
        if self._listener is None:
            raise ValueError("the offer is closed")
        return self._listener

    def admit(self, conn: socket.socket) -> None:
        """A successor connected: check its uid before anything is sent,
        then start the conversation with it."""
        if self.closed:  # from another thread, while it connected
            discard(conn, own=True)
            return
        try:
            channel = FDChannel(conn, closefd=False)
            who = channel.peer_credentials()
        except BaseException:
            discard(conn, own=True)
            raise
        if who.uid != self.uid:
            reason = f"uid {who.uid} is not uid {self.uid}"
            try:
                conn.send(_refusal(REFUSED_UID, reason), _NOSIGNAL | socket.MSG_DONTWAIT)
            except OSError:
                pass  # it is turned away either way
            _hang_up(channel, conn)
            self.refused.append((who, reason))
            return
        try:  # the descriptor numbers of now: a socket closed since is not sent
            offered = _offered_descriptors(self._sockets)
        except BaseException:
            _hang_up(channel, conn)
            raise
        self._peer = (conn, channel, _Conversation(_offer_steps(offered)), who)

    def peer(self) -> tuple[socket.socket, FDChannel, _Conversation, Credentials] | None:
        return self._peer

    def step_failed(self, error: BaseException) -> bool:
        """The successor's conversation raised error: True if that was the
        successor's doing (refused, gone) and waiting goes on; the
        conversation has ended either way unless error is a timeout while
        receiving."""
        if self._peer is None:
            return True  # closed meanwhile, from another thread: wait() sees it
        conn, _, conversation, who = self._peer
        if isinstance(error, TimeoutError) and isinstance(conversation.step, _Recv):
            return False  # the next wait() receives again
        self.drop_peer()
        if isinstance(error, (_Refused, ProtocolError)):
            self.refused.append((who, str(error)))
            return True
        return isinstance(error, (EOFError, ConnectionError))

    def drop_peer(self) -> None:
        if self._peer is not None:
            conn, channel, conversation, _ = self._peer
            self._peer = None
            _shut(conn)
            conversation.close()
            _hang_up(channel, conn)

    def finish(self) -> Credentials:
        """The successor said READY and has DONE: the offer ends."""
        assert self._peer is not None
        who = self._peer[3]
        self.close()
        return who

    def close(self) -> None:
        """Stop listening, remove the path if it is still ours, and end a
        conversation in progress (that successor's ready() then fails).
        A wait() in another thread wakes and raises ValueError."""
        listener, self._listener = self._listener, None
        self.drop_peer()
        if listener is None:
            return
        _shut(listener)
        discard(listener, own=True)  # connections never accepted may hold descriptors
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"path={self.path!r}"
        return f"<{_qualified(self)} {state}, {self._count} sockets>"


class _Closes:
    """with closes."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_C = TypeVar("_C", bound=_Closes)


class Offer(_OfferState, _Closes):
    """Offer sockets (a mapping of names to sockets, descriptors or objects
    with fileno()) to a successor that connects to path.  The caller keeps
    them and keeps serving on them; wait() hands them over."""

    def __init__(self, path: StrOrBytesPath, sockets: Mapping[str, _FileDescriptorLike], *,
                 uid: int | None = None) -> None:
        super().__init__(path, sockets, uid, None)

    def wait(self, timeout: float | None = None) -> Credentials:
        """Serve successors one at a time until one is ready(), and return
        its Credentials; the offer is then closed.  A successor whose uid
        is not the offer's is refused before anything is sent; one that
        breaks the protocol is refused (both are listed in refused); one
        that goes away before ready() is forgotten.  TimeoutError when the
        timeout passes first: wait() may be called again, and goes on with
        a successor that was half-way."""
        deadline = _deadline(timeout)
        while True:
            listener = self.listener()
            peer = self.peer()
            if peer is None:
                try:
                    _settimeout(listener, deadline)
                    conn, _ = listener.accept()
                except socket.timeout:  # an alias of TimeoutError from 3.10
                    raise TimeoutError(errno.ETIMEDOUT, "no successor came in time") from None
                except OSError:
                    if self.closed:
                        continue  # from another thread: listener() says so
                    raise
                self.admit(conn)
                continue
            conn, channel, conversation, _ = peer
            try:
                _run_blocking(conversation, channel, conn, deadline)
            except BaseException as error:
                if not isinstance(error, Exception) or not self.step_failed(error):
                    raise
                continue
            if self.peer() is not peer:
                continue  # closed from another thread meanwhile
            return self.finish()



class _TakeoverState:
    """What Takeover and fdpass.aio.AsyncTakeover share."""

    def __init__(self, conn: socket.socket, channel: FDChannel, predecessor: Credentials,
                 sockets: dict[str, socket.socket], timeout: float | None) -> None:
        self._conn: socket.socket | None = conn
        self._channel = channel
        self.timeout = timeout
        #: The old process, as the kernel recorded it when it listened.
        self.predecessor = predecessor
        #: The sockets, by name: each owns its descriptor; the caller's.
        self.sockets = sockets

    def conversation(self) -> tuple[socket.socket, FDChannel, _Conversation]:
        if self._conn is None:
            raise ValueError("the takeover is closed")
        return self._conn, self._channel, _Conversation(_ready_steps())

    def close(self) -> None:
        """End the handoff connection.  Before ready(), this tells the old
        process to carry on.  The sockets stay open: they are the caller's."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _hang_up(self._channel, conn)

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"from pid {self.predecessor.pid}"
        return f"<{_qualified(self)} {state}, {len(self.sockets)} sockets>"


def _sockets_from(received: list[tuple[str, int]]) -> dict[str, socket.socket]:
    """socket.socket objects owning the received descriptors; on failure
    every descriptor, made into a socket or not, is closed."""
    sockets: dict[str, socket.socket] = {}
    try:
        for index, (name, fd) in enumerate(received):
            try:
                sock = socket.socket(fileno=fd)
            except OSError as error:
                discard_all([fd for _, fd in received[index:]])
                raise ProtocolError(errno.EBADMSG, f"the old process sent {name!r}, which is "
                                                   f"no socket: {error}") from None
            if not os.get_blocking(fd) and sock.gettimeout() is None:
                sock.setblocking(False)  # agree with the descriptor, as recv_socket does
            sockets[name] = sock
        return sockets
    except BaseException:
        for sock in sockets.values():
            discard(sock)
        raise


class Takeover(_TakeoverState, _Closes):
    """The sockets a successor took over, and its word to the old process.
    Made by take()."""

    def ready(self) -> None:
        """Tell the old process this one is serving, and wait (up to take's
        timeout) for its confirmation: once ready() returns, the old process
        has stopped offering and is stopping.  ConnectionAbortedError if it
        ended the handoff without confirming."""
        conn, channel, conversation = self.conversation()
        try:
            _run_blocking(conversation, channel, conn, _deadline(self.timeout))
        finally:
            conversation.close()
            self.close()



def take(path: StrOrBytesPath, timeout: float | None = None) -> Takeover:
    """Connect to the offer at path and receive every named socket.  The
    Takeover's sockets are the caller's; ready() tells the old process it
    may stop, close() (or leaving with) without ready() that it carries
    on.  PermissionError when the offer refuses this uid; ProtocolError
    when the peer breaks the protocol or speaks another version;
    TimeoutError after timeout seconds for any one step."""
    deadline = _deadline(timeout)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        channel = FDChannel(conn, closefd=False)
        _settimeout(conn, deadline)
        try:
            conn.connect(os.fspath(path))
        except _TIMEOUTS:
            raise TimeoutError(errno.ETIMEDOUT, "timed out connecting") from None
        predecessor = channel.peer_credentials()
        conversation = _Conversation(_take_steps())
        try:
            received = _run_blocking(conversation, channel, conn, deadline)
        finally:
            conversation.close()  # its descriptors closed unless it returned them
        return Takeover(conn, channel, predecessor, _sockets_from(received), timeout)
    except BaseException:
        discard(conn, own=True)
        raise
