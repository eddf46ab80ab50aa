"""Zero-downtime handoff of listening sockets to a new, unrelated process.

The running process makes an Offer at a path and keeps serving; its
successor take()s the named sockets, starts serving on them and says
ready(); only then does the old process stop.  A successor that goes away
before ready() changes nothing: the offer waits for the next one.  Then
(version 2) the old process may move() live connections, as Items with
the application's state, to the successor's items().

The protocol (versions 1 and 2) is written down in docs/restarts.md.  Its
steps are generators (_offer_steps, _take_steps, _ready_steps,
_move_steps, _item_steps) that yield what to send and how much to
receive; the blocking driver here and the asyncio one in fdpass.aio run
the same steps."""

from __future__ import annotations

from fdpass._platform import require_posix

require_posix(__name__)

import errno
import os
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, Union

from fdpass._channel import MAX_FDS, FDChannel
from fdpass._credentials import Credentials
from fdpass._engine import discard, discard_all
from fdpass._errors import ProtocolError

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath

    from fdpass._channel import _FileDescriptorLike

__all__ = ["MAGIC", "MAX_STATE", "VERSION", "Item", "Moved", "Offer", "Takeover",
           "VersionMismatch", "take"]

#: The first four bytes of every frame, in every version.
MAGIC = b"FDHO"
#: The highest protocol version this fdpass speaks (it speaks 1 too).
VERSION = 2
_LOWEST = 1
#: The most bytes of state an Item may carry.
MAX_STATE = 1 << 20

# Frame: magic, version, kind (one ASCII letter), body length (big-endian).
_HEADER = struct.Struct(">4sBcI")
HELLO, SOCKETS, READY, DONE, REFUSED = b"H", b"S", b"R", b"D", b"X"
# Version 2: a HELLO's body is the lowest and highest version the successor
# speaks; then ITEM out, ACK in, COMMIT out, for each item moved.
ITEM, ACK, COMMIT = b"I", b"A", b"C"
_RANGE = struct.Struct(">BB")
# ITEM body: the item's number (from 0, across moves), its name's length,
# the name, then the state; ACK and COMMIT bodies: the number.
_ITEM_HEAD = struct.Struct(">IH")
_ITEM_NUMBER = struct.Struct(">I")
# SOCKETS body: how many sockets in all, index of this frame's first; then
# per descriptor its name, UTF-8, after its length.
_BATCH = struct.Struct(">II")
_NAME_LENGTH = struct.Struct(">H")
# REFUSED body: a reason code, then a UTF-8 explanation.
REFUSED_UID, REFUSED_VERSION, REFUSED_PROTOCOL = 1, 2, 3
_MAX_BODY = 1 << 20
_MAX_NAME = 255
_MAX_ITEM_BODY = _ITEM_HEAD.size + _MAX_NAME + MAX_STATE
#: Items sent ahead of their acknowledgements, at most, in one batch.
_BATCH_ITEMS = 32
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
# socket.timeout is TimeoutError from Python 3.10; before, an OSError beside it.
_TIMEOUTS = (TimeoutError, socket.timeout)
#: Longest pause between connect attempts while a listener's backlog is full.
_CONNECT_RETRY_MAX = 0.05


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


def _frame(kind: bytes, body: bytes = b"", version: int = _LOWEST) -> bytes:
    return _HEADER.pack(MAGIC, version, kind, len(body)) + body


_Frame = tuple[int, bytes, bytes, list[int]]  # version, kind, body, descriptors


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


def _read_frame(lowest: int = _LOWEST,
                highest: int = _LOWEST) -> Generator[_Step, Any, _Frame | None]:
    """One frame of a version from lowest to highest: (version, kind, body,
    descriptors), or None at the end of the stream before its first byte.
    A frame that is not of this protocol or of those versions raises
    ProtocolError, its descriptors closed."""
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
        if not lowest <= version <= highest:
            raise VersionMismatch(version)
        if length > (_MAX_BODY if version == 1 else _MAX_ITEM_BODY):
            raise ProtocolError(errno.EBADMSG, f"a handoff frame of {length} bytes")
        body = (yield from _read_exact(length, fds)) if length else b""
        if len(body) < length:
            raise ProtocolError(errno.EBADMSG, "the handoff peer closed in a frame's body")
        return version, kind, body, fds
    except BaseException:
        discard_all(fds)
        raise


