"""A descriptor fdpass discards may be one whose last close blocks (here a
TCP socket with SO_LINGER and unsent data, as a hostile peer would attach):
a received one is refused, so closed without lingering, on the closer; a
close that does block (a lingering socket queued in one of the caller's own
sockets) happens on the closer too, so no receive waits for it, no thread
waits for the GIL, and no event loop stops."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import fdpass
from fdpass import FDChannel, ProtocolError
from fdpass import aio
from fdpass.aio import AsyncFDChannel
from support import (
    LINGER, PACKAGE_ROOT, Lingering, attach_lingering as attach, needs_defused_queues, open_fds,
    raw_send,
    same_file,
)

PROMPT = 1.0    # a receive that waited for the close would take LINGER


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


@pytest.mark.parametrize("wrapped", ["number", "socket"])
def test_closing_a_channel_with_a_queued_lingering_socket_does_not_wait(
        stream: tuple[socket.socket, socket.socket],
        lingering: Callable[[], Lingering], wrapped: str) -> None:
    # The socket's queue holds the lingering socket: the last close of the
    # channel's socket closes it too.  Its linger is turned off first.
    needs_defused_queues()
    peer, mine = stream
    held = lingering()
    attach(peer, held, b"\0", [])
    channel = FDChannel(mine.detach() if wrapped == "number" else mine)
    assert timed(channel.close) < PROMPT
    assert held.reset_seen(PROMPT)


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


def test_a_receive_during_which_the_kernel_discards_stops_no_other_thread(
        stream: tuple[socket.socket, socket.socket],
        lingering: Callable[[], Lingering]) -> None:
    # At RLIMIT_NOFILE the kernel itself drops what it cannot install, and
    # the last close of the lingering socket happens in the receiving thread,
    # on its way out of recvmsg: that thread waits, holding no GIL.
    peer, mine = stream
    gaps: list[float] = []
    done = threading.Event()

    def tick() -> None:
        last = time.monotonic()
        while not done.wait(0.01):
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    with FDChannel(mine, closefd=False) as rx:
        attach(peer, lingering(), b"\0", [])
        ticker = threading.Thread(target=tick)
        ticker.start()
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = min(set(range(len(open_fds()) + 2)) - set(open_fds()))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, limit[1]))
        try:
            start = time.monotonic()
            with pytest.raises(ProtocolError, match="RLIMIT_NOFILE"):
                rx.recv_fd()
            took = time.monotonic() - start
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            done.set()
            ticker.join()
    assert took > LINGER - 1, "the kernel's own close lingered in this thread"
    assert max(gaps) < 0.5, f"another thread stopped for {max(gaps):.2f} s"


@pytest.mark.parametrize("at_the_limit", [False, True], ids=["room", "at-the-limit"])
@pytest.mark.parametrize("mode", [None, "r+b", "a+", "rb+"])
def test_a_file_object_that_cannot_be_made_is_discarded_without_waiting(
        sockets: tuple[socket.socket, socket.socket], lingering: Callable[[], Lingering],
        mode: str | None, at_the_limit: bool) -> None:
    # A socket is read-write: recv_file() makes "r+b" of it, which needs a
    # seekable descriptor.  At the limit the received socket takes the last
    # free number: no second reference to it could be made, so it must be
    # refused before a file object owns it.
    peer, mine = sockets
    with FDChannel(mine, closefd=False) as rx:
        held = lingering()
        attach(peer, held, b"\0", [])
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)
        if at_the_limit:
            lowest_free = min(set(range(len(open_fds()) + 2)) - set(open_fds()))
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + 1, limit[1]))
        try:
            start = time.monotonic()
            with pytest.raises(OSError, match="not seekable"):
                rx.recv_file(mode)
            took = time.monotonic() - start
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
        assert took < PROMPT
        assert_refused_at_once(held)


#: In development mode TextIOWrapper refuses an unknown error handler, which
#: recv_file() cannot check beforehand: the text layer fails over a buffer.
#: Prints what open() raises, then what recv_file() raises and how long it took.
TEXT_LAYER_FAILS = """
import os, sys, time
import fdpass
rx = fdpass.FDChannel(int(sys.argv[1]))
try:
    open(os.open(os.devnull, os.O_RDONLY), "r", errors="bogus")
except Exception as error:
    print(type(error).__name__)
start = time.monotonic()
try:
    rx.recv_file("r", errors="bogus")
except Exception as error:
    print(type(error).__name__)
print(time.monotonic() - start)
"""


def test_a_text_layer_that_fails_is_discarded_without_waiting(
        sockets: tuple[socket.socket, socket.socket], lingering: Callable[[], Lingering]) -> None:
    # The buffer under the failed text layer must not close the file first:
    # that close would be the last, in the caller's thread, and drop_file()
    # would then meet a closed file (ValueError) where open() raises its error.
    peer, mine = sockets
    held = lingering()
    attach(peer, held, b"\0", [])
    child = subprocess.run(
        [sys.executable, "-X", "dev", "-c", TEXT_LAYER_FAILS, str(mine.fileno())],
        capture_output=True, text=True, timeout=60, cwd=PACKAGE_ROOT, pass_fds=(mine.fileno(),))
    assert child.returncode == 0, child.stderr
    opens, ours, took = child.stdout.split()
    assert ours == opens
    assert float(took) < PROMPT
    assert held.reset_seen(PROMPT)
