"""fdpass.send / fdpass.recv / fdpass.get_errno: IO::FDPass's API, where
OS failures return False or -1 and get_errno() says why, as Perl's $!."""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
import time
from types import FrameType
from typing import Callable

import pytest

import fdpass
from support import raw_send, same_file


def test_round_trip(sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockets
    assert fdpass.send(a.fileno(), 0) is True
    fd = fdpass.recv(b.fileno())
    assert fd >= 0 and same_file(fd, 0)
    assert not os.get_inheritable(fd)
    os.close(fd)


def test_interoperates_with_the_channel(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    with fdpass.FDChannel(a, closefd=False) as ch:
        ch.send_fd(1)
        fd = fdpass.recv(b.fileno())
        assert same_file(fd, 1)
        os.close(fd)
        assert fdpass.send(b.fileno(), 2)
        fd = ch.recv_fd()
        assert same_file(fd, 2)
        os.close(fd)


@pytest.mark.parametrize("bad", [None, 1.0, "3", b"3", object()])
def test_only_ints(stream: tuple[socket.socket, socket.socket], bad: object) -> None:
    a, _ = stream
    with pytest.raises(TypeError, match="socket_fd must be an int descriptor number"):
        fdpass.send(bad, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fd_to_pass must be an int descriptor number"):
        fdpass.send(a.fileno(), bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="socket_fd must be an int descriptor number"):
        fdpass.recv(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fdpass.send(a, 0)  # type: ignore[arg-type]


def test_failures_set_errno(stream: tuple[socket.socket, socket.socket],
                            pipe: tuple[int, int]) -> None:
    a, b = stream
    closed = os.dup(0)
    os.close(closed)
    cases: list[tuple[Callable[[], object], int]] = [
        (lambda: fdpass.send(a.fileno(), closed), errno.EBADF),
        (lambda: fdpass.send(a.fileno(), -1), errno.EBADF),
        (lambda: fdpass.send(closed, 0), errno.EBADF),
        (lambda: fdpass.send(pipe[1], 0), errno.ENOTSOCK),
        (lambda: fdpass.recv(pipe[0]), errno.ENOTSOCK),
        (lambda: fdpass.recv(-1), errno.EBADF),
    ]
    for call, expected in cases:
        assert call() in (False, -1)
        assert fdpass.get_errno() == expected, errno.errorcode[fdpass.get_errno()]


@pytest.mark.parametrize("family,kind", [(socket.AF_INET, socket.SOCK_STREAM),
                                         (socket.AF_INET, socket.SOCK_DGRAM)])
def test_ip_sockets_are_refused_with_eafnosupport(family: int, kind: int) -> None:
    with socket.socket(family, kind) as s:
        assert fdpass.send(s.fileno(), 0) is False
        assert fdpass.get_errno() == errno.EAFNOSUPPORT
        assert fdpass.recv(s.fileno()) == -1
        assert fdpass.get_errno() == errno.EAFNOSUPPORT


@pytest.mark.parametrize("waiting", [b"", b"x"], ids=["empty", "data-waiting"])
def test_connected_tcp_recv_is_refused_without_blocking(waiting: bytes) -> None:
    """The family is checked lazily on receive: still EAFNOSUPPORT, at once,
    whether a byte is waiting or the (blocking) socket would wait."""
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        conn, _ = server.accept()
        with conn:
            client.sendall(waiting)
            time.sleep(0.05 if waiting else 0)
            assert fdpass.recv(conn.fileno()) == -1
            assert fdpass.get_errno() == errno.EAFNOSUPPORT


def test_protocol_violations_give_ebadmsg(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    a.send(b"\0")
    assert fdpass.recv(b.fileno()) == -1
    assert fdpass.get_errno() == errno.EBADMSG
    raw_send(a, b"\0", [0, 1])
    assert fdpass.recv(b.fileno()) == -1
    assert fdpass.get_errno() == errno.EBADMSG
    raw_send(a, b"\0", [0] * 40)
    assert fdpass.recv(b.fileno()) == -1
    assert fdpass.get_errno() == errno.EBADMSG


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_SEQPACKET])
def test_end_of_stream_gives_econnreset(kind: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with b:
        a.close()
        assert fdpass.recv(b.fileno()) == -1
        assert fdpass.get_errno() == errno.ECONNRESET


def test_empty_datagram_gives_ebadmsg() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(b"")
        assert fdpass.recv(b.fileno()) == -1
        assert fdpass.get_errno() == errno.EBADMSG


def test_non_blocking_socket_gives_eagain_and_may_retry(
        stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    b.setblocking(False)
    assert fdpass.recv(b.fileno()) == -1
    assert fdpass.get_errno() == errno.EAGAIN
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while fdpass.send(a.fileno(), 0):
        pass
    assert fdpass.get_errno() == errno.EAGAIN
    fd = fdpass.recv(b.fileno())  # the caller is free to try again
    assert same_file(fd, 0)
    os.close(fd)


def test_errno_is_per_thread(pipe: tuple[int, int]) -> None:
    assert fdpass.recv(pipe[0]) == -1
    seen: list[int] = []

    def other() -> None:
        fdpass.recv(-1)
        seen.append(fdpass.get_errno())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [errno.EBADF]
    assert fdpass.get_errno() == errno.ENOTSOCK


def test_success_keeps_the_last_errno(stream: tuple[socket.socket, socket.socket],
                                      pipe: tuple[int, int]) -> None:
    a, b = stream
    fdpass.recv(pipe[0])
    assert fdpass.send(a.fileno(), 0)
    os.close(fdpass.recv(b.fileno()))
    assert fdpass.get_errno() == errno.ENOTSOCK


class Interrupted(Exception):
    pass


def test_signal_handler_exception_propagates(stream: tuple[socket.socket, socket.socket]) -> None:
    _, b = stream

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    try:
        start = time.monotonic()
        with pytest.raises(Interrupted):
            fdpass.recv(b.fileno())
        assert time.monotonic() - start < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)


def test_returning_signal_handler_lets_recv_go_on(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    timer = threading.Timer(0.3, lambda: fdpass.send(a.fileno(), 0))
    timer.start()
    try:
        fd = fdpass.recv(b.fileno())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
        timer.join()
    assert same_file(fd, 0)
    os.close(fd)


def test_numbers_beyond_c_int_overflow() -> None:
    with pytest.raises(OverflowError):
        fdpass.send(2**40, 0)
    with pytest.raises(OverflowError):
        fdpass.recv(2**40)