class VersionMismatch(ProtocolError):
    """The peer speaks another version of the handoff protocol."""

    def __init__(self, version: int) -> None:
        super().__init__(errno.EBADMSG, f"the handoff peer speaks protocol version {version}; "
                                        f"this fdpass speaks versions {_LOWEST} to {VERSION}")
        self.version = version


def _offer_steps(offered: Sequence[tuple[str, int]]) -> Generator[_Step, Any, int]:
    """The old process's side, after the uid check: HELLO in, SOCKETS out,
    READY in, DONE out; returns the version agreed once DONE is sent.
    Raises _Refused for a successor that breaks the protocol, EOFError for
    one that went away."""
    try:
        hello = yield from _read_frame(_LOWEST, 255)  # a later version's HELLO says its range
    except ProtocolError as error:
        raise _Refused(str(error)) from None
    if hello is None:
        raise EOFError("the successor went away before it said hello")
    version = yield from _agree(hello)
    for first in range(0, len(offered), MAX_FDS):
        batch = offered[first:first + MAX_FDS]
        body = _BATCH.pack(len(offered), first) + b"".join(
            _NAME_LENGTH.pack(len(encoded)) + encoded
            for encoded in (name.encode("utf-8") for name, _ in batch))
        yield _Send(_frame(SOCKETS, body, version), [fd for _, fd in batch])
    try:
        ready = yield from _read_frame(version, version)
    except ProtocolError as error:
        raise _Refused(str(error)) from None
    if ready is None:
        raise EOFError("the successor went away before it was ready")
    yield from _expect(ready, READY, "READY")
    yield _Send(_frame(DONE, version=version))
    return version


def _agree(hello: _Frame) -> Generator[_Step, Any, int]:
    """The version to speak with the successor that sent hello: a bare
    version-1 HELLO is version 1; a later one carries its lowest and
    highest, and the highest common one is spoken."""
    version, kind, body, fds = hello
    if version == 1:
        yield from _expect(hello, HELLO, "HELLO")
        return 1
    yield from _expect(hello, HELLO, "a HELLO with a version range", _RANGE.size)
    lowest, highest = _RANGE.unpack(body)
    common: int = min(highest, VERSION)
    if common < max(lowest, _LOWEST):
        reason = (f"the successor speaks versions {lowest} to {highest}; "
                  f"this fdpass speaks versions {_LOWEST} to {VERSION}")
        yield _Send(_refusal(REFUSED_VERSION, reason))
        raise _Refused(reason)
    return common


def _expect(received: _Frame, kind: bytes, name: str,
            size: int = 0) -> Generator[_Step, Any, None]:
    """Offer side: received must be a frame of kind, with a body of size
    bytes and no descriptors; else refuse."""
    _, got, body, fds = received
    if got == kind and len(body) == size and not fds:
        return
    reason = f"expected {name}, got a {got!r} frame ({len(body)} bytes, {len(fds)} descriptors)"
    discard_all(fds)
    yield _Send(_refusal(REFUSED_PROTOCOL, reason))
    raise _Refused(reason)


def _refusal(code: int, reason: str) -> bytes:
    """A REFUSED frame, always of version 1, which every version reads."""
    return _frame(REFUSED, bytes([code]) + reason.encode("utf-8"))


def _say(kind: bytes, body: bytes = b"", version: int = _LOWEST) -> Generator[_Step, Any, None]:
    """The successor sends a frame without descriptors.  If the old process
    has closed already, what it sent before (a refusal, say) is still to be
    read."""
    try:
        yield _Send(_frame(kind, body, version))
    except (BrokenPipeError, ConnectionResetError):
        pass


def _take_steps(highest: int = VERSION) -> Generator[_Step, Any, tuple[int, list[tuple[str, int]]]]:
    """The successor's side: HELLO out (bare for version 1, else with the
    range of versions spoken), SOCKETS in until every named descriptor has
    come; returns the version the old process chose (its frames') and the
    sockets, in the offer's order."""
    if highest == 1:
        yield from _say(HELLO)
    else:
        yield from _say(HELLO, _RANGE.pack(_LOWEST, highest), highest)
    received: list[tuple[str, int]] = []
    total = None
    version = None
    try:
        while total is None or len(received) < total:
            got = yield from _read_frame(_LOWEST, highest)
            if got is None:
                raise ConnectionAbortedError(
                    errno.ECONNABORTED, "the old process closed the handoff before sending "
                    f"every socket ({len(received)} of {total if total else '?'})")
            frame_version, kind, body, fds = got
            try:
                if kind == REFUSED:
                    raise _refusal_error(body)
                if kind != SOCKETS:
                    raise ProtocolError(errno.EBADMSG,
                                        f"expected a SOCKETS frame, got {kind!r}")
                if version is not None and frame_version != version:
                    raise VersionMismatch(frame_version)
                version = frame_version
                total, names = _parse_batch(body, fds, len(received), total)
            except BaseException:
                discard_all(fds)
                raise
            received.extend(zip(names, fds))
        assert version is not None
        return version, received
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
    while offset < len(body):
        name, offset = _name_at(body, offset, "SOCKETS")
        names.append(name)
    return names


