"""Wire compatibility with Ruby, both ways: UNIXSocket#send_io/recv_io and
sendmsg/recvmsg with Socket::AncillaryData.unix_rights, in a ruby process
running tests/peers/peer.rb. Checked by content: what one side writes into
a passed descriptor, the other reads."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import fdpass
from support import (
    PEERS, check_received_files, close_all, find_peer, run_peer, same_file, text_files,
)

pytestmark = pytest.mark.interop

CONTENT = "passed between Python and Ruby\n"


@pytest.fixture(scope="module")
def ruby() -> str:
    return find_peer("ruby", ["-rjson", "-rsocket", "-e", "1"], "ruby")


def run_ruby(ruby: str, mode: str, sock: socket.socket, *args: str) -> str:
    """Run one mode of peer.rb on the socket; its stdout."""
    return run_peer([ruby, str(PEERS / "peer.rb"), mode], sock, *args)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return text_files(tmp_path, 3, CONTENT.strip())


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    made = [os.pipe() for _ in range(3)]
    try:
        yield made
    finally:
        close_all([fd for pair in made for fd in pair])


def wrote(n: int) -> bytes:
    """What peer.rb writes into the n-th descriptor it received."""
    return f"ruby wrote {n}\n".encode()


def by_recv_fd(sock: socket.socket) -> IO[Any]:
    with fdpass.FDChannel(sock, closefd=False) as ch:
        return open(ch.recv_fd())


def by_recv_file(sock: socket.socket) -> IO[Any]:
    with fdpass.FDChannel(sock, closefd=False) as ch:
        return ch.recv_file("r")


def by_recv_message(sock: socket.socket) -> IO[Any]:
    """And the byte Ruby sends with it: 0x00, as IO::FDPass does."""
    with fdpass.FDChannel(sock, closefd=False) as ch:
        data, fds = ch.recv_message(16)
    assert (data, len(fds)) == (b"\0", 1)
    return open(fds[0])


def by_functional_recv(sock: socket.socket) -> IO[Any]:
    fd = fdpass.recv(sock.fileno())
    assert fd >= 0, os.strerror(fdpass.get_errno())
    return open(fd)


@pytest.mark.parametrize("receive", [by_recv_fd, by_recv_file, by_recv_message,
                                     by_functional_recv])
def test_ruby_send_io_to_fdpass(
    ruby: str, stream: tuple[socket.socket, socket.socket], files: list[Path],
    receive: Callable[[socket.socket], IO[Any]],
) -> None:
    ours, theirs = stream
    run_ruby(ruby, "send_io", theirs, str(files[0]))
    with receive(ours) as received, open(files[0]) as original:
        assert same_file(received.fileno(), original.fileno())
        assert received.read() == files[0].read_text()


def send_by_channel(sock: socket.socket, fd: int) -> None:
    with fdpass.FDChannel(sock, closefd=False) as ch:
        ch.send_fd(fd)


def send_by_function(sock: socket.socket, fd: int) -> None:
    assert fdpass.send(sock.fileno(), fd), os.strerror(fdpass.get_errno())


@pytest.mark.parametrize("send", [send_by_channel, send_by_function])
def test_fdpass_to_ruby_recv_io(
    ruby: str, stream: tuple[socket.socket, socket.socket], pipe: tuple[int, int],
    send: Callable[[socket.socket, int], None],
) -> None:
    """Ruby checks the byte (0x00) and writes into the pipe end it got."""
    ours, theirs = stream
    r, w = pipe
    send(ours, w)
    run_ruby(ruby, "recv_io", theirs)
    assert os.read(r, 100) == wrote(0)


@pytest.mark.parametrize("method", ["recv_message", "recv_fds"])
def test_ruby_sendmsg_unix_rights_to_fdpass(
    ruby: str, stream: tuple[socket.socket, socket.socket], files: list[Path], method: str
) -> None:
    """Three files and a payload in one message."""
    ours, theirs = stream
    run_ruby(ruby, "sendmsg", theirs, "from ruby", *map(str, files))
    data = None
    with fdpass.FDChannel(ours, closefd=False) as ch:
        if method == "recv_message":
            data, fds = ch.recv_message(64)
        else:
            fds = ch.recv_fds()
    check_received_files(fds, files)
    assert data == (b"from ruby" if method == "recv_message" else None)


def test_send_fds_to_ruby_recvmsg(
    ruby: str, stream: tuple[socket.socket, socket.socket], pipes: list[tuple[int, int]]
) -> None:
    """Ruby reports the payload and the count, and writes into each end."""
    ours, theirs = stream
    with fdpass.FDChannel(ours, closefd=False) as ch:
        ch.send_fds([w for _, w in pipes], data=b"from fdpass")
    seen = json.loads(run_ruby(ruby, "recvmsg", theirs))
    assert seen == {"payload": list(b"from fdpass"), "fds": len(pipes)}
    assert [os.read(r, 100) for r, _ in pipes] == [wrote(i) for i in range(len(pipes))]


def test_ruby_recv_io_refuses_two_descriptors(
    ruby: str, stream: tuple[socket.socket, socket.socket]
) -> None:
    """recv_io insists on exactly one descriptor: given two, it raises
    SocketError and closes both; the stream stays in step, so the next
    message, of one, is read. Nothing stays open on our side: once our own
    write ends are closed, each pipe reads as ended, so no copy of them is
    left in Ruby or in the socket."""
    ours, theirs = stream
    (r1, w1), (r2, w2) = os.pipe(), os.pipe()
    try:
        with fdpass.FDChannel(ours, closefd=False) as ch:
            ch.send_fds([w1, w2])
            ch.send_fd(w2)
        seen = json.loads(run_ruby(ruby, "recv_io_refuses", theirs))
        expected = (f"file descriptor was not passed (cmsg_len={socket.CMSG_LEN(8)}, "
                    f"{socket.CMSG_LEN(4)} expected)")
        assert seen == {"error": f"SocketError: {expected}", "left_open": []}
        os.close(w1)
        os.close(w2)
        w1 = w2 = -1
        assert os.read(r1, 100) == b""
        assert os.read(r2, 100) == wrote(0)
        assert os.read(r2, 100) == b""
    finally:
        close_all([fd for fd in (r1, w1, r2, w2) if fd >= 0])
