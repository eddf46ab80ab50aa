"""A hostile or careless peer, built with raw socket.sendmsg: every message
that breaks the protocol raises, and every descriptor it carried is closed."""

from __future__ import annotations

import errno
import os
import resource
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fdpass
from fdpass import FDChannel, ProtocolError
from support import close_all, open_fds, raw_send, same_file, wait_for_discards


@pytest.fixture
def rx(sockets: tuple[socket.socket, socket.socket]) -> Iterator[FDChannel]:
    with FDChannel(sockets[1], closefd=False) as ch:
        yield ch


def peer(sockets: tuple[socket.socket, socket.socket]) -> socket.socket:
    return sockets[0]


def assert_still_usable(sockets: tuple[socket.socket, socket.socket], rx: FDChannel) -> None:
    raw_send(peer(sockets), b"\0", [0])
    fd = rx.recv_fd()
    assert same_file(fd, 0)
    os.close(fd)


def test_data_without_a_descriptor(sockets: tuple[socket.socket, socket.socket],
                                   rx: FDChannel) -> None:
    peer(sockets).send(b"\0")
    with pytest.raises(ProtocolError, match="carried no descriptor") as info:
        rx.recv_fd()
    assert info.value.errno == errno.EBADMSG
    peer(sockets).send(b"\0")
    with pytest.raises(ProtocolError, match="carried no descriptor"):
        rx.recv_fds()
    assert_still_usable(sockets, rx)


@pytest.mark.parametrize("count", [2, 3, 16])
def test_more_descriptors_than_expected(sockets: tuple[socket.socket, socket.socket],
                                        rx: FDChannel, count: int) -> None:
    # Two fit in a one-int control buffer on 64-bit Linux: they must be closed too.
    raw_send(peer(sockets), b"\0", [0] * count)
    with pytest.raises(ProtocolError, match="descriptors|MSG_CTRUNC") as info:
        rx.recv_fd()
    assert info.value.errno == errno.EBADMSG
    assert_still_usable(sockets, rx)


def test_more_than_maxfds(sockets: tuple[socket.socket, socket.socket], rx: FDChannel) -> None:
    raw_send(peer(sockets), b"\0", [0] * 5)
    with pytest.raises(ProtocolError):
        rx.recv_fds(maxfds=4)
    raw_send(peer(sockets), b"\0", [0] * 5)
    with pytest.raises(ProtocolError):
        rx.recv_message(16, maxfds=3)
    assert_still_usable(sockets, rx)


def test_descriptors_in_two_control_messages(sockets: tuple[socket.socket, socket.socket],
                                             rx: FDChannel) -> None:
    raw_send(peer(sockets), b"\0", [0], [1])
    with pytest.raises(ProtocolError, match="2 descriptors where at most 1"):
        rx.recv_fd()
    raw_send(peer(sockets), b"\0", [0], [1, 2])
    got = rx.recv_fds()
    assert [same_file(a, b) for a, b in zip(got, [0, 1, 2])] == [True] * 3
    close_all(got)


def test_credentials_beside_descriptors(sockets: tuple[socket.socket, socket.socket],
                                        rx: FDChannel) -> None:
    sockets[1].setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    raw_send(peer(sockets), b"\0", [0])
    fd = rx.recv_fd()
    assert same_file(fd, 0)
    os.close(fd)
    raw_send(peer(sockets), b"\0", [0] * fdpass.MAX_FDS)
    got = rx.recv_fds()
    assert len(got) == fdpass.MAX_FDS
    close_all(got)
    raw_send(peer(sockets), b"\0", [0, 1])
    with pytest.raises(ProtocolError):
        rx.recv_fd()


def test_zero_byte_datagram_carrying_a_descriptor() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, FDChannel(b, closefd=False) as rx:
        raw_send(a, b"", [0])
        fd = rx.recv_fd()
        assert same_file(fd, 0)
        os.close(fd)
        raw_send(a, b"", [1])
        data, got = rx.recv_message(8)
        assert data == b"" and len(got) == 1
        close_all(got)
        a.send(b"")
        assert rx.recv_message(8) == (b"", [])
        a.send(b"")
        with pytest.raises(ProtocolError, match="carried no descriptor"):
            rx.recv_fd()


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_SEQPACKET])
def test_end_of_stream(kind: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with b, FDChannel(b, closefd=False) as rx:
        a.close()
        with pytest.raises(EOFError):
            rx.recv_fd()
        with pytest.raises(EOFError):
            rx.recv_fds()
        with pytest.raises(EOFError):
            rx.recv_message(10)


def test_end_of_stream_after_plain_bytes(stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    a.send(b"\0")
    a.shutdown(socket.SHUT_WR)
    with FDChannel(b, closefd=False) as rx:
        with pytest.raises(ProtocolError):
            rx.recv_fd()
        with pytest.raises(EOFError):
            rx.recv_fd()


def test_truncation_at_the_descriptor_limit_names_rlimit_nofile(
        stream: tuple[socket.socket, socket.socket]) -> None:
    a, b = stream
    with FDChannel(b, closefd=False) as rx:
        raw_send(a, b"\0", [0])
        raw_send(a, b"\0", [0, 1, 2])
        raw_send(a, b"\0", [1])
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = min(set(range(len(open_fds()) + 2)) - set(open_fds()))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, limit[1]))
        try:
            with pytest.raises(ProtocolError, match="RLIMIT_NOFILE") as info:
                rx.recv_fd()
            assert info.value.errno == errno.EBADMSG
            with pytest.raises(ProtocolError, match="RLIMIT_NOFILE"):
                rx.recv_fds()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
        fd = rx.recv_fd()  # the channel is still in step
        assert same_file(fd, 1)
        os.close(fd)


def test_a_full_message_to_recv_fd_is_counted_whole(
        stream: tuple[socket.socket, socket.socket]) -> None:
    # The control buffer has room for all MAX_FDS: the kernel discards none
    # for want of room (a close that could block), fdpass counts and closes them.
    a, b = stream
    with FDChannel(b, closefd=False) as rx:
        raw_send(a, b"\0", [0] * fdpass.MAX_FDS)
        with pytest.raises(ProtocolError, match=f"carried {fdpass.MAX_FDS} descriptors "
                                                "where at most 1"):
            rx.recv_fd()
        assert_still_usable(stream, rx)


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from([socket.SOCK_SEQPACKET, socket.SOCK_DGRAM]),
       groups=st.lists(st.integers(1, 12), max_size=4),
       data=st.binary(min_size=1, max_size=4),
       maxfds=st.integers(1, 16))
def test_any_raw_message_is_returned_whole_or_refused_and_closed(
        kind: int, groups: list[int], data: bytes, maxfds: int) -> None:
    before = open_fds()
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, b, FDChannel(b, closefd=False) as rx:
        raw_send(a, data, *[[0] * n for n in groups])
        total = sum(groups)
        if 1 <= total <= maxfds:
            got = rx.recv_fds(maxfds)
            assert len(got) == total and all(same_file(fd, 0) for fd in got)
            close_all(got)
        else:
            with pytest.raises(ProtocolError):
                rx.recv_fds(maxfds)
    assert wait_for_discards(10)
    assert open_fds() == before