def _name_at(body: bytes, offset: int, frame: str) -> tuple[str, int]:
    """The name at offset in body, after its length, and the offset after it."""
    try:
        (length,) = _NAME_LENGTH.unpack_from(body, offset)
        offset += _NAME_LENGTH.size
        if length == 0 or length > _MAX_NAME or offset + length > len(body):
            raise ProtocolError(errno.EBADMSG, f"a {frame} frame with a bad name length")
        return body[offset:offset + length].decode("utf-8"), offset + length
    except (struct.error, UnicodeDecodeError) as error:
        raise ProtocolError(errno.EBADMSG, f"a {frame} frame with a bad name: {error}") from None


class _VersionRefused(ProtocolError):
    """The old process refused this successor's versions: one that speaks
    version 1 only, to which a bare version-1 HELLO is said next."""


def _refusal_error(body: bytes) -> OSError:
    code = body[0] if body else 0
    reason = body[1:].decode("utf-8", "replace")
    if code == REFUSED_UID:
        return PermissionError(errno.EACCES, f"the old process refused the handoff: {reason}")
    if code == REFUSED_VERSION:
        return _VersionRefused(errno.EBADMSG, f"the old process refused the handoff: {reason}")
    return ProtocolError(errno.EBADMSG, f"the old process refused the handoff: {reason}")


def _ready_steps(version: int) -> Generator[_Step, Any, None]:
    """The successor's last step before items: READY out, DONE in."""
    yield from _say(READY, version=version)
    got = yield from _read_frame(_LOWEST, version)  # a refusal is of version 1
    if got is None:
        raise ConnectionAbortedError(
            errno.ECONNABORTED, "the old process closed the handoff without confirming "
            "ready(): it may still be serving")
    frame_version, kind, body, fds = got
    discard_all(fds)
    if kind == REFUSED:
        raise _refusal_error(body)
    if kind != DONE or body or frame_version != version:
        raise ProtocolError(errno.EBADMSG, f"expected DONE, got a {kind!r} frame")


# -- Version 2: moving items --------------------------------------------------

_D = TypeVar("_D", bound=Union[int, socket.socket])


class Item(Generic[_D]):
    """A live connection (or anything held by descriptors) to move to the
    successor: a name, 1..MAX_FDS descriptors (ints or socket.socket
    objects; the successor's are ints, its own) and the application's
    bytes to resume it with (at most MAX_STATE)."""

    def __init__(self, name: str, fds: Sequence[_D], state: bytes = b"") -> None:
        _check_name(name)
        if isinstance(fds, (str, bytes)) or not isinstance(fds, Sequence):
            raise TypeError(f"fds must be a sequence of descriptors, not {type(fds).__name__}")
        if not 1 <= len(fds) <= MAX_FDS:
            raise ValueError(f"an item holds 1..{MAX_FDS} descriptors, not {len(fds)}")
        for f in fds:
            _number(f)
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise TypeError(f"state must be bytes, not {type(state).__name__}")
        state = bytes(state)
        if len(state) > MAX_STATE:
            raise ValueError(f"an item's state is at most {MAX_STATE} bytes, not {len(state)}")
        self.name = name
        self.fds = list(fds)
        self.state = state

    def __repr__(self) -> str:
        return f"Item({self.name!r}, {self.fds!r}, <{len(self.state)} bytes>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Item):
            return NotImplemented
        return (self.name, self.fds, self.state) == (other.name, other.fds, other.state)

    __hash__ = None  # type: ignore[assignment]


def _number(f: object) -> int:
    """The open descriptor behind one of an Item's fds."""
    if isinstance(f, socket.socket):
        fd = f.fileno()
        if fd < 0:
            raise ValueError(f"a closed socket: {f!r}")
        return fd
    if not isinstance(f, int) or isinstance(f, bool):
        raise TypeError(f"an item's descriptors are ints or socket.socket, "
                        f"not {type(f).__name__}")
    if f < 0:
        raise ValueError(f"descriptor must be non-negative, got {f}")
    return f


