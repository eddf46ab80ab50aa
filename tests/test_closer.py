"""The closer, the package's one discard path: a pool that grows only while
closes block, never beyond fdpass._engine.CLOSERS threads, and is gone when
nothing is being discarded."""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections.abc import Callable

import pytest

import fdpass
from fdpass._engine import CLOSERS, closer_state, discard
from support import Lingering, needs_defused_queues, raw_send, same_file, thread_count

LINGER = 30  # seconds a blocked close would last: the tests end it sooner


@pytest.fixture
def blocking(lingering: Callable[..., Lingering]) -> Callable[[], Lingering]:
    """Makes sockets whose close blocks (the caller's own: the closer closes
    them as set up) for LINGER s, unless the test ends first."""
    return lambda: lingering(LINGER)


def assert_closed_without_lingering(held: list[Lingering], drop: Callable[[], None]) -> None:
    """drop() discards the lingering sockets held (or what holds them): they
    are closed at once, and abortively."""
    start = time.monotonic()
    drop()
    assert fdpass.wait_for_discards(2)
    assert time.monotonic() - start < 2
    assert all(h.reset_seen(2) for h in held)


def eof_after(discarded_end: int, other_end: int, timeout: float) -> float | None:
    """Discard one end of a pipe; seconds until the other end reads EOF."""
    start = time.monotonic()
    discard(discarded_end)
    ready, _, _ = select.select([other_end], [], [], timeout)
    if not ready:
        return None
    assert os.read(other_end, 1) == b""
    return time.monotonic() - start


def test_the_bound_is_at_least_eight() -> None:
    assert CLOSERS >= 8


def test_no_thread_while_nothing_is_discarded() -> None:
    before = thread_count()
    r, w = os.pipe()
    discard(w)
    discard(r)
    assert fdpass.wait_for_discards(5)
    assert closer_state() == (0, 0, 0)
    assert thread_count() == before


def test_idle_threads_leave_by_themselves() -> None:
    before = thread_count()
    for _ in range(20):
        r, w = os.pipe()
        discard(w)
        discard(r)
    deadline = time.monotonic() + 2
    while (closer_state()[0] or thread_count() > before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closer_state() == (0, 0, 0)
    assert thread_count() == before


def test_a_close_that_blocks_holds_up_only_itself(blocking: Callable[[], Lingering]) -> None:
    # CLOSERS - 1 closes blocked at once: every other discard still closes
    # within 100 ms, and the pool stays within its bound.
    for _ in range(CLOSERS - 1):
        discard(blocking().sock, own=True)
    deadline = time.monotonic() + 5
    while closer_state()[1] < CLOSERS - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closer_state()[1] == CLOSERS - 1, "the closes did block"
    for _ in range(20):
        r, w = os.pipe()
        took = eof_after(w, r, 1.0)
        os.close(r)
        assert took is not None and took < 0.1, took
        assert closer_state()[0] <= CLOSERS


def test_past_the_bound_discards_queue_until_a_close_ends(
        blocking: Callable[[], Lingering]) -> None:
    held = [blocking() for _ in range(CLOSERS)]
    for h in held:
        discard(h.sock, own=True)
    deadline = time.monotonic() + 5
    while closer_state()[1] < CLOSERS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closer_state()[:2] == (CLOSERS, CLOSERS)
    r, w = os.pipe()
    try:
        assert eof_after(w, r, 0.3) is None, "queued behind the bound"
        assert closer_state() == (CLOSERS, CLOSERS, 1)
        held[0].peer.close()  # one close ends: the queued discard is closed
        ready, _, _ = select.select([r], [], [], 5)
        assert ready and os.read(r, 1) == b""
    finally:
        os.close(r)


def test_a_received_lingering_socket_never_occupies_a_thread(
        blocking: Callable[[], Lingering]) -> None:
    # The library refuses what it receives: whatever linger its sender set,
    # it is closed without lingering, so none piles up.
    held = [blocking() for _ in range(2 * CLOSERS)]

    def drop() -> None:
        for h in held:
            discard(h.sock.detach())

    assert_closed_without_lingering(held, drop)


def test_a_discarded_socket_object_is_detached() -> None:
    a, b = socket.socketpair()
    with b:
        discard(a, own=True)
        assert a.fileno() == -1
        assert fdpass.wait_for_discards(5)
        assert b.recv(1) == b""


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_wait_for_discards_refuses_a_negative_timeout(value: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        fdpass.wait_for_discards(value)


def test_an_own_sockets_queue_cannot_make_its_close_linger(
        blocking: Callable[[], Lingering]) -> None:
    # A peer's lingering socket, in flight in the queue of one of the
    # caller's AF_UNIX sockets, would be closed with it (and block): the
    # closer turns its linger off first, through a peeked copy.
    needs_defused_queues()
    held = [blocking() for _ in range(3)]
    a, b = socket.socketpair()
    with a:
        for h in held:
            raw_send(a, b"\0", [h.sock.fileno()])
            h.sock.close()
        assert_closed_without_lingering(held, lambda: discard(b, own=True))


def test_a_shared_sockets_queue_is_left_whole() -> None:
    # Defusing only peeks: another holder of the socket still reads every
    # message, descriptors included.
    a, b = socket.socketpair()
    other = b.dup()
    r, w = os.pipe()
    try:
        with a, other:
            raw_send(a, b"one", [r])
            raw_send(a, b"two", [w])
            discard(b, own=True)
            assert fdpass.wait_for_discards(5)
            rx = fdpass.FDChannel(other, closefd=False)
            for expected, fd in ((b"one", r), (b"two", w)):
                data, fds = rx.recv_message(3)
                assert data == expected and len(fds) == 1 and same_file(fds[0], fd)
                os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_a_signal_handler_runs_while_wait_for_discards_waits(
        blocking: Callable[[], Lingering]) -> None:
    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    discard(blocking().sock, own=True)  # a close that blocks for LINGER s
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            fdpass.wait_for_discards()
        assert time.monotonic() - start < 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
