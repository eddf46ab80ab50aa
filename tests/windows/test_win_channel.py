"""FDChannel on Windows: each method, its errors, and no handle left
behind, in one process (pair()) and across two."""

from __future__ import annotations

import sys

import pytest

if sys.platform != "win32":
    pytest.skip("Windows only", allow_module_level=True)

import errno
import gc
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator

from winsupport import Peer, handle_count, open_handles

import fdpass



@pytest.fixture
def pair() -> Iterator[tuple[fdpass.FDChannel, fdpass.FDChannel]]:
    """Two channels that have each read the other's hello, so that a
    census in a test counts only what the test does."""
    tx, rx = fdpass.FDChannel.pair()
    r, w = os.pipe()
    with tx, rx:
        tx.send_fd(r)
        rx.send_fd(r)
        os.close(tx.recv_fd())
        os.close(rx.recv_fd())
        os.close(r)
        os.close(w)
        yield tx, rx


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_max_fds_is_at_least_three() -> None:
    assert fdpass.MAX_FDS >= 3


def test_send_fd_and_recv_fd(pair: tuple[fdpass.FDChannel, fdpass.FDChannel],
                             pipe: tuple[int, int]) -> None:
    tx, rx = pair
    r, w = pipe
    tx.send_fd(w)
    fd = rx.recv_fd()
    assert fd != w
    os.write(fd, b"via a duplicate")
    os.close(fd)
    assert os.read(r, 64) == b"via a duplicate"


def test_send_fds_with_data_and_recv_message(
        pair: tuple[fdpass.FDChannel, fdpass.FDChannel], pipe: tuple[int, int]) -> None:
    tx, rx = pair
    r, w = pipe
    a, b = socket.socketpair()
    with a, b:
        tx.send_fds([w, a, w], b"payload")
        data, fds = rx.recv_message(64)
        assert data == b"payload" and len(fds) == 3
        os.write(fds[0], b"1")  # in the order sent
        os.write(fds[2], b"2")
        with socket.socket(fileno=fds[1]) as s:
            s.sendall(b"socket")
        os.close(fds[0])
        os.close(fds[2])
        assert os.read(r, 2) == b"12"
        assert b.recv(16) == b"socket"


def test_recv_fds(pair: tuple[fdpass.FDChannel, fdpass.FDChannel], pipe: tuple[int, int]) -> None:
    tx, rx = pair
    tx.send_fds(list(pipe))
    fds = rx.recv_fds()
    assert len(fds) == 2
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize(("opened", "expected"), [("rb", "rb"), ("wb", "wb"), ("r+b", "rb+")])
def test_recv_file_mode_follows_the_handle(
        pair: tuple[fdpass.FDChannel, fdpass.FDChannel], opened: str, expected: str) -> None:
    tx, rx = pair
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "f")
        with open(path, "wb") as f:
            f.write(b"content")
        with open(path, opened) as f:
            tx.send_fd(f)
        with rx.recv_file() as received:
            assert received.mode == expected


def test_recv_file_of_a_pipe(pair: tuple[fdpass.FDChannel, fdpass.FDChannel],
                             pipe: tuple[int, int]) -> None:
    tx, rx = pair
    r, w = pipe
    tx.send_fd(r)
    tx.send_fd(w)
    with rx.recv_file() as reader, rx.recv_file() as writer:
        assert (reader.mode, writer.mode) == ("rb", "wb")
        writer.write(b"line\n")
        writer.flush()
        assert reader.readline() == b"line\n"


