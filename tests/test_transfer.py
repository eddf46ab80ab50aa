"""Descriptors cross intact over every UNIX socket type, in the wire format."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fdpass
from fdpass import FDChannel, ProtocolError
from support import close_all, raw_send, same_file

Pair = tuple[FDChannel, FDChannel]


def is_cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def test_send_fd_recv_fd(channels: Pair) -> None:
    tx, rx = channels
    with tempfile.TemporaryFile() as f:
        f.write(b"crossed")
        f.flush()
        tx.send_fd(f)
        fd = rx.recv_fd()
        try:
            assert fd != f.fileno() and same_file(fd, f.fileno())
            assert os.pread(fd, 7, 0) == b"crossed"
            assert is_cloexec(fd)
            assert not os.get_inheritable(fd)
        finally:
            os.close(fd)


def test_received_pipe_works(channels: Pair, pipe: tuple[int, int]) -> None:
    tx, rx = channels
    r, w = pipe
    tx.send_fd(w)
    w2 = rx.recv_fd()
    os.write(w2, b"through the passed end")
    os.close(w2)
    assert os.read(r, 100) == b"through the passed end"


def test_send_fds_recv_fds_keeps_order(channels: Pair, pipe: tuple[int, int]) -> None:
    tx, rx = channels
    r, w = pipe
    tx.send_fds([r, w, r])
    got = rx.recv_fds()
    try:
        assert len(got) == 3
        assert [same_file(a, b) for a, b in zip(got, [r, w, r])] == [True] * 3
        assert all(is_cloexec(fd) for fd in got)
    finally:
        close_all(got)


def test_max_fds_in_one_message(channels: Pair, pipe: tuple[int, int]) -> None:
    tx, rx = channels
    tx.send_fds([pipe[0]] * fdpass.MAX_FDS)
    got = rx.recv_fds()
    try:
        assert len(got) == fdpass.MAX_FDS == len(set(got))
    finally:
        close_all(got)


def test_recv_fds_with_fewer_than_asked(channels: Pair) -> None:
    tx, rx = channels
    tx.send_fds([0, 1])
    got = rx.recv_fds(maxfds=5)
    assert len(got) == 2
    close_all(got)


def test_recv_message_returns_payload_and_descriptors(channels: Pair) -> None:
    tx, rx = channels
    tx.send_fds([0, 2], data=bytearray(b"payload"))
    data, got = rx.recv_message(64)
    try:
        assert data == b"payload"
        assert len(got) == 2 and same_file(got[0], 0) and same_file(got[1], 2)
    finally:
        close_all(got)


def test_recv_message_without_descriptors(sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockets
    a.send(b"plain")
    with FDChannel(b, closefd=False) as rx:
        assert rx.recv_message(64) == (b"plain", [])


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_recv_message_refuses_a_record_longer_than_bufsize(kind: int) -> None:
    tx, rx = FDChannel.pair(kind)
    with tx, rx:
        tx.send_fds([0, 1], data=b"0123456789")
        tx.send_fds([2], data=b"next")
        with pytest.raises(ProtocolError, match=r"message \(10 bytes\) is longer than "
                                                r"bufsize \(4\).*2 descriptors are closed in the background"):
            rx.recv_message(4)
        data, got = rx.recv_message(4)  # still in step
        assert data == b"next" and len(got) == 1 and same_file(got[0], 2)
        close_all(got)
        tx.send_fds([0], data=b"0123")  # exactly bufsize is whole
        data, got = rx.recv_message(4)
        assert data == b"0123"
        close_all(got)


def test_long_payload_on_a_stream_arrives_whole(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    payload = os.urandom(1 << 20)
    with FDChannel(a, closefd=False) as tx, FDChannel(b, closefd=False) as rx:
        sender = threading.Thread(target=tx.send_fds, args=([0], payload))
        sender.start()
        data, got = rx.recv_message(len(payload))
        close_all(got)
        while len(data) < len(payload):
            data += b.recv(len(payload) - len(data))
        sender.join()
    assert data == payload and len(got) == 1


def test_wire_format_is_one_zero_byte_and_one_int(
        sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockets
    with FDChannel(a, closefd=False) as tx:
        tx.send_fd(0)
    data, ancdata, flags, _ = b.recvmsg(16, socket.CMSG_SPACE(64))
    assert data == b"\0"
    assert flags & socket.MSG_CTRUNC == 0
    assert len(ancdata) == 1
    level, kind, payload = ancdata[0]
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fds = array.array("i", payload).tolist()
    assert len(fds) == 1
    close_all(fds)


def test_payload_byte_value_is_not_checked(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    raw_send(a, b"\x01", [0])
    with FDChannel(b, closefd=False) as rx:
        os.close(rx.recv_fd())


def test_objects_with_fileno_are_sent(channels: Pair) -> None:
    tx, rx = channels
    with tempfile.TemporaryFile() as f, socket.socket(socket.AF_UNIX) as s:
        tx.send_fds([f, s, tx])
        got = rx.recv_fds()
        try:
            assert same_file(got[0], f.fileno())
            assert same_file(got[1], s.fileno())
            assert same_file(got[2], tx.fileno())
        finally:
            close_all(got)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(
    st.tuples(st.integers(1, fdpass.MAX_FDS), st.binary(min_size=1, max_size=64)),
    min_size=1, max_size=5))
def test_any_batch_sequence_round_trips(pipe: tuple[int, int],
                                        messages: list[tuple[int, bytes]]) -> None:
    tx, rx = FDChannel.pair(socket.SOCK_SEQPACKET)
    with tx, rx:
        for count, data in messages:
            tx.send_fds([pipe[1]] * count, data)
        for count, data in messages:
            got_data, got = rx.recv_message(64)
            try:
                assert got_data == data
                assert len(got) == count
                assert all(same_file(fd, pipe[1]) for fd in got)
            finally:
                close_all(got)