class Moved(NamedTuple):
    """What a move() did: each item either taken (the successor's now, the
    old process's copies closed) or kept (still the old process's)."""
    taken: list[Item[Any]]
    kept: list[Item[Any]]


def _move_steps(version: int, batch: Sequence[tuple[int, Item[Any], list[int]]],
                taken: list[int]) -> Generator[_Step, Any, None]:
    """The old process's side of a batch: every ITEM out (prepare), then
    for each, in order, its ACK in and COMMIT out; an item's number goes
    into taken only once its COMMIT is sent whole (commit).  Raises
    ProtocolError for a bad acknowledgement, EOFError when the successor
    went away: what is not in taken is kept."""
    for number, item, fds in batch:
        name = item.name.encode("utf-8")
        body = _ITEM_HEAD.pack(number, len(name)) + name + item.state
        yield _Send(_frame(ITEM, body, version), fds)
    for number, item, _ in batch:
        got = yield from _read_frame(version, version)
        if got is None:
            raise EOFError(f"the successor went away before it acknowledged item #{number}")
        _, kind, body, fds = got
        if kind != ACK or body != _ITEM_NUMBER.pack(number) or fds:
            raise _unexpected(f"the ACK of item #{number}", got)
        yield _Send(_frame(COMMIT, body, version))
        taken.append(number)


class _Pending(NamedTuple):
    """An item received, not yet acknowledged: still the old process's."""
    number: int
    name: str
    fds: list[int]
    state: bytes


def _item_steps(version: int, pending: list[_Pending],
                number: int) -> Generator[_Step, Any, _Pending | None]:
    """The successor's side of one item, number: its ITEM in (unless it came
    ahead, in pending), ACK out, COMMIT in; returns it, the successor's
    now, or None when the old process has closed (an item acknowledged too
    late is then not ours: it stays in pending, to be closed)."""
    if not pending:
        got = yield from _read_frame(version, version)
        if got is None:
            return None
        pending.append(_parse_item(got, number))
    yield from _say(ACK, _ITEM_NUMBER.pack(number), version)
    while True:
        got = yield from _read_frame(version, version)
        if got is None:
            return None
        _, kind, body, fds = got
        if kind == ITEM and len(pending) < _BATCH_ITEMS:
            pending.append(_parse_item(got, number + len(pending)))
            continue
        if kind != COMMIT or body != _ITEM_NUMBER.pack(number) or fds:
            raise _unexpected(f"the COMMIT of item #{number}", got)
        return pending.pop(0)


def _unexpected(expected: str, frame: _Frame) -> ProtocolError:
    """The error for frame where expected should have come; its
    descriptors closed."""
    _, kind, body, fds = frame
    error = ProtocolError(errno.EBADMSG, f"expected {expected}, got a {kind!r} frame "
                                         f"({len(body)} bytes, {len(fds)} descriptors)")
    discard_all(fds)
    return error


def _parse_item(frame: _Frame, number: int) -> _Pending:
    """An ITEM frame's item, which must be number; else ProtocolError, its
    descriptors closed."""
    _, kind, body, fds = frame
    try:
        if kind != ITEM:
            raise ProtocolError(errno.EBADMSG, f"expected an ITEM frame, got {kind!r}")
        if len(body) < _ITEM_HEAD.size or _ITEM_NUMBER.unpack_from(body)[0] != number:
            raise ProtocolError(errno.EBADMSG, f"an ITEM frame that is not item #{number}")
        name, offset = _name_at(body, _ITEM_NUMBER.size, "ITEM")
        if not 1 <= len(fds) <= MAX_FDS:
            raise ProtocolError(errno.EBADMSG, f"item #{number} ({name!r}) came with "
                                               f"{len(fds)} descriptors")
        if len(body) - offset > MAX_STATE:
            raise ProtocolError(errno.EBADMSG, f"item #{number} ({name!r}) with "
                                               f"{len(body) - offset} bytes of state")
        return _Pending(number, name, fds, body[offset:])
    except BaseException:
        discard_all(fds)
        raise


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