def test_recv_file_text_mode(pair: tuple[fdpass.FDChannel, fdpass.FDChannel],
                             pipe: tuple[int, int]) -> None:
    tx, rx = pair
    r, w = pipe
    tx.send_fd(r)
    os.write(w, "é\n".encode())
    with rx.recv_file("r", encoding="utf-8") as f:
        assert f.readline() == "é\n"


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"mode": "rq"}, ValueError),
    ({"mode": "rb", "encoding": "utf-8"}, ValueError),
    ({"mode": "r", "buffering": 0}, ValueError),
    ({"mode": "r", "encoding": "no-such-codec"}, LookupError),
    ({"mode": "r", "newline": "x"}, ValueError),
])
def test_recv_file_refuses_bad_arguments_before_receiving(
        pair: tuple[fdpass.FDChannel, fdpass.FDChannel], pipe: tuple[int, int],
        kwargs: dict[str, object], error: type[Exception]) -> None:
    tx, rx = pair
    tx.send_fd(pipe[0])
    with pytest.raises(error):
        rx.recv_file(**kwargs)  # type: ignore[arg-type]
    os.close(rx.recv_fd())  # nothing was consumed


def test_recv_socket(pair: tuple[fdpass.FDChannel, fdpass.FDChannel]) -> None:
    tx, rx = pair
    a, b = socket.socketpair()
    with a, b:
        tx.send_fd(a)
        with rx.recv_socket() as s:
            assert s.family == a.family and s.type == socket.SOCK_STREAM
            s.sendall(b"shared")
            assert b.recv(16) == b"shared"


def test_recv_socket_of_a_pipe_is_enotsock_and_closes_it(
        pair: tuple[fdpass.FDChannel, fdpass.FDChannel], pipe: tuple[int, int]) -> None:
    tx, rx = pair
    tx.send_fd(pipe[1])
    before = open_handles()
    with pytest.raises(OSError) as caught:
        rx.recv_socket()
    assert caught.value.errno == errno.ENOTSOCK
    assert open_handles() <= before


def test_more_than_maxfds_is_a_protocol_error_and_all_are_closed(
        pair: tuple[fdpass.FDChannel, fdpass.FDChannel], pipe: tuple[int, int]) -> None:
    tx, rx = pair
    tx.send_fds([pipe[0], pipe[1], pipe[0]])
    before = open_handles()
    with pytest.raises(fdpass.ProtocolError):
        rx.recv_fds(2)
    assert open_handles() <= before
    tx.send_fd(pipe[0])
    os.close(rx.recv_fd())  # still usable


def test_a_message_without_a_descriptor_is_a_protocol_error_for_recv_fd(
        pair: tuple[fdpass.FDChannel, fdpass.FDChannel]) -> None:
    tx, rx = pair
    tx._sock.sendall(struct.pack("<4sBBHI", b"FDPW", 1, 1, 0, 3) + b"abc")
    with pytest.raises(fdpass.ProtocolError):
        rx.recv_fd()


def test_another_frame_version_is_a_protocol_error() -> None:
    a, b = socket.socketpair()
    with a, fdpass.FDChannel(b) as rx:
        a.sendall(struct.pack("<4sBBHI", b"FDPW", 2, 0, 0, 4) + os.getpid().to_bytes(4, "little"))
        rx.settimeout(5.0)
        with pytest.raises(fdpass.ProtocolError, match="version 2"):
            rx.recv_message(16)


@pytest.mark.parametrize("bad", [None, 1.5, "3", b"3"])
def test_bad_arguments_raise_before_anything_is_sent(
        pair: tuple[fdpass.FDChannel, fdpass.FDChannel], bad: object) -> None:
    tx, rx = pair
    with pytest.raises(TypeError):
        tx.send_fd(bad)  # type: ignore[arg-type]
    rx.settimeout(0.0)
    with pytest.raises(BlockingIOError):
        rx.recv_message(16)


def test_argument_values(pair: tuple[fdpass.FDChannel, fdpass.FDChannel],
                         pipe: tuple[int, int]) -> None:
    tx, rx = pair
    with pytest.raises(ValueError):
        tx.send_fd(-1)
    with pytest.raises(OverflowError):
        tx.send_fd(2**40)
    with pytest.raises(ValueError):
        tx.send_fds([])
    with pytest.raises(ValueError):
        tx.send_fds([pipe[0]] * (fdpass.MAX_FDS + 1))
    with pytest.raises(ValueError):
        tx.send_fds([pipe[0]], b"")
    closed = open(os.devnull, "rb")
    closed.close()
    with pytest.raises(ValueError):
        tx.send_fd(closed)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as caught:
        tx.send_fd(r)
    assert caught.value.errno == errno.EBADF
    for maxfds in (0, fdpass.MAX_FDS + 1):
        with pytest.raises(ValueError):
            rx.recv_fds(maxfds)
    with pytest.raises(ValueError):
        rx.recv_message(0)


