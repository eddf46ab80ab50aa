"""recv_many and send_many: many messages a call (recvmmsg/sendmmsg on
Linux, a loop in the portable build), each with every guarantee of the
single-message calls: close-on-exec, truncation named, a hostile peer's
extras discarded, nothing leaked, a failed message's error raised in order."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time

import pytest

import fdpass
from fdpass import FDChannel, ProtocolError, _engine
from fdpass._channel import MAX_BATCH
from support import close_all, open_fds, raw_send, same_file, wait_for_discards

TYPES = [socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM]


def test_the_build_says_how_it_batches() -> None:
    expected = "recvmsg/sendmsg loop" if _engine.PORTABLE else "recvmmsg/sendmmsg"
    assert _engine.BATCH_METHOD == expected
    assert fdpass.FDChannel.recv_many.__doc__


def received(batch: list[tuple[bytes, list[int]]]) -> list[int]:
    return [fd for _, fds in batch for fd in fds]


@pytest.mark.parametrize("sock_type", TYPES)
def test_many_round_trip(channels: tuple[FDChannel, FDChannel], sock_type: int) -> None:
    tx, rx = channels
    # A stream has no records: one-byte payloads, read a byte at a time,
    # keep the messages apart.
    payloads = [b"a", b"b", b"c", b"d"] if sock_type == socket.SOCK_STREAM else [
        b"first", b"\0", b"third message", b"4"]
    groups = [[0], [1, 2], [], [2, 1, 0]]
    for fd in (0, 1, 2):
        os.set_inheritable(fd, True)
    tx.send_many(zip(payloads, groups))
    got = rx.recv_many(8, bufsize=1 if sock_type == socket.SOCK_STREAM else 32)
    try:
        assert [data for data, _ in got] == payloads
        assert [len(fds) for _, fds in got] == [len(g) for g in groups]
        for (_, fds), group in zip(got, groups):
            assert all(same_file(a, b) for a, b in zip(fds, group))
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in received(got))
    finally:
        close_all(received(got))
    rx.settimeout(0.0)
    with pytest.raises(BlockingIOError):
        rx.recv_many(8)  # nothing queued: never waits, as any receive


@pytest.mark.parametrize("sock_type", [socket.SOCK_STREAM])
def test_takes_no_more_than_asked(channels: tuple[FDChannel, FDChannel]) -> None:
    tx, rx = channels
    tx.send_many([(b"\0", [0])] * 5)
    first, rest = rx.recv_many(3), rx.recv_many(64)
    close_all(received(first) + received(rest))
    assert (len(first), len(rest)) == (3, 2)


@pytest.mark.parametrize("sock_type", [socket.SOCK_STREAM, socket.SOCK_SEQPACKET])
def test_failed_message_raised_in_order(sockets: tuple[socket.socket, socket.socket],
                                        sock_type: int) -> None:
    a, b = sockets
    raw_send(a, b"\0", [0])
    raw_send(a, b"\0", [0], [1])      # two control messages: one too many descriptors
    raw_send(a, b"\0", [1])
    raw_send(a, b"\0", [2, 2, 2])     # too many again
    raw_send(a, b"\0", [2])
    with FDChannel(b, closefd=False) as rx:
        first = rx.recv_many(16, maxfds=1)
        with pytest.raises(ValueError, match="recv_many holds messages"):
            rx.recv_fd()          # another receive would take them out of order
        with pytest.raises(ProtocolError, match="2 descriptors where at most 1") as info:
            rx.recv_many(16, maxfds=1)
        assert info.value.errno == errno.EBADMSG
        second = rx.recv_many(16, maxfds=1)
        with pytest.raises(ProtocolError, match="3 descriptors"):
            rx.recv_many(16, maxfds=1)
        third = rx.recv_many(16, maxfds=1)
        close_all(received(first + second + third))
        assert [len(x) for x in (first, second, third)] == [1, 1, 1]
    assert wait_for_discards(10)


@pytest.mark.parametrize("sock_type", [socket.SOCK_STREAM])
def test_close_discards_what_recv_many_holds(sockets: tuple[socket.socket, socket.socket]
                                             ) -> None:
    a, b = sockets
    rx = FDChannel(b, closefd=False)
    before = open_fds()
    raw_send(a, b"\0", [0, 1])
    raw_send(a, b"\0", [1])
    raw_send(a, b"\0", [2])
    with pytest.raises(ProtocolError):
        rx.recv_many(16, maxfds=1)
    rx.close()  # the two messages it held: their descriptors are discarded
    assert wait_for_discards(10)
    assert open_fds() == before and rx.closed


@pytest.mark.parametrize("sock_type", [socket.SOCK_SEQPACKET, socket.SOCK_DGRAM])
def test_truncation_named(channels: tuple[FDChannel, FDChannel]) -> None:
    tx, rx = channels
    tx.send_many([(b"ok", [0]), (b"far too long", [0]), (b"ok", [1])])
    first = rx.recv_many(4, bufsize=4)
    with pytest.raises(ProtocolError, match=r"longer than bufsize \(4\)"):
        rx.recv_many(4, bufsize=4)
    last = rx.recv_many(4, bufsize=4)
    close_all(received(first + last))
    assert [d for d, _ in first + last] == [b"ok", b"ok"]


@pytest.mark.parametrize("sock_type", [socket.SOCK_STREAM])
def test_end_of_stream_after_messages(channels: tuple[FDChannel, FDChannel]) -> None:
    tx, rx = channels
    tx.send_many([(b"\0", [0])] * 2)
    tx.shutdown(socket.SHUT_WR)
    got = rx.recv_many(8)
    close_all(received(got))
    assert len(got) == 2
    with pytest.raises(EOFError):
        rx.recv_many(8)


def test_refusing_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    # The path of a kernel that cannot refuse: descriptors arrive, and are closed.
    monkeypatch.setenv("FDPASS_NO_PASSRIGHTS", "1")
    a, b = socket.socketpair()
    with a, FDChannel(b, refuse_fds=True) as rx:
        a.send(b"x")
        assert rx.recv_many(4) == [(b"x", [])]
        raw_send(a, b"\0", [0])
        with pytest.raises(ProtocolError, match="refuses descriptors"):
            rx.recv_many(4)
    assert wait_for_discards(10)


@pytest.mark.parametrize("sock_type", [socket.SOCK_STREAM])
def test_send_many_checks_before_sending(channels: tuple[FDChannel, FDChannel]) -> None:
    tx, rx = channels
    with pytest.raises(ValueError, match="message 1's payload is empty"):
        tx.send_many([(b"\0", [0]), (b"", [0])])
    with pytest.raises(ValueError, match="at most"):
        tx.send_many([(b"\0", [0] * (fdpass.MAX_FDS + 1))])
    with pytest.raises(TypeError):
        tx.send_many([(b"\0", ["x"])])  # type: ignore[list-item]
    tx.send_many([])
    rx.settimeout(0.0)
    with pytest.raises(BlockingIOError):
        rx.recv_many(4)  # nothing went


@pytest.mark.parametrize("sock_type", [socket.SOCK_STREAM])
def test_send_many_list_grown_by_fileno(channels: tuple[FDChannel, FDChannel]) -> None:
    """A fileno() that grows a later message's list after send_many counted
    it: refused, nothing sent (it once wrote past the block, and crashed)."""
    tx, rx = channels
    later = [0]

    class Grows:
        def fileno(self) -> int:
            later.extend([0] * 300)
            return 0

    with pytest.raises(RuntimeError, match="message 1's descriptors changed size"):
        tx.send_many([(b"a", [Grows()]), (b"b", later)])
    rx.settimeout(0.0)
    with pytest.raises(BlockingIOError):
        rx.recv_many(4)  # nothing went


@pytest.mark.parametrize("sock_type", [socket.SOCK_DGRAM])
def test_send_many_partial(channels: tuple[FDChannel, FDChannel]) -> None:
    tx, rx = channels
    r, w = os.pipe()
    close_all([r, w])
    with pytest.raises(OSError) as info:
        tx.send_many([(b"\0", [0]), (b"\0", [r]), (b"\0", [0])])  # r: closed
    assert info.value.errno == errno.EBADF
    assert info.value.messages_sent == 1  # type: ignore[attr-defined]
    assert f"descriptor {r} is not open" in str(info.value)
    tx.settimeout(0.0)
    with pytest.raises(BlockingIOError) as full:
        tx.send_many([(b"\0", [0])] * 10_000)  # more than the queue takes
    sent = full.value.messages_sent  # type: ignore[attr-defined]
    assert 0 < sent < 10_000
    total = 0
    rx.settimeout(0.0)
    while True:
        try:
            got = rx.recv_many(MAX_BATCH)
        except BlockingIOError:
            break
        close_all(received(got))
        total += len(got)
    assert total == 1 + sent


@pytest.mark.parametrize("sock_type", [socket.SOCK_STREAM])
def test_send_many_to_a_gone_peer(sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockets
    with FDChannel(a, closefd=False) as tx:
        b.shutdown(socket.SHUT_RDWR)
        with pytest.raises(BrokenPipeError) as info:
            tx.send_many([(b"\0", [0])] * 3)
        assert info.value.messages_sent == 0  # type: ignore[attr-defined]


def test_arguments_checked() -> None:
    tx, rx = FDChannel.pair()
    with tx, rx:
        for bad in (0, MAX_BATCH + 1):
            with pytest.raises(ValueError, match="max_messages"):
                rx.recv_many(bad)
        with pytest.raises(ValueError, match="bufsize"):
            rx.recv_many(1, bufsize=0)
        with pytest.raises(ValueError, match="maxfds"):
            rx.recv_many(1, maxfds=0)


def test_close_from_another_thread_wakes_recv_many() -> None:
    tx, rx = FDChannel.pair()
    outcome: list[BaseException] = []

    def receive() -> None:
        try:
            rx.recv_many(4)
        except BaseException as error:
            outcome.append(error)

    waiter = threading.Thread(target=receive)
    with tx:
        waiter.start()
        time.sleep(0.2)  # the receive is waiting without the GIL by now
        rx.close()
        waiter.join(10)
    assert not waiter.is_alive()
    assert isinstance(outcome[0], ValueError) and "closed" in str(outcome[0])
