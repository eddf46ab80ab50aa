"""A descriptor fdpass discards may be one whose last close blocks (here a
TCP socket with SO_LINGER and unsent data, as a hostile peer would attach):
a received one is refused, so closed without lingering, on the closer; a
close that does block (a lingering socket queued in one of the caller's own
sockets) happens on the closer too, so no receive waits for it, no thread
waits for the GIL, and no event loop stops."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fdpass
from fdpass import FDChannel, ProtocolError
from fdpass import aio
from fdpass.aio import AsyncFDChannel
from support import Lingering, raw_send, same_file

LINGER = 3      # seconds the discarded socket's close would take
PROMPT = 1.0    # a receive that waited for it would take LINGER


@pytest.fixture
def lingering() -> Iterator[Callable[[], Lingering]]:
    """Makes lingering sockets; closes their reading ends at the end, so
    that a close still waiting ends then."""
    made: list[Lingering] = []

    def make() -> Lingering:
        made.append(Lingering(LINGER))
        return made[-1]

    try:
        yield make
    finally:
        for held in made:
            held.close()


def attach(peer: socket.socket, held: Lingering, data: bytes, *groups: list[int]) -> None:
    """Send groups of descriptors with the lingering socket last, then drop
    this copy of it: the receiver's copy is the last, its close the slow one."""
    raw_send(peer, data, *groups[:-1], [*groups[-1], held.sock.fileno()])
    held.sock.close()


def timed(call: Callable[[], object]) -> float:
    start = time.monotonic()
    try:
        call()
    except (ProtocolError, ValueError):
        pass
    return time.monotonic() - start


def assert_closing_off_thread() -> None:
    """The discarded socket is closing on the closer thread, and its close
    does block: it has not finished yet."""
    assert not fdpass.wait_for_discards(0.2)


def assert_refused_at_once(held: Lingering) -> None:
    """The received lingering socket was closed without lingering: at once,
    and its peer sees a reset, not an orderly end."""
    assert fdpass.wait_for_discards(PROMPT)
    assert held.reset_seen(PROMPT)


RECEIVES: dict[str, Callable[[FDChannel], object]] = {
    "recv_fd": lambda ch: ch.recv_fd(),
    "recv_fds": lambda ch: ch.recv_fds(1),
    "recv_message": lambda ch: ch.recv_message(16, 1),
    "recv_file": lambda ch: ch.recv_file(),
    "recv_socket": lambda ch: ch.recv_socket(),
    "fdpass.recv": lambda ch: fdpass.recv(ch.fileno()),
}


@pytest.mark.parametrize("before", [1, 40], ids=["second", "beyond-a-small-buffer"])
@pytest.mark.parametrize("call", sorted(RECEIVES))
def test_an_extra_descriptor_is_discarded_without_waiting(
        sockets: tuple[socket.socket, socket.socket], lingering: Callable[[], Lingering],
        call: str, before: int) -> None:
    # With 40 before it, a control buffer sized for the call would have the
    # kernel drop it inside recvmsg, in this thread, holding the GIL.
    peer, mine = sockets
    with FDChannel(mine, closefd=False) as rx:
        held = lingering()
        attach(peer, held, b"\0", [0] * before)
        assert timed(lambda: RECEIVES[call](rx)) < PROMPT
        assert_refused_at_once(held)
        raw_send(peer, b"\0", [1])  # and the channel is in step
        got = rx.recv_fd()
        assert same_file(got, 1)
        os.close(got)


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_a_record_too_long_is_discarded_without_waiting(
        lingering: Callable[[], Lingering], kind: int) -> None:
    peer, mine = socket.socketpair(socket.AF_UNIX, kind)
    with peer, mine, FDChannel(mine, closefd=False) as rx:
        held = lingering()
        attach(peer, held, b"longer than bufsize", [])
        assert timed(lambda: rx.recv_message(4)) < PROMPT
        assert_refused_at_once(held)


def test_closing_a_channel_with_a_queued_descriptor_keeps_the_gil_free(
        stream: tuple[socket.socket, socket.socket],
        lingering: Callable[[], Lingering]) -> None:
    # The socket's queue holds the lingering socket: the last close of the
    # channel's socket closes it too.  That close waits, but without the GIL.
    peer, mine = stream
    fd = mine.detach()
    held = lingering()
    attach(peer, held, b"\0", [])
    ticks = 0
    done = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not done.wait(0.01):
            ticks += 1

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        closer = threading.Timer(0.5, held.peer.close)  # then the close ends
        closer.start()
        FDChannel(fd).close()
        closer.join()
    finally:
        done.set()
        ticker.join()
    assert ticks >= 20


def test_the_event_loop_runs_on_while_discards_close(
        lingering: Callable[[], Lingering]) -> None:
    async def main() -> float:
        a, b = AsyncFDChannel.pair()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        try:
            async with a, b:
                attach(a._sock, lingering(), b"\0", [0])
                start = time.monotonic()
                with pytest.raises(ProtocolError):
                    await b.recv_fd()
                # The queue of b's socket holds another; closing b closes it.
                attach(a._sock, lingering(), b"\0", [0])
            elapsed = time.monotonic() - start
            await asyncio.sleep(0.2)
        finally:
            ticker.cancel()
        assert ticks >= 10
        return elapsed

    assert asyncio.run(main()) < PROMPT


def test_closing_a_server_with_an_unaccepted_connection_stalls_nothing(
        tmp_path: Path, lingering: Callable[[], Lingering]) -> None:
    # A connection the server never accepted holds a lingering socket in its
    # queue: closing the listener closes that too, on the closer thread.
    path = tmp_path / "s"

    async def main() -> float:
        server = await aio.start_server(lambda channel: channel.recv_fd(), path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # in the backlog, never accepted
            attach(client, lingering(), b"\0", [])
            start = time.monotonic()
            server.close()
            elapsed = time.monotonic() - start
            await server.wait_closed()
        return elapsed

    assert asyncio.run(main()) < PROMPT
    assert_closing_off_thread()
