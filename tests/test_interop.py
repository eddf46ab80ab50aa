"""Wire compatibility, shown against the real peers: Perl's IO::FDPass in a
perl process, Python's socket.send_fds/recv_fds and multiprocessing's
sendfds/recvfds."""

from __future__ import annotations

import errno
import multiprocessing
import multiprocessing.reduction
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import fdpass
from support import close_all, find_peer, run_peer, same_file

pytestmark = pytest.mark.interop

CONTENT = "passed between languages\n"


@pytest.fixture(scope="module")
def perl() -> str:
    """perl with IO::FDPass: these tests fail rather than skip without it."""
    return find_peer("perl", ["-MIO::FDPass", "-e", "1"], "libio-fdpass-perl")


def run_perl(perl: str, code: str, sock: socket.socket, *args: str) -> str:
    """Run code with the socket's descriptor number as $ARGV[0]; its stdout."""
    return run_peer([perl, "-MIO::FDPass", "-e", code], sock, *args)


@pytest.fixture
def content_file(tmp_path: Path) -> Path:
    path = tmp_path / "content"
    path.write_text(CONTENT)
    return path


PERL_SENDS_FILE = """
open my $fh, "<", $ARGV[1] or die "open: $!";
IO::FDPass::send $ARGV[0], fileno $fh or die "send failed: $!";
"""

PERL_RECEIVES_AND_PRINTS = """
my $fd = IO::FDPass::recv $ARGV[0];
$fd >= 0 or die "recv failed: $!";
open my $fh, "+<&=$fd" or die "unable to convert file descriptor to handle: $!";
print <$fh>;
"""

PERL_RECEIVES_AND_WRITES = """
my $fd = IO::FDPass::recv $ARGV[0];
$fd >= 0 or die "recv failed: $!";
open my $fh, ">&=$fd" or die "open: $!";
print $fh "written by perl\\n";
close $fh or die "close: $!";
"""

PERL_RECEIVES_STATUS = """
my $fd = IO::FDPass::recv $ARGV[0];
print $fd < 0 ? "refused " . ($! + 0) : "accepted";
"""


def test_perl_sends_to_channel(
    perl: str, stream: tuple[socket.socket, socket.socket], content_file: Path
) -> None:
    ours, theirs = stream
    run_perl(perl, PERL_SENDS_FILE, theirs, str(content_file))
    with fdpass.FDChannel(ours, closefd=False) as ch, ch.recv_file("r") as f:
        assert f.read() == CONTENT


def test_perl_sends_to_functional_recv(
    perl: str, stream: tuple[socket.socket, socket.socket], content_file: Path
) -> None:
    ours, theirs = stream
    run_perl(perl, PERL_SENDS_FILE, theirs, str(content_file))
    fd = fdpass.recv(ours.fileno())
    assert fd >= 0, os.strerror(fdpass.get_errno())
    with open(fd) as f:
        assert f.read() == CONTENT


def test_perl_sends_many_in_step(
    perl: str, stream: tuple[socket.socket, socket.socket], content_file: Path
) -> None:
    """Ten messages back to back arrive as ten descriptors, none merged."""
    ours, theirs = stream
    run_perl(perl, f"for (1..10) {{ {PERL_SENDS_FILE} }}", theirs, str(content_file))
    with fdpass.FDChannel(ours, closefd=False) as ch:
        for _ in range(10):
            with ch.recv_file("r") as f:
                assert f.read() == CONTENT


def test_channel_sends_to_perl(
    perl: str, stream: tuple[socket.socket, socket.socket], content_file: Path
) -> None:
    ours, theirs = stream
    with fdpass.FDChannel(ours, closefd=False) as ch, open(content_file, "rb") as f:
        ch.send_fd(f)
    assert run_perl(perl, PERL_RECEIVES_AND_PRINTS, theirs) == CONTENT


def test_functional_send_to_perl(
    perl: str, stream: tuple[socket.socket, socket.socket], content_file: Path
) -> None:
    ours, theirs = stream
    with open(content_file, "rb") as f:
        assert fdpass.send(ours.fileno(), f.fileno())
    assert run_perl(perl, PERL_RECEIVES_AND_PRINTS, theirs) == CONTENT


def test_perl_writes_to_a_passed_pipe(
    perl: str, stream: tuple[socket.socket, socket.socket], pipe: tuple[int, int]
) -> None:
    ours, theirs = stream
    r, w = pipe
    with fdpass.FDChannel(ours, closefd=False) as ch:
        ch.send_fd(w)
    run_perl(perl, PERL_RECEIVES_AND_WRITES, theirs)
    assert os.read(r, 100) == b"written by perl\n"