def _check_timeout(timeout: float | None) -> float | None:
    """socket.settimeout's rules for every timeout of the handoff, checked
    before anything is done."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number, not {type(timeout).__name__}")
    if not timeout >= 0:  # NaN too
        raise ValueError(f"timeout must be None or a number >= 0, got {timeout!r}")
    return float(timeout)


def _deadline(timeout: float | None) -> float | None:
    timeout = _check_timeout(timeout)
    return None if timeout is None else time.monotonic() + timeout


def _settimeout(sock: socket.socket, deadline: float | None) -> None:
    """sock's timeout: what is left until deadline.  Once it has passed,
    0: each call still tries once without waiting, so that wait(0), called
    again and again, carries the conversation forward."""
    if deadline is None:
        sock.settimeout(None)
        return
    sock.settimeout(max(deadline - time.monotonic(), 0.0))


def _connect_pauses() -> Iterator[float]:
    """Seconds between connect attempts while a listener's backlog is full
    (EAGAIN on Linux, with no event to wait for): growing to a ceiling."""
    pause = 0.001
    while True:
        yield pause
        pause = min(2 * pause, _CONNECT_RETRY_MAX)


def _connect(sock: socket.socket, address: str | bytes, deadline: float | None) -> None:
    """Connect as a blocking connect would, within deadline: a full
    backlog makes it wait, not fail."""
    for pause in _connect_pauses():
        _settimeout(sock, deadline)
        try:
            sock.connect(address)
            return
        except _TIMEOUTS:
            break
        except BlockingIOError as error:
            left = None if deadline is None else deadline - time.monotonic()
            if error.errno != errno.EAGAIN or left is not None and left <= 0:
                break  # EINPROGRESS or EAGAIN with no time left
            time.sleep(pause if left is None else min(pause, left))
    raise TimeoutError(errno.ETIMEDOUT, "timed out connecting")


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
            except (*_TIMEOUTS, BlockingIOError):
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
            except BlockingIOError:  # no time was left: tried once
                raise TimeoutError(errno.ETIMEDOUT, "timed out receiving") from None
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
        _check_name(name)
        fd = _descriptor(name, sock)
        if fd < 0:
            raise ValueError(f"{name!r} is closed: {sock!r}")
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ValueError(f"{name!r} is not a socket: {sock!r}")
        offered.append((name, fd))
    return offered


def _check_name(name: object) -> None:
    """Names, of sockets and items, that fit the protocol."""
    if not isinstance(name, str):
        raise TypeError(f"names are str, not {type(name).__name__}")
    if not 0 < len(name.encode("utf-8")) <= _MAX_NAME:
        raise ValueError(f"names are str of 1..{_MAX_NAME} UTF-8 bytes, not {name!r}")


def _descriptor(name: str, sock: object) -> int:
    """The descriptor number behind an offered value; TypeError for what
    is neither a descriptor nor has fileno()."""
    fileno = getattr(sock, "fileno", None)
    fd = sock if isinstance(sock, int) and not isinstance(sock, bool) else (
        fileno() if callable(fileno) else None)
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"{name!r} must be a socket, a descriptor or an object with fileno() "
                        f"returning one, not {type(sock).__name__}")
    return fd


def _listen_at(path: str | bytes, sock_timeout: float | None) -> tuple[socket.socket, int]:
    """A stream socket listening at path, mode 0600, and its inode.  A stale socket file
    (nobody listening) is replaced; one in use raises OSError(EADDRINUSE),
    any other file FileExistsError.

    No link at path is ever followed (a chmod(path) after bind() would
    follow one swapped in meanwhile): the socket is bound, chmod-ed and
    listening in a private 0700 directory made beside path, where nobody
    else can reach it, and only then renamed to path, which replaces the
    name itself, whatever it is by then."""
    path = os.fsdecode(path)  # bytes or not, the same file
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            raise FileExistsError(errno.EEXIST, "not replacing a file that is no socket", path)
        if _in_use(path):
            raise OSError(errno.EADDRINUSE, "a process is listening there", path)
    # As path is: relative, or not (mkdtemp's is absolute from Python 3.12).
    private = os.path.join(os.path.dirname(path), os.path.basename(
        tempfile.mkdtemp(prefix=".fdpass-", dir=os.path.dirname(path))))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = "s"
    try:
        directory = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            made = os.fstat(directory)
            if made.st_uid != os.geteuid() or stat.S_IMODE(made.st_mode) & 0o077:
                raise PermissionError(errno.EPERM, "the private directory was replaced",
                                      private)
            listener.bind(_in_directory(directory, private, name))
            os.chmod(name, 0o600, dir_fd=directory)
            inode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_ino
            listener.listen(16)
            os.rename(name, path, src_dir_fd=directory)
        except BaseException:
            try:
                os.unlink(name, dir_fd=directory)
            except FileNotFoundError:
                pass
            raise
        finally:
            os.close(directory)
        listener.settimeout(sock_timeout)
        return listener, inode
    except BaseException:
        discard(listener, own=True)  # once at path, it may hold connections
        raise
    finally:
        os.rmdir(private)


def _in_directory(directory: int, private: str, name: str) -> str:
    """The address to bind name in the open directory: through
    /proc/self/fd where there is one, which holds the directory itself
    (and keeps the address short), else its path."""
    proc = f"/proc/self/fd/{directory}"
    return os.path.join(proc if os.path.isdir(proc) else private, name)


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
        if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool)):
            raise TypeError(f"uid must be an int or None, not {type(uid).__name__}")
        if uid is not None and uid < 0:
            raise ValueError(f"uid must be >= 0, not {uid}")
        self.uid = os.geteuid() if uid is None else uid
        #: Successors turned away, with why: (Credentials, reason).
        self.refused: list[tuple[Credentials, str]] = []
        self.path = os.fspath(path)
        self._listener: socket.socket | None = None
        self._listener, self._inode = _listen_at(self.path, sock_timeout)
        self._peer: tuple[socket.socket, FDChannel, _Conversation, Credentials] | None = None
        # Once wait() has returned, until close(): the successor's handoff
        # connection and version where it speaks 2, for move().
        self._waited = self._ended = False
        self._mover: tuple[socket.socket, FDChannel, int, Credentials] | None = None
        self._numbered = 0  # items sent so far, across moves

    @property
    def closed(self) -> bool:
        """Whether close() was called, or a successor took over."""
        return self._listener is None

    def listener(self) -> socket.socket:
        """The offer's listening socket (the drivers wait on it); ValueError
        once closed."""
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
        """The successor being served, with its channel, conversation and
        credentials; None between successors."""
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
        """Hang up on the successor being served, if any; the offer waits for
        the next one, having lost nothing."""
        if self._peer is not None:
            conn, channel, conversation, _ = self._peer
            self._peer = None
            _shut(conn)
            conversation.close()
            _hang_up(channel, conn)

    def finish(self) -> Credentials:
        """The successor said READY and has DONE: the offer stops
        listening, and keeps the connection for move() where the successor
        speaks version 2."""
        assert self._peer is not None
        conn, channel, conversation, who = self._peer
        self._peer = None
        version: int = conversation.result
        self._waited = True
        if version >= 2:
            self._mover = (conn, channel, version, who)
        else:
            _hang_up(channel, conn)
        self._stop_listening()
        return who

    def _moving(self, items: Sequence[Item[Any]]) -> _Move:
        """A move of items, checked before anything is touched."""
        if not self._waited or self._ended:
            raise ValueError("move() is for after wait() has returned, before close()")
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise TypeError(f"items must be a sequence of Item, not {type(items).__name__}")
        numbers: list[list[int]] = []
        for item in items:
            if not isinstance(item, Item):
                raise TypeError(f"move() takes Items, not {type(item).__name__}")
            numbers.append([_number(f) for f in item.fds])
        every = [fd for fds in numbers for fd in fds]
        if len(set(every)) != len(every):
            raise ValueError("a descriptor appears twice in the items moved")
        return _Move(self, list(items), numbers)

    def _moving_to(self) -> tuple[socket.socket, FDChannel, int, Credentials] | None:
        return self._mover

    def _next_number(self) -> int:
        """The next item's number: the successor expects them in order."""
        self._numbered += 1
        return self._numbered - 1

    def _stop_moving(self) -> None:
        """The successor gave up, broke the protocol or took too long: no
        more moves to it (a late acknowledgement is never read)."""
        mover, self._mover = self._mover, None
        if mover is not None:
            _shut(mover[0])  # a move waiting in another thread wakes
            _hang_up(mover[1], mover[0])

    def __del__(self) -> None:
        """An offer dropped after wait() without close() (code written for
        version 1) ends its moves, as close() would."""
        if getattr(self, "_mover", None) is not None:
            self._stop_moving()

    def close(self) -> None:
        """Stop listening, remove the path if it is still ours, and end a
        conversation in progress (that successor's ready() then fails) or
        the moves (its items() then ends).  A wait() in another thread
        wakes and raises ValueError."""
        self._ended = True
        self._stop_moving()
        self._stop_listening()

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        self.drop_peer()
        if listener is None:
            return
        _shut(listener)
        discard(listener, own=True)  # connections never accepted may hold descriptors
        try:
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"path={self.path!r}"
        return f"<{_qualified(self)} {state}, {self._count} sockets>"


