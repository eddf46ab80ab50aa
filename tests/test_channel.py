"""FDChannel construction, ownership, and the socket-module conventions."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

import pytest

import fdpass
from fdpass import FDChannel


class HasFileno:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def test_wraps_a_socket_an_int_and_an_object_with_fileno(
    stream: tuple[socket.socket, socket.socket],
) -> None:
    a, _ = stream
    for target in (a, a.fileno(), HasFileno(a.fileno())):
        with FDChannel(target, closefd=False) as ch:
            assert ch.fileno() == a.fileno()
            assert ch.type == socket.SOCK_STREAM
    assert a.fileno() >= 0  # closefd=False left it open


def test_every_unix_socket_type_is_accepted(sock_type: int) -> None:
    a, b = FDChannel.pair(sock_type)
    with a, b:
        assert a.type == b.type == sock_type


def test_refuses_a_pipe(pipe: tuple[int, int]) -> None:
    with pytest.raises(OSError, match="not a socket") as info:
        FDChannel(pipe[0])
    assert info.value.errno == errno.ENOTSOCK


def test_refuses_a_regular_file() -> None:
    with tempfile.TemporaryFile() as f:
        with pytest.raises(OSError) as info:
            FDChannel(f)
        assert info.value.errno == errno.ENOTSOCK
        assert not f.closed


@pytest.mark.parametrize("family,kind,name", [
    (socket.AF_INET, socket.SOCK_STREAM, "AF_INET"),
    (socket.AF_INET, socket.SOCK_DGRAM, "AF_INET"),
    (socket.AF_INET6, socket.SOCK_STREAM, "AF_INET6"),
])
def test_refuses_ip_sockets(family: int, kind: int, name: str) -> None:
    with socket.socket(family, kind) as s:
        with pytest.raises(ValueError, match=f"needs an AF_UNIX socket, not {name}"):
            FDChannel(s)
        assert s.fileno() >= 0  # a refused socket is not closed


def test_refuses_closed_descriptors() -> None:
    s, t = socket.socketpair()
    fd = s.fileno()
    s.close()
    t.close()
    with pytest.raises(OSError) as info:
        FDChannel(s)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        FDChannel(fd)
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize("bad", [None, 1.5, "3", b"3"])
def test_refuses_non_descriptors(bad: object) -> None:
    with pytest.raises(TypeError, match="int or an object with fileno"):
        FDChannel(bad)  # type: ignore[arg-type]


def test_closefd_closes_what_was_wrapped() -> None:
    a, b = socket.socketpair()
    with b:
        with FDChannel(a) as ch:
            assert not ch.closed
        assert ch.closed
        assert a.fileno() == -1
        fd = os.dup(b.fileno())
        FDChannel(fd).close()
        with pytest.raises(OSError):
            os.fstat(fd)


def test_an_owned_descriptor_is_closed_when_the_channel_is_collected() -> None:
    a, b = socket.socketpair()
    with a, b:
        fd = os.dup(a.fileno())
        ch = FDChannel(fd)
        del ch
        with pytest.raises(OSError):
            os.fstat(fd)


def test_closed_channel() -> None:
    a, b = FDChannel.pair()
    b.close()
    a.close()
    a.close()  # idempotent
    assert repr(a) == "<fdpass.FDChannel [closed]>"
    assert a.fileno() == -1  # as socket.socket's
    for call in (a.recv_fd, a.recv_fds, lambda: a.send_fd(0), lambda: a.send_fds([0]),
                 lambda: a.recv_message(1), a.recv_file, a.recv_socket, a.peer_credentials,
                 lambda: a.shutdown(socket.SHUT_RDWR)):
        with pytest.raises(ValueError, match="closed channel"):
            call()


def test_repr(stream: tuple[socket.socket, socket.socket]) -> None:
    with FDChannel(stream[0], closefd=False) as ch:
        assert repr(ch) == f"<fdpass.FDChannel fd={stream[0].fileno()} type=SOCK_STREAM timeout=None>"


def test_pair_is_connected() -> None:
    a, b = FDChannel.pair()
    with a, b:
        a.send_fd(0)
        fd = b.recv_fd()
        os.close(fd)


def test_connect(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        with FDChannel.connect(path) as client:
            conn, _ = server.accept()
            with FDChannel(conn) as served:
                client.send_fd(0)
                fd = served.recv_fd()
                assert os.path.samestat(os.fstat(fd), os.fstat(0))
                os.close(fd)


def test_connect_failure_leaks_nothing_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nobody-listens"
    with pytest.raises(FileNotFoundError) as raised:
        FDChannel.connect(path)
    assert raised.value.filename == str(path)
    assert str(raised.value).endswith(f": {str(path)!r}")


def test_timeout_follows_the_wrapped_socket(stream: tuple[socket.socket, socket.socket]) -> None:
    a, _ = stream
    a.settimeout(2.5)
    with FDChannel(a, closefd=False) as ch:
        assert ch.gettimeout() == 2.5
        a.settimeout(None)
        assert ch.gettimeout() is None
        ch.settimeout(0.0)
        assert a.gettimeout() == 0.0
        ch.setblocking(True)
        assert a.gettimeout() is None


def test_timeout_of_a_descriptor_number(stream: tuple[socket.socket, socket.socket]) -> None:
    a, _ = stream
    with FDChannel(a.fileno(), closefd=False) as ch:
        assert ch.gettimeout() is None
        ch.settimeout(1)
        assert ch.gettimeout() == 1.0
        ch.setblocking(False)
        assert ch.gettimeout() == 0.0
    a.setblocking(False)  # a non-blocking descriptor starts at timeout 0.0, as socket does
    with FDChannel(a.fileno(), closefd=False) as ch:
        assert ch.gettimeout() == 0.0


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (float("nan"), ValueError),
                                     ("1", TypeError)])
def test_bad_timeouts(bad: object, exc: type[Exception]) -> None:
    a, b = FDChannel.pair()
    with a, b:
        with pytest.raises(exc, match="timeout"):
            a.settimeout(bad)  # type: ignore[arg-type]


def test_a_channel_can_itself_be_sent() -> None:
    a, b = FDChannel.pair()
    c, d = FDChannel.pair()
    with a, b, c, d:
        a.send_fd(c)
        with FDChannel(b.recv_fd()) as c2:
            c2.send_fd(0)
            os.close(d.recv_fd())


def test_max_fds() -> None:
    assert fdpass.MAX_FDS == fdpass._channel.MAX_FDS == 253


def test_closefd_on_an_object_calls_its_close_or_closes_its_descriptor() -> None:
    a, b = socket.socketpair()
    with a, b:
        closed: list[bool] = []

        class Closable(HasFileno):
            def close(self) -> None:
                closed.append(True)

        FDChannel(Closable(a.fileno())).close()
        assert closed == [True] and a.fileno() >= 0
        fd = os.dup(b.fileno())
        FDChannel(HasFileno(fd)).close()
        with pytest.raises(OSError):
            os.fstat(fd)


def test_init_again_is_refused(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    with FDChannel(a, closefd=False) as ch:
        with pytest.raises(RuntimeError, match="open channel"):
            ch.__init__(b)  # type: ignore[misc]
        assert ch.fileno() == a.fileno()


def test_socket_closed_behind_the_channel_is_named(stream: tuple[socket.socket, socket.socket]) -> None:
    a, _ = stream
    fd = os.dup(a.fileno())
    with FDChannel(fd, closefd=False) as ch:
        os.close(fd)
        with pytest.raises(OSError, match=f"socket descriptor {fd} is not open") as info:
            ch.send_fd(0)
        assert info.value.errno == errno.EBADF
