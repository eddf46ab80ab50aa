"""A hostile peer against every receive call, as a state machine.

The peer sends arbitrary payloads with 0..3 SCM_RIGHTS messages of 0..4
descriptors each, drawn from a pool of descriptors the test owns (regular
files, both ends of a pipe, a socket), while SO_PASSCRED and SO_PASSPIDFD
are toggled on the receiving socket and the receiver interleaves recv_fd,
recv_fds, recv_message, recv_file, recv_socket, the functional recv and
closing (and re-opening) the channel.  The oracle: every descriptor handed
out is one the peer sent in the message the model says comes next (by
fstat identity and access mode), every error is the one the contract
names, the socket holds exactly what the model says is still queued, and
/proc/self/fd holds nothing but what the test itself owns."""

from __future__ import annotations

import array
import errno
import fcntl
import io
import os
import socket
import tempfile
import termios
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Optional, TypeVar, Union

import pytest
from hypothesis import Phase, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test,
)

import fdpass
from fdpass import FDChannel, ProtocolError
from support import (
    SO_PASSCRED, SO_PASSPIDFD, close_all, open_fds, raw_send, release, wait_for_discards,
)

OPTIONS = {"SO_PASSCRED": SO_PASSCRED, "SO_PASSPIDFD": SO_PASSPIDFD}

#: At most this many messages wait in the socket: plenty for interleaving,
#: far below any socket buffer or in-flight limit.
MAX_QUEUED = 6

T = TypeVar("T")
Outcome = Union[T, Exception]
Identity = tuple[int, int, int]


@dataclass(frozen=True)
class Kind:
    """What a pool descriptor is, as far as recv_file and recv_socket care."""
    readable: bool
    writable: bool
    append: bool = False
    seekable: bool = True
    is_socket: bool = False


KINDS = {
    "file_rw": Kind(readable=True, writable=True),
    "file_ro": Kind(readable=True, writable=False),
    "file_append": Kind(readable=False, writable=True, append=True),
    "pipe_r": Kind(readable=True, writable=False, seekable=False),
    "pipe_w": Kind(readable=False, writable=True, seekable=False),
    "socket": Kind(readable=True, writable=True, seekable=False, is_socket=True),
}
NAMES = sorted(KINDS)
FILE_MODES: list[Optional[str]] = [None, "rb", "wb", "ab", "r+b", "r"]

#: A message: its payload and its SCM_RIGHTS control messages, each a list
#: of pool names.  Most messages carry none or exactly one descriptor, as
#: most receive calls want, and the rest anything up to 3 x 4.
Message = tuple[bytes, list[list[str]]]
MESSAGES: st.SearchStrategy[Message] = st.tuples(
    st.binary(min_size=1, max_size=12),
    st.one_of(
        st.sampled_from([[], [[]]]),
        st.sampled_from(NAMES).map(lambda name: [[name]]),
        st.lists(st.lists(st.sampled_from(NAMES), max_size=4), max_size=3),
    ))


def file_opens(kind: Kind, mode: Optional[str]) -> bool:
    """Whether recv_file(mode) succeeds on a descriptor of this kind, by the
    contract: mode None follows the access flags; a mode that reads or
    writes what the descriptor cannot, or an update mode ("+", which open()
    buffers with BufferedRandom) on a descriptor that cannot seek, raises
    ValueError (io.UnsupportedOperation is one), as open(fd, mode) does."""
    if mode is None:
        if not kind.writable:
            mode = "rb"
        else:
            mode = ("a" if kind.append else "r" if kind.readable else "w") + (
                "+b" if kind.readable else "b")
    reads = "r" in mode or "+" in mode
    writes = any(c in mode for c in "wax+")
    if (reads and not kind.readable) or (writes and not kind.writable):
        return False
    return "+" not in mode or kind.seekable


def identity(fd: int) -> Identity:
    """What a descriptor refers to: the file (pipe ends share one inode,
    so the access mode tells them apart)."""
    st_ = os.fstat(fd)
    return st_.st_dev, st_.st_ino, fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