class _Move:
    """One move(): its items sent batch by batch; what was taken.  Leaving
    it (with) closes the old process's copies of the taken items, and ends
    the moves if it was left by an exception (the stream may be half-way
    through a frame)."""

    def __init__(self, offer: _OfferState, items: list[Item[Any]],
                 numbers: list[list[int]]) -> None:
        self._offer = offer
        self._items = items
        self._numbers = numbers
        self._taken: list[int] = []  # the items' numbers, as the offer numbered them
        self._sent: dict[int, Item[Any]] = {}

    def batches(self) -> Iterator[tuple[socket.socket, FDChannel, _Conversation]]:
        """Each batch's conversation, while the successor takes them."""
        for first in range(0, len(self._items), _BATCH_ITEMS):
            mover = self._offer._moving_to()
            if mover is None:
                return
            conn, channel, version, _ = mover
            batch = [(self._offer._next_number(), item, fds) for item, fds in
                     zip(self._items[first:first + _BATCH_ITEMS],
                         self._numbers[first:first + _BATCH_ITEMS])]
            self._sent.update((number, item) for number, item, _ in batch)
            yield conn, channel, _Conversation(_move_steps(version, batch, self._taken))

    def failed(self, error: Exception) -> None:
        """A batch ended early: what was not acknowledged is kept.  A
        successor that broke the protocol is listed in the offer's refused."""
        mover = self._offer._moving_to()
        if mover is None:
            return  # close() from another thread ended the moves: the rest is kept
        if not isinstance(error, (OSError, EOFError)):
            raise error
        if isinstance(error, ProtocolError):
            self._offer.refused.append((mover[3], str(error)))
        self._offer._stop_moving()

    def moved(self) -> Moved:
        taken = [self._sent[number] for number in self._taken]
        took = {id(item) for item in taken}
        return Moved(taken, [item for item in self._items if id(item) not in took])

    def __enter__(self) -> _Move:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc_info: object) -> None:
        if kind is not None:
            self._offer._stop_moving()
        for number in self._taken:
            item = self._sent[number]
            for f in item.fds:
                discard(f, own=True)  # a socket.socket detached: fileno() -1, as close()


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
                except (socket.timeout, BlockingIOError):  # socket.timeout: TimeoutError from 3.10
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

    def move(self, items: Sequence[Item[Any]], timeout: float | None = None) -> Moved:
        """Move items (live connections and their state) to the successor
        wait() returned, in order, in batches: each is taken once the
        successor has acknowledged it (the copies here are then closed,
        sockets as close() closes them), or kept (the successor went away,
        broke the protocol, took longer than timeout seconds in all, or
        speaks version 1): still this process's.  A move cut short ends
        the moves: later ones keep everything.  ValueError before wait()
        has returned or after close(), with nothing touched."""
        deadline = _deadline(timeout)
        with self._moving(items) as moving:
            for conn, channel, conversation in moving.batches():
                try:
                    _run_blocking(conversation, channel, conn, deadline)
                except Exception as error:
                    moving.failed(error)
        return moving.moved()



