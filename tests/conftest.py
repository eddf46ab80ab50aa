"""Shared fixtures: every test runs under the descriptor-leak check."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Callable, Iterator

import pytest

import fdpass
from support import LINGER, Lingering, open_fds, wait_for_discards

SOCKET_TYPES = {
    "stream": socket.SOCK_STREAM,
    "seqpacket": socket.SOCK_SEQPACKET,
    "dgram": socket.SOCK_DGRAM,
}


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """Fail the test when it leaves more descriptors open than it found
    (once the closer thread has closed what fdpass discarded)."""
    gc.collect()
    assert wait_for_discards(30), "the closer thread is stuck"
    before = open_fds()
    yield
    gc.collect()
    assert wait_for_discards(30), "the closer thread is stuck"
    after = open_fds()
    leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
    assert not leaked, f"descriptors leaked: {leaked}"


@pytest.fixture
def lingering() -> Iterator[Callable[..., Lingering]]:
    """Makes lingering sockets (LINGER seconds, or as many as asked); at the
    end their reading ends close first, which ends any close still waiting
    (a reset), then everything."""
    made: list[Lingering] = []

    def make(seconds: int = LINGER) -> Lingering:
        made.append(Lingering(seconds))
        return made[-1]

    try:
        yield make
    finally:
        for held in made:
            held.peer.close()
        assert wait_for_discards(10), "a close still lingers"
        for held in made:
            held.close()


@pytest.fixture(params=sorted(SOCKET_TYPES))
def sock_type(request: pytest.FixtureRequest) -> int:
    return SOCKET_TYPES[request.param]


@pytest.fixture
def sockets(sock_type: int) -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, sock_type)
    with a, b:
        yield a, b


@pytest.fixture
def channels(
    sockets: tuple[socket.socket, socket.socket],
) -> Iterator[tuple[fdpass.FDChannel, fdpass.FDChannel]]:
    """A sending and a receiving channel over each kind of socketpair."""
    a, b = sockets
    with fdpass.FDChannel(a, closefd=False) as tx, fdpass.FDChannel(b, closefd=False) as rx:
        yield tx, rx


@pytest.fixture
def stream() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        yield a, b


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


@pytest.fixture
def listeners() -> Iterator[dict[str, socket.socket]]:
    """Two listening TCP sockets on 127.0.0.1, as a server offers them to
    its successor (fdpass.handoff)."""
    made = {name: socket.create_server(("127.0.0.1", 0)) for name in ("http", "admin")}
    try:
        yield made
    finally:
        for sock in made.values():
            sock.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List each interop test (against a real peer: Perl's IO::FDPass, Ruby,
    Go, HAProxy, the standard library) with its outcome, so that a CI log
    shows they ran and were not skipped."""
    lines = [f"{outcome.upper():8} {report.nodeid}"
             for outcome in ("passed", "failed", "error", "skipped")
             for report in terminalreporter.stats.get(outcome, [])
             if "interop" in getattr(report, "keywords", {})
             and (report.when == "call" or outcome != "passed")]
    if lines:
        terminalreporter.section("interoperability with real peers")
        for line in lines:
            terminalreporter.write_line(line)