def test_timeouts(pair: tuple[fdpass.FDChannel, fdpass.FDChannel]) -> None:
    _, rx = pair
    rx.settimeout(0.2)
    assert rx.gettimeout() == 0.2
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        rx.recv_fd()
    assert 0.15 < time.monotonic() - started < 5
    rx.setblocking(False)
    with pytest.raises(BlockingIOError):
        rx.recv_fd()
    rx.setblocking(True)
    assert rx.gettimeout() is None


def test_close_wakes_a_waiting_receive(pair: tuple[fdpass.FDChannel, fdpass.FDChannel]) -> None:
    _, rx = pair
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            rx.recv_fd()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    rx.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert rx.closed and rx.fileno() == -1
    with pytest.raises(ValueError):
        rx.recv_fd()


def test_what_is_never_taken_is_closed_when_the_receiver_closes(
        pipe: tuple[int, int]) -> None:
    before = handle_count()
    tx, rx = fdpass.FDChannel.pair()
    with tx:
        a, b = socket.socketpair()
        with a, b:
            for _ in range(5):
                tx.send_fds([pipe[0], a, pipe[1]], b"never taken")
        time.sleep(0.1)
        rx.close()
    assert handle_count() <= before


def test_peer_end_of_stream_and_broken_pipe(pipe: tuple[int, int]) -> None:
    tx, rx = fdpass.FDChannel.pair()
    with tx, rx:
        tx.send_fd(pipe[0])  # learns the peer's pid
        os.close(rx.recv_fd())
        rx.close()
        with pytest.raises(BrokenPipeError):
            for _ in range(100):
                tx.send_fd(pipe[0])
                time.sleep(0.01)
    tx, rx = fdpass.FDChannel.pair()
    with tx, rx:
        tx.close()
        with pytest.raises(EOFError):
            rx.recv_fd()


def test_wrapping_a_descriptor_and_closefd(pipe: tuple[int, int]) -> None:
    a, b = socket.socketpair()
    with a, b:
        with fdpass.FDChannel(a.fileno(), closefd=False) as tx, fdpass.FDChannel(b) as rx:
            assert "FDChannel" in repr(tx)
            tx.send_fd(pipe[0])
            os.close(rx.recv_fd())
        assert a.fileno() != -1 and b.fileno() == -1


def test_an_unconnected_socket_or_datagram_socket_is_refused() -> None:
    with socket.socket() as unconnected, pytest.raises(OSError):
        fdpass.FDChannel(unconnected, closefd=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
        with pytest.raises(ValueError):
            fdpass.FDChannel(dgram, closefd=False)
        with pytest.raises((ValueError, OSError)):  # Wine cannot wrap a UDP socket by number
            fdpass.FDChannel(dgram.fileno(), closefd=False)
        gc.collect()
        dgram.bind(("127.0.0.1", 0))  # still the caller's, still open


# --- across two processes ----------------------------------------------------


def test_send_to_another_process() -> None:
    """Files, pipes and sockets, one at a time and together."""
    r, w = os.pipe()
    mine, theirs = socket.socketpair()
    with tempfile.TemporaryDirectory() as folder, mine, theirs:
        path = os.path.join(folder, "f")
        with Peer("channel-receiver", "4") as peer, fdpass.FDChannel(peer.sock, closefd=False) as ch:
            with open(path, "wb") as f:
                ch.send_fds([f], b"f")
                ch.send_fds([w], b"p")
                ch.send_fds([theirs], b"s")
                ch.send_fds([f, w, theirs], b"fps")
            os.close(w)
            assert peer.finish() == "received 4"
        assert os.read(r, 64) == b"p1p3"
        assert mine.recv(64) == b"s2s3"
        with open(path, "rb") as f:
            assert f.read() == b"f0f3"
    os.close(r)


def test_receive_from_another_process() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "f")
        with Peer("channel-sender", path) as peer, fdpass.FDChannel(peer.sock, closefd=False) as ch:
            os.close(ch.recv_fd())
            s = ch.recv_socket()
            f = ch.recv_file()
            assert f.mode == "wb"
            data, fds = ch.recv_message(16)
            assert data == b"three" and len(fds) == 3
            reader = os.fdopen(fds[0], "rb")
            assert reader.read() == b"through the pipe"
            reader.close()
            socket.socket(fileno=fds[1]).close()
            os.close(fds[2])
            with s:
                assert s.recv(64) == b"through the socket"
            f.write(b"written by the receiver")
            f.close()
            r, w = os.pipe()
            ch.send_fds([r], b"done")
            os.close(r)
            os.close(w)
            assert peer.finish() == "sent"
        with open(path, "rb") as f2:
            assert f2.read() == b"written by the receiver"