def queued_bytes(sock: socket.socket) -> int:
    """SIOCINQ: all the bytes a stream or seqpacket socket holds, or the size
    of the next datagram."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
    return count[0]


def attempt(call: Callable[[], T]) -> Outcome[T]:
    try:
        return call()
    except Exception as exc:  # the outcome is checked against the model
        return exc


class Pool:
    """Descriptors the test owns and the peer sends: distinct files."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.others: list[int] = []
        try:
            for name, flags in [("file_rw", os.O_RDWR), ("file_ro", os.O_RDONLY),
                                ("file_append", os.O_WRONLY | os.O_APPEND)]:
                fd, path = tempfile.mkstemp(prefix="fdpass-stateful-")
                try:
                    self.fds[name] = os.open(path, flags | os.O_CLOEXEC)
                finally:
                    os.close(fd)
                    os.unlink(path)
            self.fds["pipe_r"], self.fds["pipe_w"] = os.pipe()
            a, b = socket.socketpair()
            self.fds["socket"] = a.detach()
            self.others.append(b.detach())
        except BaseException:
            self.close()
            raise
        self.names = {identity(fd): name for name, fd in self.fds.items()}
        assert len(self.names) == len(self.fds)

    def name_of(self, fd: int) -> str:
        """The pool name of what fd refers to, or what a stranger is."""
        try:
            return self.names[identity(fd)]
        except KeyError:
            return f"stranger {os.readlink(f'/proc/self/fd/{fd}')}"

    def close(self) -> None:
        close_all([*self.fds.values(), *self.others])
        self.fds.clear()
        self.others.clear()


@dataclass
class Sent:
    payload: bytes
    names: list[str]          # every descriptor of the message, in order
    tagged: bool              # the receiver had SO_PASSCRED or SO_PASSPIDFD when sent