class _TakeoverState:
    """What Takeover and fdpass.aio.AsyncTakeover share."""

    def __init__(self, conn: socket.socket, channel: FDChannel, predecessor: Credentials,
                 sockets: dict[str, socket.socket], timeout: float | None,
                 version: int) -> None:
        self._conn: socket.socket | None = conn
        self._channel = channel
        self.timeout = timeout
        #: The old process, as the kernel recorded it when it listened.
        self.predecessor = predecessor
        #: The sockets, by name: each owns its descriptor; the caller's.
        self.sockets = sockets
        #: The protocol version spoken with the old process.
        self.version = version
        self._readied = False
        # Items received ahead, not yet acknowledged (the old process's),
        # and the conversation for the next one, kept across timeouts.
        self._pending: list[_Pending] = []
        self._receiving: _Conversation | None = None
        self._number = 0

    def conversation(self) -> tuple[socket.socket, FDChannel, _Conversation]:
        """The connection, its channel and the steps of ready() (the drivers
        run them); ValueError once closed."""
        if self._conn is None:
            raise ValueError("the takeover is closed")
        return self._conn, self._channel, _Conversation(_ready_steps(self.version))

    def _was_ready(self, ok: bool) -> None:
        """ready() ended: with version 2 the connection stays, for items()."""
        self._readied = ok
        if not ok or self.version < 2:
            self.close()

    def _check_items(self) -> None:
        if not self._readied:
            raise ValueError("items() is for after ready() has returned")

    def _next_item(self) -> tuple[socket.socket, FDChannel, _Conversation] | None:
        """The conversation for the next item, or None: no more to come."""
        if self._conn is None:
            return None
        if self._receiving is None:
            self._receiving = _Conversation(
                _item_steps(self.version, self._pending, self._number))
        return self._conn, self._channel, self._receiving

    def _item_done(self, got: _Pending | None) -> Item[int] | None:
        """The next item, the caller's now; None when the old process has
        closed (anything it sent after is its own, and closed here)."""
        self._receiving = None
        if got is None:
            self.close()
            return None
        self._number += 1
        try:
            return Item(got.name, got.fds, got.state)
        except BaseException:
            discard_all(got.fds)
            raise

    def _item_failed(self, error: BaseException) -> bool:
        """A timeout while waiting for the old process leaves the next
        items() to wait on; anything else ends the moves.  True when they
        ended as at the end of the stream: the old process closed while an
        acknowledgement was on its way (a reset), so items() just ends."""
        receiving = self._receiving
        if isinstance(error, TimeoutError) and receiving is not None and isinstance(
                receiving.step, _Recv):
            return False
        self.close()
        return isinstance(error, ConnectionResetError)

    def __del__(self) -> None:
        """A takeover dropped after ready() without close() (code written
        for version 1) ends the handoff, as close() would."""
        if getattr(self, "_conn", None) is not None:
            self.close()

    def close(self) -> None:
        """End the handoff connection.  Before ready(), this tells the old
        process to carry on; after, that no more items are taken (those
        not yet yielded stay the old process's).  The sockets stay open:
        they are the caller's."""
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            receiving.close()
        for pending in self._pending:
            discard_all(pending.fds)
        self._pending.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            _shut(conn)  # an items() waiting in another thread wakes
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
        ok = False
        try:
            _run_blocking(conversation, channel, conn, _deadline(self.timeout))
            ok = True
        finally:
            conversation.close()
            self._was_ready(ok)

    def items(self, timeout: float | None = None) -> Iterator[Item[int]]:
        """The items the old process moves, in order, each acknowledged as
        it is yielded: its descriptors (close-on-exec) are then the
        caller's.  Ends when the old process closes its offer (or speaks
        version 1).  TimeoutError when the next item takes longer than
        timeout seconds; ProtocolError for a malformed frame, with every
        received descriptor closed.  ValueError before ready()."""
        timeout = _check_timeout(timeout)
        self._check_items()
        return self._items(timeout)

    def _items(self, timeout: float | None) -> Iterator[Item[int]]:
        while True:
            receiving = self._next_item()
            if receiving is None:
                return
            conn, channel, conversation = receiving
            try:
                got = _run_blocking(conversation, channel, conn, _deadline(timeout))
            except BaseException as error:
                if self._item_failed(error):
                    return
                raise
            item = self._item_done(got)
            if item is None:
                return
            yield item



def take(path: StrOrBytesPath, timeout: float | None = None) -> Takeover:
    """Connect to the offer at path and receive every named socket.  The
    Takeover's sockets are the caller's; ready() tells the old process it
    may stop, close() (or leaving with) without ready() that it carries
    on.  PermissionError when the offer refuses this uid; ProtocolError
    when the peer breaks the protocol or speaks another version;
    TimeoutError after timeout seconds for any one step."""
    deadline = _deadline(timeout)
    address = os.fspath(path)
    try:
        return _take(address, deadline, timeout, VERSION)
    except _VersionRefused:  # an old process that speaks version 1 only
        return _take(address, deadline, timeout, 1)


def _take(address: str | bytes, deadline: float | None, timeout: float | None,
          highest: int) -> Takeover:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        channel = FDChannel(conn, closefd=False)
        _connect(conn, address, deadline)
        predecessor = channel.peer_credentials()
        conversation = _Conversation(_take_steps(highest))
        try:
            version, received = _run_blocking(conversation, channel, conn, deadline)
        finally:
            conversation.close()  # its descriptors closed unless it returned them
        return Takeover(conn, channel, predecessor, _sockets_from(received), timeout, version)
    except BaseException:
        discard(conn, own=True)
        raise