def test_perl_refuses_any_byte_but_zero(
    perl: str, stream: tuple[socket.socket, socket.socket], pipe: tuple[int, int]
) -> None:
    """Why send_fd's byte is 0x00: IO::FDPass's recv fails with EDOM on
    any other, so only that byte keeps Perl peers working."""
    ours, theirs = stream
    with fdpass.FDChannel(ours, closefd=False) as ch:
        ch.send_fd(pipe[0])
        ch.send_fds([pipe[0]], data=b"\x01")
    assert run_perl(perl, PERL_RECEIVES_STATUS, theirs) == "accepted"
    assert run_perl(perl, PERL_RECEIVES_STATUS, theirs) == f"refused {errno.EDOM}"


@pytest.fixture
def tx_rx(
    stream: tuple[socket.socket, socket.socket],
) -> Iterator[tuple[socket.socket, fdpass.FDChannel]]:
    ours, peer = stream
    with fdpass.FDChannel(ours, closefd=False) as ch:
        yield peer, ch


def test_socket_send_fds_to_channel(
    tx_rx: tuple[socket.socket, fdpass.FDChannel], pipe: tuple[int, int]
) -> None:
    peer, ch = tx_rx
    socket.send_fds(peer, [b"x"], [pipe[1]])
    socket.send_fds(peer, [b"two"], list(pipe))
    got = ch.recv_fd()
    assert same_file(got, pipe[1])
    os.close(got)
    data, fds = ch.recv_message(3)
    assert data == b"two"
    assert [same_file(a, b) for a, b in zip(fds, pipe)] == [True, True]
    close_all(fds)


def test_channel_to_socket_recv_fds(
    tx_rx: tuple[socket.socket, fdpass.FDChannel], pipe: tuple[int, int]
) -> None:
    peer, ch = tx_rx
    ch.send_fd(pipe[0])
    ch.send_fds(pipe, data=b"ab")
    data, fds, flags, _ = socket.recv_fds(peer, 1, 1)
    assert (data, len(fds), flags) == (b"\0", 1, 0)
    assert same_file(fds[0], pipe[0])
    close_all(fds)
    data, fds, flags, _ = socket.recv_fds(peer, 2, 2)
    assert (data, flags) == (b"ab", 0)
    assert [same_file(a, b) for a, b in zip(fds, pipe)] == [True, True]
    close_all(fds)


def test_multiprocessing_sendfds_to_channel(
    tx_rx: tuple[socket.socket, fdpass.FDChannel], pipe: tuple[int, int]
) -> None:
    """multiprocessing's count byte (here 0x01, 0x02) is read like 0x00."""
    peer, ch = tx_rx
    multiprocessing.reduction.sendfds(peer, [pipe[0]])
    multiprocessing.reduction.sendfds(peer, list(pipe))
    got = ch.recv_fd()
    assert same_file(got, pipe[0])
    os.close(got)
    fds = ch.recv_fds()
    assert [same_file(a, b) for a, b in zip(fds, pipe)] == [True, True]
    close_all(fds)


def test_channel_to_multiprocessing_recvfds(
    tx_rx: tuple[socket.socket, fdpass.FDChannel], pipe: tuple[int, int]
) -> None:
    """recvfds wants the count of descriptors as the byte: send_fds' data."""
    peer, ch = tx_rx
    ch.send_fds([pipe[1]], data=b"\x01")
    ch.send_fds(pipe, data=bytes([len(pipe)]))
    fds = multiprocessing.reduction.recvfds(peer, 1)
    assert same_file(fds[0], pipe[1])
    close_all(fds)
    fds = multiprocessing.reduction.recvfds(peer, 2)
    assert [same_file(a, b) for a, b in zip(fds, pipe)] == [True, True]
    close_all(fds)


def test_channel_to_multiprocessing_recv_handle(pipe: tuple[int, int]) -> None:
    """A multiprocessing.Pipe() end takes a descriptor from a channel over
    its partner, and recv_handle() reads it."""
    ours, theirs = multiprocessing.Pipe()
    with ours, theirs, fdpass.FDChannel(ours.fileno(), closefd=False) as ch:
        ch.send_fds([pipe[0]], data=b"\x01")
        got = multiprocessing.reduction.recv_handle(theirs)
        assert same_file(got, pipe[0])
        os.close(got)