class ReceivePath(RuleBasedStateMachine):
    SOCK_TYPE: ClassVar[int] = socket.SOCK_STREAM

    def __init__(self) -> None:
        super().__init__()
        self.stream = self.SOCK_TYPE == socket.SOCK_STREAM
        self.pool = Pool()
        self.peer, self.sock = socket.socketpair(socket.AF_UNIX, self.SOCK_TYPE)
        self.peer.settimeout(1.0)
        self.sock.settimeout(1.0)  # a model that is wrong fails, it never hangs
        self.channel = FDChannel(self.sock, closefd=False)
        self.options = {name: False for name in OPTIONS}
        self.queue: deque[Sent] = deque()
        assert wait_for_discards(30), "fdpass's closer thread is stuck"
        self.baseline = open_fds()

    def teardown(self) -> None:
        # What leaked has failed this example already (nothing_leaks): close
        # it, lest the examples after it run with a filling table.
        assert wait_for_discards(30), "fdpass's closer thread is stuck"
        close_all([fd for fd in open_fds() if fd not in self.baseline])
        self.channel.close()
        self.peer.close()
        self.sock.close()
        self.pool.close()

    # -- the peer ---------------------------------------------------------

    @precondition(lambda self: len(self.queue) < MAX_QUEUED)
    @rule(message=MESSAGES)
    def send(self, message: Message) -> None:
        payload, groups = message
        if self.stream:
            # Bytes of consecutive messages merge on a stream: one byte each
            # keeps every message boundary a byte boundary.
            payload = payload[:1]
        raw_send(self.peer, payload, *[[self.pool.fds[name] for name in g] for g in groups])
        self.queue.append(Sent(payload, [name for g in groups for name in g],
                               any(self.options.values())))

    @precondition(lambda self: len(self.queue) <= MAX_QUEUED - 3)
    @rule(messages=st.lists(MESSAGES, min_size=2, max_size=3))
    def send_several(self, messages: list[Message]) -> None:
        """Messages queued together, for reads that may take more than one."""
        for message in messages:
            self.send(message)

    @rule(option=st.sampled_from(sorted(OPTIONS)), on=st.booleans())
    def set_option(self, option: str, on: bool) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, OPTIONS[option], int(on))
        self.options[option] = on

    # -- the receiver -----------------------------------------------------

    @rule(wrap=st.sampled_from(["socket", "fileno"]))
    def reopen(self, wrap: str) -> None:
        """Close the channel and wrap the same socket again (its descriptor
        as a number: the channel then follows its O_NONBLOCK)."""
        self.channel.close()
        assert self.channel.closed
        self.channel = FDChannel(self.sock if wrap == "socket" else self.sock.fileno(),
                                 closefd=False)

    def next_message(self) -> Sent:
        sent = self.queue.popleft()
        note(f"next message: {sent.payload!r} with {sent.names}")
        return sent

    def stream_take(self, bufsize: int) -> list[Sent]:
        """The messages one recvmsg of bufsize bytes takes from a stream, as
        Linux reads them: whole one-byte messages, stopping after one that
        carried descriptors, and, while the receiver has SO_PASSCRED or
        SO_PASSPIDFD, before one whose credentials were recorded differently
        ("never glue messages from different writers")."""
        taken = [self.queue.popleft()]
        checking = any(self.options.values())
        while self.queue and len(taken) < bufsize and not taken[-1].names:
            if checking and self.queue[0].tagged != taken[0].tagged:
                break
            taken.append(self.queue.popleft())
        note(f"next messages: {[(s.payload, s.names) for s in taken]}")
        event(f"a stream read takes {len(taken)} messages")
        return taken

    def check_fds(self, call: str, fds: list[int], names: list[str]) -> None:
        got = [self.pool.name_of(fd) for fd in fds]
        inheritable = [fd for fd in fds if os.get_inheritable(fd)]
        close_all(fds)
        note(f"{call} returned {got}")
        event(f"{call.split('(')[0]}: {len(fds)} descriptors")
        assert got == names, f"{call} returned {got}, the peer sent {names}"
        assert not inheritable, f"{call} returned inheritable descriptors {inheritable}"

    def check_error(self, call: str, outcome: object, kind: type[Exception],
                    errnum: Optional[int] = None, why: str = "") -> None:
        note(f"{call} -> {outcome!r}")
        event(f"{call.split('(')[0]}: {kind.__name__}")
        if not isinstance(outcome, Exception):
            release(outcome)
        assert isinstance(outcome, kind), \
            f"{call} returned {outcome!r}, not {kind.__name__}{': ' if why else ''}{why}"
        if errnum is not None:
            assert isinstance(outcome, OSError) and outcome.errno == errnum, repr(outcome)

    def check_protocol_error(self, call: str, outcome: object, why: str) -> None:
        self.check_error(call, outcome, ProtocolError, errno.EBADMSG, why)

    def receive_one(self, call: str, receive: Callable[[], T]) -> Optional[tuple[str, Outcome[T]]]:
        """Call a receive that takes exactly one descriptor: None when the
        next message carried another number (its ProtocolError checked),
        else the pool name of the one sent and what the call gave."""
        sent = self.next_message()
        outcome = attempt(receive)
        if len(sent.names) != 1:
            self.check_protocol_error(call, outcome, f"{len(sent.names)} descriptors came")
            return None
        return sent.names[0], outcome

    def check_object(self, call: str, obj: Union[io.IOBase, socket.socket], name: str) -> None:
        """A file or socket object: it owns the descriptor that was sent."""
        with obj:
            got = self.pool.name_of(obj.fileno())
        note(f"{call} returned {obj!r} on {got}")
        event(f"{call.split('(')[0]}: {type(obj).__name__}")
        assert got == name, f"{call} returned {got}, the peer sent {name}"

    @precondition(lambda self: self.queue)
    @rule()
    def recv_fd(self) -> None:
        received = self.receive_one("recv_fd()", self.channel.recv_fd)
        if received is not None:
            name, outcome = received
            assert isinstance(outcome, int), f"recv_fd() -> {outcome!r}, expected {name}"
            self.check_fds("recv_fd()", [outcome], [name])

    @precondition(lambda self: self.queue)
    @rule(maxfds=st.sampled_from([1, 2, 3, 5, fdpass.MAX_FDS]))
    def recv_fds(self, maxfds: int) -> None:
        sent = self.next_message()
        call = f"recv_fds({maxfds})"
        outcome = attempt(lambda: self.channel.recv_fds(maxfds))
        if not 1 <= len(sent.names) <= maxfds:
            return self.check_protocol_error(call, outcome, f"{len(sent.names)} descriptors came")
        assert isinstance(outcome, list), f"{call} -> {outcome!r}, expected {sent.names}"
        self.check_fds(call, outcome, sent.names)

    @precondition(lambda self: self.queue)
    @rule(bufsize=st.integers(1, 16), maxfds=st.sampled_from([1, 2, 5, fdpass.MAX_FDS]))
    def recv_message(self, bufsize: int, maxfds: int) -> None:
        call = f"recv_message({bufsize}, {maxfds})"
        if self.stream:
            taken = self.stream_take(bufsize)
            payload, names = b"".join(s.payload for s in taken), taken[-1].names
            too_long = False
        else:
            sent = self.next_message()
            payload, names = sent.payload, sent.names
            # The contract: never cut short silently.
            too_long = len(payload) > bufsize
        outcome = attempt(lambda: self.channel.recv_message(bufsize, maxfds))
        if too_long:
            return self.check_protocol_error(
                call, outcome, f"a {len(payload)}-byte record is never cut short silently")
        if len(names) > maxfds:
            return self.check_protocol_error(call, outcome, f"{len(names)} descriptors came")
        assert isinstance(outcome, tuple), f"{call} -> {outcome!r}, expected {payload!r}, {names}"
        data, fds = outcome
        self.check_fds(call, fds, names)
        assert data == payload, f"{call} returned payload {data!r}, the peer sent {payload!r}"

    @precondition(lambda self: self.queue)
    @rule(mode=st.sampled_from(FILE_MODES))
    def recv_file(self, mode: Optional[str]) -> None:
        call = f"recv_file({mode!r})"
        encoding = "utf-8" if mode is not None and "b" not in mode else None
        received = self.receive_one(call, lambda: self.channel.recv_file(mode, encoding=encoding))
        if received is None:
            return
        name, outcome = received
        if not file_opens(KINDS[name], mode):
            return self.check_error(call, outcome, ValueError, why=f"{name} cannot be {mode!r}")
        assert isinstance(outcome, io.IOBase), f"{call} -> {outcome!r}, expected {name}"
        self.check_object(call, outcome, name)

    @precondition(lambda self: self.queue)
    @rule()
    def recv_socket(self) -> None:
        received = self.receive_one("recv_socket()", self.channel.recv_socket)
        if received is None:
            return
        name, outcome = received
        if not KINDS[name].is_socket:
            self.check_error("recv_socket()", outcome, OSError, errno.ENOTSOCK, f"{name} came")
            assert not isinstance(outcome, ProtocolError), repr(outcome)
            return
        assert isinstance(outcome, socket.socket), f"recv_socket() -> {outcome!r}"
        self.check_object("recv_socket()", outcome, name)

    @precondition(lambda self: self.queue)
    @rule()
    def functional_recv(self) -> None:
        sent = self.next_message()
        fd = fdpass.recv(self.sock.fileno())
        if len(sent.names) != 1:
            release(fd)
            note(f"fdpass.recv -> {fd}, errno {fdpass.get_errno()}")
            assert fd == -1, f"fdpass.recv returned {fd} for {sent.names}"
            assert fdpass.get_errno() == errno.EBADMSG, os.strerror(fdpass.get_errno())
            return
        assert fd >= 0, f"fdpass.recv failed: {os.strerror(fdpass.get_errno())}"
        self.check_fds("fdpass.recv()", [fd], sent.names)

    # -- what holds after every step -------------------------------------

    @invariant()
    def nothing_leaks(self) -> None:
        assert wait_for_discards(30), "fdpass's closer thread is stuck"
        now = open_fds()
        extra = {fd: what for fd, what in now.items() if self.baseline.get(fd) != what}
        missing = {fd: what for fd, what in self.baseline.items() if fd not in now}
        assert not extra and not missing, f"descriptors leaked {extra}, lost {missing}"

    @invariant()
    def channel_in_step(self) -> None:
        """The socket holds what the model says has not been received."""
        if self.SOCK_TYPE != socket.SOCK_DGRAM:
            expected = sum(len(s.payload) for s in self.queue)
        else:
            expected = len(self.queue[0].payload) if self.queue else 0
        assert queued_bytes(self.sock) == expected


