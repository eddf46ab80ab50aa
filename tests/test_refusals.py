"""What the kernel refuses becomes the error a Python programmer expects,
saying why: a gone datagram peer is a broken pipe, as on streams, and a
peer that refuses descriptors is named as the likely cause of EPERM."""

from __future__ import annotations

import errno
import socket

import pytest

import fdpass
from fdpass import FDChannel

SO_PASSRIGHTS = getattr(socket, "SO_PASSRIGHTS", 83)


def test_a_gone_datagram_peer_is_a_broken_pipe() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, FDChannel(a, closefd=False) as tx:
        b.close()
        for _ in range(2):  # the kernel says ECONNREFUSED, then ENOTCONN
            with pytest.raises(BrokenPipeError):
                tx.send_fd(0)
            assert not fdpass.send(a.fileno(), 0)
            assert fdpass.get_errno() == errno.EPIPE
        with pytest.raises(BrokenPipeError):
            tx.send_fds([0, 1], b"data")


def test_an_unconnected_datagram_socket_is_not_a_broken_pipe() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, FDChannel(s, closefd=False) as ch:
        with pytest.raises(OSError) as info:
            ch.send_fd(0)
        assert info.value.errno == errno.ENOTCONN


def refusing(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 0)
    except OSError as error:  # a kernel older than 6.16
        pytest.skip(f"SO_PASSRIGHTS: {error}")


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_SEQPACKET,
                                  socket.SOCK_DGRAM])
def test_a_peer_refusing_descriptors_is_named(kind: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, b, FDChannel(a, closefd=False) as tx:
        refusing(b)
        with pytest.raises(PermissionError, match="peer most likely refuses them "
                                                  r"\(SO_PASSRIGHTS") as info:
            tx.send_fd(0)
        assert info.value.errno == errno.EPERM
        with pytest.raises(PermissionError, match="refuses"):
            tx.send_fds([0, 1], b"data")
        assert not fdpass.send(a.fileno(), 0)
        assert fdpass.get_errno() == errno.EPERM
        b.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing went
            b.recv(16)
