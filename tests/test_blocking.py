"""Waiting: timeouts as the socket module has them, signals (PEP 475),
threads, and SIGPIPE."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Callable

import pytest

from fdpass import FDChannel
from support import run_python, same_file

Pair = tuple[FDChannel, FDChannel]


def later(delay: float, action: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


def test_timeout_zero_raises_blocking_io_error(channels: Pair) -> None:
    _, rx = channels
    rx.settimeout(0)
    for call in (rx.recv_fd, rx.recv_fds, lambda: rx.recv_message(1)):
        with pytest.raises(BlockingIOError):
            call()


def test_timeout_raises_timeout_error_after_the_timeout(channels: Pair) -> None:
    _, rx = channels
    rx.settimeout(0.2)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        rx.recv_fd()
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 5


def test_socket_timeout_waits_with_poll_not_eagain(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    b.settimeout(10)  # non-blocking underneath: an instant EAGAIN would be wrong
    with FDChannel(a, closefd=False) as tx, FDChannel(b, closefd=False) as rx:
        timer = later(0.1, lambda: tx.send_fd(0))
        fd = rx.recv_fd()
        timer.join()
        assert same_file(fd, 0)
        os.close(fd)


def test_socket_timeout_set_after_wrapping_applies(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    with FDChannel(b, closefd=False) as rx:
        b.settimeout(0.1)
        with pytest.raises(TimeoutError):
            rx.recv_fd()


def test_descriptor_channel_timeout_leaves_the_descriptor_blocking(
        stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    with FDChannel(b.fileno(), closefd=False) as rx:
        rx.settimeout(0.05)
        with pytest.raises(TimeoutError):
            rx.recv_fd()
    assert b.getblocking()


def test_send_timeout_on_a_full_socket(stream: tuple[socket.socket, socket.socket]) -> None:
    a, _ = stream
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with FDChannel(a, closefd=False) as tx:
        tx.settimeout(0.1)
        with pytest.raises(TimeoutError):
            for _ in range(100000):
                tx.send_fds([0], data=b"x" * 1024)


def test_a_partly_sent_payload_reports_how_much_went(
        stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 1024
    with FDChannel(a, closefd=False) as tx, FDChannel(b, closefd=False) as rx:
        tx.settimeout(0)
        with pytest.raises(BlockingIOError) as info:
            tx.send_fds([0], payload)
        written = info.value.characters_written
        assert 0 < written < len(payload)
        data, fds = rx.recv_message(len(payload))
        assert payload.startswith(data) and len(fds) == 1
        os.close(fds[0])
        with pytest.raises(BlockingIOError) as info:  # nothing went: 0 written
            for _ in range(100000):
                tx.send_fd(0)
        assert info.value.characters_written == 0
        b.setblocking(False)
        while True:  # the rest of the payload, then whole one-byte messages
            try:
                data += b.recv(len(payload))
            except BlockingIOError:
                break
        assert data[:written] == payload[:written]


@pytest.fixture
def alarm() -> Iterator[Callable[[Callable[[int, FrameType | None], object]], None]]:
    """Install a SIGALRM handler firing every 50 ms; restored afterwards."""
    previous = signal.getsignal(signal.SIGALRM)

    def start(handler: Callable[[int, FrameType | None], object]) -> None:
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)

    yield start
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    signal.signal(signal.SIGALRM, previous)


def test_signals_that_return_do_not_stop_a_blocking_recv(
        channels: Pair, alarm: Callable[[Callable[[int, FrameType | None], object]], None]) -> None:
    tx, rx = channels
    ticks = []
    alarm(lambda signum, frame: ticks.append(signum))
    timer = later(0.5, lambda: tx.send_fd(0))
    fd = rx.recv_fd()
    timer.join()
    assert len(ticks) >= 3
    assert same_file(fd, 0)
    os.close(fd)


def test_signals_do_not_stop_a_timed_recv(
        channels: Pair, alarm: Callable[[Callable[[int, FrameType | None], object]], None]) -> None:
    tx, rx = channels
    rx.settimeout(30)
    alarm(lambda signum, frame: None)
    timer = later(0.4, lambda: tx.send_fd(0))
    fd = rx.recv_fd()
    timer.join()
    os.close(fd)


class Interrupted(Exception):
    pass


def test_a_raising_handler_gets_out_promptly(
        channels: Pair, alarm: Callable[[Callable[[int, FrameType | None], object]], None]) -> None:
    _, rx = channels

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    start = time.monotonic()
    alarm(handler)
    with pytest.raises(Interrupted):
        rx.recv_fd()
    assert time.monotonic() - start < 5


def test_a_thread_blocked_in_recv_does_not_block_the_main_thread(channels: Pair) -> None:
    tx, rx = channels
    received: list[int] = []
    worker = threading.Thread(target=lambda: received.append(rx.recv_fd()))
    worker.start()
    counter = 0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        counter += 1
    assert worker.is_alive() and counter > 1000
    tx.send_fd(0)
    worker.join(10)
    assert len(received) == 1
    os.close(received[0])


def test_no_sigpipe_in_a_child_with_the_default_handler() -> None:
    code = textwrap.dedent("""
        import errno, signal, socket, fdpass
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        a, b = socket.socketpair()
        b.close()
        ch = fdpass.FDChannel(a)
        try:
            ch.send_fd(0)
        except BrokenPipeError:
            print("BrokenPipeError")
        ok = fdpass.send(a.fileno(), 0)
        print(ok, errno.errorcode[fdpass.get_errno()])
        print("alive")
    """)
    result = run_python("-c", code)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout.split() == ["BrokenPipeError", "False", "EPIPE", "alive"]