class StreamReceivePath(ReceivePath):
    SOCK_TYPE = socket.SOCK_STREAM


class SeqpacketReceivePath(ReceivePath):
    SOCK_TYPE = socket.SOCK_SEQPACKET


class DgramReceivePath(ReceivePath):
    SOCK_TYPE = socket.SOCK_DGRAM


MACHINES: dict[str, type[ReceivePath]] = {
    "stream": StreamReceivePath,
    "seqpacket": SeqpacketReceivePath,
    "dgram": DgramReceivePath,
}


@pytest.mark.parametrize("kind", sorted(MACHINES))
def test_hostile_peer_against_every_receive_call(kind: str) -> None:
    # Untyped in the hypothesis that pip picks for Python 3.9 (6.141).
    run_state_machine_as_test(  # type: ignore[no-untyped-call, unused-ignore]
        MACHINES[kind], settings=settings(
            max_examples=100, stateful_step_count=40, deadline=None,
            # One bug at a time, unexplained: shrinking several, and explaining
            # them, costs minutes on a machine this size.
            report_multiple_bugs=False,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]))


def test_the_model_of_recv_file_modes() -> None:
    """file_opens, the oracle for recv_file, agrees with open(fd, mode) on
    the pool itself wherever the mode asks only what the access flags
    allow (open() does not check those: recv_file does)."""
    pool = Pool()
    try:
        for name, fd in pool.fds.items():
            kind = KINDS[name]
            for mode in FILE_MODES:
                if mode is None or ("r" in mode or "+" in mode) and not kind.readable \
                        or any(c in mode for c in "wax+") and not kind.writable:
                    continue
                try:
                    f = open(os.dup(fd), mode, encoding=None if "b" in mode else "utf-8")
                except ValueError:
                    opened = False
                else:
                    f.close()
                    opened = True
                assert opened == file_opens(kind, mode), (name, mode)
    finally:
        pool.close()
