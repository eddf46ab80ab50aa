"""A receiver whose descriptor table is full: with 0, 1 or 2 free slots
below RLIMIT_NOFILE, for 1..8 descriptors in a message, on every receive
call, with and without SO_PASSPIDFD (whose pidfd wants a slot too): the
right error, the channel stays in step, nothing leaks.

The kernel installs a message's SCM_RIGHTS descriptors first, lowest free
numbers first, and stops at EMFILE with MSG_CTRUNC; the pidfd comes after
them and, when no slot is left, the kernel puts -EMFILE in its place
without MSG_CTRUNC: the descriptors did all arrive."""

from __future__ import annotations

import errno
import itertools
import os
import resource
import socket
import tempfile
from collections.abc import Iterator

import pytest

import fdpass
from fdpass import FDChannel, ProtocolError
from support import (
    SO_PASSCRED, SO_PASSPIDFD, open_fds, raw_send, received_fds, release, same_file,
    wait_for_discards,
)

OPTIONS = {
    "plain": (),
    "passpidfd": (SO_PASSPIDFD,),
    "passcred+passpidfd": (SO_PASSCRED, SO_PASSPIDFD),
}
#: Each receive call and the most descriptors it takes from one message.
CALLS = {
    "recv_fd": 1,
    "recv_fds": fdpass.MAX_FDS,
    "recv_message": fdpass.MAX_FDS,
    "recv_file": 1,
    "recv_socket": 1,
    "fdpass.recv": 1,
}


def limit_leaving(free: int) -> int:
    """The RLIMIT_NOFILE soft limit under which exactly `free` descriptor
    numbers are unused: the kernel hands out the lowest unused number,
    and only numbers below the limit."""
    used = set(open_fds())
    unused = (n for n in itertools.count() if n not in used)
    return next(itertools.islice(unused, free, None))


def receive(call: str, rx: FDChannel) -> object:
    if call == "recv_fd":
        return rx.recv_fd()
    if call == "recv_fds":
        return rx.recv_fds()
    if call == "recv_message":
        return rx.recv_message(16)
    if call == "recv_file":
        return rx.recv_file()
    if call == "recv_socket":
        return rx.recv_socket()
    return fdpass.recv(rx.fileno())


@pytest.fixture
def regular_file() -> Iterator[int]:
    with tempfile.TemporaryFile() as f:
        yield f.fileno()


@pytest.fixture
def a_socket() -> Iterator[int]:
    a, b = socket.socketpair()
    with a, b:
        yield a.fileno()


def receive_under_limit(rx: FDChannel, call: str, free: int) -> tuple[object, int]:
    """call's outcome (what it returned, or raised) with exactly `free`
    descriptor slots, and fdpass.get_errno() right after it.  Nothing but
    the call itself runs under the lowered limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = limit_leaving(free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        try:
            outcome: object = receive(call, rx)
        except Exception as exc:  # checked by the caller, with the limit restored
            outcome = exc
        return outcome, fdpass.get_errno()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def check_outcome(where: str, call: str, outcome: object, last_errno: int, free: int,
                  count: int, sent: int) -> None:
    maxfds = CALLS[call]
    if count <= free and count <= maxfds:
        # Every descriptor found a slot (a pidfd that did not is no loss).
        assert not isinstance(outcome, Exception), f"{where}: raised {outcome!r}"
        fds = received_fds(outcome)
        try:
            assert len(fds) == count and all(same_file(fd, sent) for fd in fds), \
                f"{where}: returned {outcome!r}"
        finally:
            release(outcome)
    elif call == "fdpass.recv":
        release(outcome)
        assert outcome == -1, f"{where}: returned {outcome!r}"
        assert last_errno == errno.EBADMSG, f"{where}: errno {os.strerror(last_errno)}"
    else:
        if not isinstance(outcome, Exception):
            release(outcome)
        assert isinstance(outcome, ProtocolError), f"{where}: gave {outcome!r}"
        assert outcome.errno == errno.EBADMSG
        if free == 0 or count <= maxfds:
            # Descriptors were lost to the limit, and nothing else went wrong.
            assert "RLIMIT_NOFILE" in str(outcome), f"{where}: {outcome}"


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("call", list(CALLS))
def test_receive_with_a_full_descriptor_table(
        sockets: tuple[socket.socket, socket.socket], regular_file: int, a_socket: int,
        pipe: tuple[int, int], call: str, options: str) -> None:
    """With 0, 1 and 2 free slots, for 1, 2, 3 and 8 descriptors (one test
    for all twelve: the leak check around each test costs more than they)."""
    peer, sock = sockets
    for option in OPTIONS[options]:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
    sent = a_socket if call == "recv_socket" else regular_file
    marker = pipe[1]
    with FDChannel(sock, closefd=False) as rx:
        for free, count in itertools.product([0, 1, 2], [1, 2, 3, 8]):
            where = f"{call} with {free} free slots, {count} descriptors"
            assert wait_for_discards(30), "fdpass's closer thread is stuck"
            before = open_fds()
            raw_send(peer, b"\0", [sent] * count)
            raw_send(peer, b"\0", [marker])
            outcome, last_errno = receive_under_limit(rx, call, free)
            check_outcome(where, call, outcome, last_errno, free, count, sent)
            fd = rx.recv_fd()  # the next message, whole: the channel is in step
            try:
                assert same_file(fd, marker), f"{where}: the next message is out of step"
            finally:
                os.close(fd)
            assert wait_for_discards(30), "fdpass's closer thread is stuck"
            after = open_fds()
            assert after == before, f"{where}: leaked " + repr(
                {fd: what for fd, what in after.items() if before.get(fd) != what})