def test_no_handle_leaks_in_either_process_over_200_round_trips() -> None:
    r, w = os.pipe()
    with Peer("round-trips", "200") as peer, fdpass.FDChannel(peer.sock, closefd=False) as ch:
        ch.send_fd(r)  # the channel's own handles (the peer's process) exist from here
        os.close(ch.recv_fd())
        before = handle_count()
        for _ in range(199):
            ch.send_fd(r)
            os.close(ch.recv_fd())
        after = handle_count()
        ch.send_fds([r], b"end")
        peer_before, peer_after = map(int, peer.finish().split())
    os.close(r)
    os.close(w)
    assert after == before
    assert peer_after == peer_before


def test_what_a_dead_sender_sent_and_nobody_took_is_closed_with_the_channel() -> None:
    before = handle_count()
    with Peer("send-and-exit") as peer:
        with fdpass.FDChannel(peer.sock, closefd=False):
            peer.process.wait(60)
            # the three handles are in this process now, in a frame not taken
        assert peer.finish() == "exiting"
    assert handle_count() <= before


def test_a_peer_that_is_gone_gives_broken_pipe() -> None:
    r, w = os.pipe()
    with Peer("hold") as peer, fdpass.FDChannel(peer.sock, closefd=False) as ch:
        ch.send_fds([r], b"x")  # the hold role reads one message, then waits for EOF
        peer.process.kill()
        peer.process.wait(60)
        with pytest.raises(BrokenPipeError):
            for _ in range(100):
                ch.send_fd(r)
                time.sleep(0.01)
    os.close(r)
    os.close(w)


def test_a_message_longer_than_bufsize_is_a_protocol_error_and_its_handles_closed(
        pair: tuple[fdpass.FDChannel, fdpass.FDChannel], pipe: tuple[int, int]) -> None:
    tx, rx = pair
    tx.send_fds([pipe[0], pipe[1]], b"x" * 100)
    before = open_handles()
    with pytest.raises(fdpass.ProtocolError, match="bufsize"):
        rx.recv_message(10)
    assert open_handles() <= before
    tx.send_fds([pipe[0]], b"short")
    data, fds = rx.recv_message(10)  # the channel is still usable
    assert data == b"short"
    os.close(fds[0])


def test_a_full_socket_refuses_a_nonblocking_send_before_duplicating(
        pair: tuple[fdpass.FDChannel, fdpass.FDChannel], pipe: tuple[int, int]) -> None:
    """BlockingIOError once the peer's buffer is full; what was sent is closed
    with the receiving channel, and the refused send made no handle."""
    tx, rx = pair
    before = handle_count()
    tx.setblocking(False)
    with pytest.raises(BlockingIOError):
        for _ in range(10_000):
            tx.send_fds([pipe[0]], b"x" * 65536)
    after_refusal = handle_count()
    rx.close()
    assert handle_count() < after_refusal
    assert handle_count() <= before
