"""fdpass.send/recv on Windows against a raw peer that speaks IO::FDPass's
Win32 protocol from its description, in another process."""

from __future__ import annotations

import sys

import pytest

if sys.platform != "win32":
    pytest.skip("Windows only", allow_module_level=True)

import errno
import os
import socket

from winsupport import Peer

import fdpass



def test_the_windows_backend_is_loaded_from_the_installed_wheel() -> None:
    assert fdpass.ENGINE == "windows"
    assert "site-packages" in fdpass.__file__, fdpass.__file__


def test_send_to_a_raw_receiver() -> None:
    r, w = os.pipe()
    with Peer("raw-receiver") as peer:
        os.write(w, b"sent by fdpass.send")
        os.close(w)
        assert fdpass.send(peer.sock.fileno(), r) is True
        os.close(r)
        peer.sock.shutdown(socket.SHUT_WR)  # the peer checks nothing more came
        assert peer.finish() == "sent by fdpass.send"


def test_recv_from_a_raw_sender() -> None:
    with Peer("raw-sender") as peer:
        fd = fdpass.recv(peer.sock.fileno())
        assert fd >= 0, fdpass.get_errno()
        os.write(fd, b"written through the received handle")
        os.close(fd)
        peer.sock.shutdown(socket.SHUT_WR)
        assert peer.finish() == f"{os.getpid()} written through the received handle"


def test_recv_at_end_of_stream_is_minus_one_with_econnreset() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.close()
        assert fdpass.recv(a.fileno()) == -1
        assert fdpass.get_errno() == errno.ECONNRESET


def test_send_of_a_closed_descriptor_is_false_with_ebadf() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    a, b = socket.socketpair()
    with a, b:
        b.sendall(os.getpid().to_bytes(4, "little"))
        assert fdpass.send(a.fileno(), r) is False
        assert fdpass.get_errno() == errno.EBADF


def test_send_on_a_nonblocking_socket_without_a_pid_is_eagain() -> None:
    r, w = os.pipe()
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        assert fdpass.send(a.fileno(), r) is False
        assert fdpass.get_errno() == errno.EAGAIN
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(16)  # and nothing was written
    os.close(r)
    os.close(w)


def test_send_to_a_process_that_does_not_exist_is_false() -> None:
    r, w = os.pipe()
    a, b = socket.socketpair()
    with a, b:
        b.sendall((0xFFFFFFF0).to_bytes(4, "little"))
        assert fdpass.send(a.fileno(), r) is False
        assert fdpass.get_errno() != 0
    os.close(r)
    os.close(w)


@pytest.mark.parametrize("bad", [None, 1.5, "3", b"3"])
def test_arguments_that_are_not_ints_are_typeerrors(bad: object) -> None:
    with pytest.raises(TypeError):
        fdpass.send(bad, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fdpass.send(0, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fdpass.recv(bad)  # type: ignore[arg-type]
