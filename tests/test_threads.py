"""close() from another thread, and a socket closed behind the channel's
back: a call never touches the descriptor number again, since another file
may own it by then (a new connection, whose peer would get our messages)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fdpass import FDChannel
from support import raw_send, same_file

Outcome = list[BaseException]


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, Outcome]:
    """Run call in a thread; what it raised lands in the list."""
    raised: Outcome = []

    def run() -> None:
        try:
            call()
        except BaseException as error:  # noqa: B036 - reported to the test
            raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, raised


@pytest.fixture
def newcomer() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    """Makes socketpairs, as a server accepting new connections would: the
    first takes the lowest free descriptor number, the one a close freed."""
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        made.extend((a, b))
        return a, b

    yield make
    for sock in made:
        sock.close()


def assert_untouched(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(1)


@pytest.mark.parametrize("timeout", [None, 5.0])
@pytest.mark.parametrize("closefd", [True, False])
def test_close_wakes_a_waiting_receive_which_raises(
        timeout: float | None, closefd: bool,
        newcomer: Callable[[], tuple[socket.socket, socket.socket]]) -> None:
    a, b = socket.socketpair()
    a.settimeout(timeout)
    rx = FDChannel(a, closefd=closefd)
    waiter, raised = in_thread(rx.recv_fd)
    time.sleep(0.2)  # the call waits now
    rx.close()
    if not closefd:
        # Not the channel's to shut down: the call wakes when its socket
        # has something; it must not take it.
        b.send(b"\0")
    theirs, new = newcomer()
    start = time.monotonic()
    waiter.join(10)
    assert not waiter.is_alive()
    assert time.monotonic() - start < 2.0  # woken at once, not by its own timeout
    assert len(raised) == 1 and isinstance(raised[0], ValueError)
    assert "closed" in str(raised[0])
    assert_untouched(new)
    assert rx.closed and rx.fileno() == -1
    if closefd:
        assert a.fileno() == -1
    else:  # the woken call took nothing from the socket
        assert a.recv(1, socket.MSG_DONTWAIT) == b"\0"
    a.close()
    b.close()


def test_a_woken_call_never_uses_a_number_reused_since(
        newcomer: Callable[[], tuple[socket.socket, socket.socket]]) -> None:
    # The channel does not own the socket (closefd=False): close() cannot
    # wake the waiting call, and the owner closes the socket itself.  A new
    # connection takes the number; then the old socket wakes the call.
    a, b = socket.socketpair()
    a.settimeout(10)
    rx = FDChannel(a, closefd=False)
    waiter, raised = in_thread(rx.recv_fd)
    time.sleep(0.2)
    rx.close()
    number = a.fileno()
    a.close()
    theirs, new = newcomer()
    assert theirs.fileno() == number  # the new connection has the number
    raw_send(new, b"\0", [0])  # a message for the new connection
    b.send(b"\0")  # wakes the old call
    waiter.join(10)
    assert len(raised) == 1 and isinstance(raised[0], ValueError)
    theirs.settimeout(5)  # fail, not hang, if the old call took it
    with FDChannel(theirs, closefd=False) as ch:
        got = ch.recv_fd()  # still there: the old call did not take it
        assert same_file(got, 0)
        os.close(got)
    b.close()


def test_close_wakes_a_send_waiting_for_room() -> None:
    a, b = socket.socketpair()
    with b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tx = FDChannel(a)
        waiter, raised = in_thread(lambda: tx.send_fds([0], b"x" * (1 << 22)))
        time.sleep(0.2)
        tx.close()
        waiter.join(10)
        assert not waiter.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], ValueError)
        assert a.fileno() == -1


@pytest.mark.parametrize("wrap", ["socket", "object"])
def test_a_socket_closed_behind_the_channel(
        wrap: str, newcomer: Callable[[], tuple[socket.socket, socket.socket]]) -> None:
    a, b = socket.socketpair()
    number = a.fileno()

    class Wrapper:
        def fileno(self) -> int:
            return a.fileno()

    with b:
        ch = FDChannel(a if wrap == "socket" else Wrapper(), closefd=False)
        a.close()
        theirs, new = newcomer()
        reused = theirs if theirs.fileno() == number else new
        assert reused.fileno() == number  # the number is another socket's now
        assert ch.closed and ch.fileno() == -1
        assert repr(ch) == "<fdpass.FDChannel [closed]>"
        with pytest.raises(ValueError, match="closed channel"):
            ch.send_fd(0)
        with pytest.raises(ValueError, match="closed channel"):
            ch.recv_fd()
        assert_untouched(theirs if reused is new else new)
        ch.close()


def test_shutdown_wakes_the_peer(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    with FDChannel(a, closefd=False) as tx, FDChannel(b, closefd=False) as rx:
        waiter, raised = in_thread(rx.recv_fd)
        time.sleep(0.1)
        tx.shutdown(socket.SHUT_WR)
        waiter.join(10)
        assert len(raised) == 1 and isinstance(raised[0], EOFError)
        r, w = os.pipe()
        try:
            rx.send_fd(r)  # the other direction still works
            got = tx.recv_fd()
            assert same_file(got, r)
            os.close(got)
        finally:
            os.close(r)
            os.close(w)
        with pytest.raises(OSError):
            tx.shutdown(99)
