"""recv_file, recv_socket and peer_credentials: the descriptor becomes an
object that owns it, or is closed before the exception leaves."""

from __future__ import annotations

import enum
import errno
import io
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import fdpass
from support import peer_pid, python_child, same_file

Pair = tuple[fdpass.FDChannel, fdpass.FDChannel]


@pytest.fixture
def pair() -> Iterator[Pair]:
    tx, rx = fdpass.FDChannel.pair()
    with tx, rx:
        yield tx, rx


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.write_bytes(b"hello\n")
    return path


def send_opened(tx: fdpass.FDChannel, path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        tx.send_fd(fd)
    finally:
        os.close(fd)


def assert_in_step(tx: fdpass.FDChannel, rx: fdpass.FDChannel) -> None:
    """After a failed conversion the next message is received whole."""
    r, w = os.pipe()
    try:
        tx.send_fd(w)
        got = rx.recv_fd()
        assert same_file(got, w)
        os.close(got)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    ("flags", "mode", "kind", "after"),
    [
        (os.O_RDONLY, "rb", io.BufferedReader, b"hello\n"),
        (os.O_WRONLY, "wb", io.BufferedWriter, b"more\n\n"),
        (os.O_RDWR, "rb+", io.BufferedRandom, b"hello\nmore\n"),
        (os.O_WRONLY | os.O_APPEND, "ab", io.BufferedWriter, b"hello\nmore\n"),
        (os.O_RDWR | os.O_APPEND, "ab+", io.BufferedRandom, b"hello\nmore\n"),
    ],
    ids=["rdonly", "wronly", "rdwr", "wronly-append", "rdwr-append"],
)
def test_mode_follows_access_flags(
    pair: Pair, data_file: Path, flags: int, mode: str, kind: type[io.IOBase], after: bytes
) -> None:
    """Reads what is there, writes where the descriptor says (the start,
    or the end with O_APPEND), and closing the file closes the descriptor."""
    tx, rx = pair
    send_opened(tx, data_file, flags)
    with rx.recv_file() as f:
        assert isinstance(f, kind)
        assert f.mode == mode
        fd = f.name
        assert isinstance(fd, int)
        if f.readable():  # append modes start at the end, as open()'s do
            f.seek(0)
            assert f.read() == b"hello\n"
        if f.writable():
            f.write(b"more\n")
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF
    assert data_file.read_bytes() == after


def test_text_mode_with_encoding(pair: Pair, tmp_path: Path) -> None:
    tx, rx = pair
    path = tmp_path / "text"
    path.write_bytes("café\r\nthé\n".encode("latin-1"))
    send_opened(tx, path, os.O_RDWR)
    with rx.recv_file("r+", encoding="latin-1", newline="") as f:
        assert isinstance(f, io.TextIOWrapper)
        assert f.encoding == "latin-1"
        assert f.readlines() == ["café\r\n", "thé\n"]
        f.write("crème\n")
    assert path.read_bytes().endswith("crème\n".encode("latin-1"))


def test_text_write_only(pair: Pair, tmp_path: Path) -> None:
    tx, rx = pair
    path = tmp_path / "out"
    path.touch()
    send_opened(tx, path, os.O_WRONLY)
    with rx.recv_file("w", encoding="utf-16") as f:
        f.write("Grüße")
    assert path.read_bytes().decode("utf-16") == "Grüße"


def test_unbuffered(pair: Pair, data_file: Path) -> None:
    tx, rx = pair
    send_opened(tx, data_file, os.O_RDONLY)
    with rx.recv_file("rb", buffering=0) as f:
        assert isinstance(f, io.FileIO)
        assert f.read() == b"hello\n"


def test_pipe_ends(pair: Pair, pipe: tuple[int, int]) -> None:
    tx, rx = pair
    r, w = pipe
    tx.send_fd(w)
    with rx.recv_file() as writer:
        assert writer.mode == "wb"
        writer.write(b"through the pipe")
    assert os.read(r, 100) == b"through the pipe"


@pytest.mark.parametrize(
    ("flags", "mode", "words"),
    [
        (os.O_WRONLY, "r", "reads, but the received descriptor is write-only"),
        (os.O_WRONLY, "rb+", "reads, but the received descriptor is write-only"),
        (os.O_RDONLY, "w", "writes, but the received descriptor is read-only"),
        (os.O_RDONLY, "ab", "writes, but the received descriptor is read-only"),
        (os.O_RDONLY, "r+", "reads, but|writes, but"),
        (os.O_RDONLY, "xb", "writes, but the received descriptor is read-only"),
    ],
)
def test_mode_the_descriptor_cannot_honour(
    pair: Pair, data_file: Path, flags: int, mode: str, words: str
) -> None:
    tx, rx = pair
    send_opened(tx, data_file, flags)
    with pytest.raises(ValueError, match=words):
        rx.recv_file(mode)
    assert_in_step(tx, rx)


@pytest.mark.parametrize(
    ("kwargs", "exception", "words"),
    [
        ({"mode": "rq"}, ValueError, "mode"),
        ({"mode": "rr"}, ValueError, "mode"),
        ({"mode": "rw"}, ValueError, "exactly one"),
        ({"mode": "rbt"}, ValueError, "text and binary"),
        ({"mode": 5}, TypeError, "mode must be a str or None, not int"),
        ({"mode": "rb", "encoding": "utf-8"}, ValueError, "binary mode"),
        ({"encoding": "utf-8"}, ValueError, "binary mode.*encoding"),
        ({"mode": "rb", "newline": ""}, ValueError, "binary mode.*newline"),
        ({"mode": "r", "encoding": "no-such-codec"}, LookupError, "no-such-codec"),
        ({"mode": "r", "encoding": "rot13"}, LookupError, "not a text encoding"),
        ({"mode": "r", "newline": "x"}, ValueError, "newline"),
        ({"mode": "r", "buffering": 0}, ValueError, "unbuffered text"),
        ({"mode": "r", "buffering": "big"}, TypeError, "buffering must be an int"),
        ({"mode": "r", "encoding": 8}, TypeError, "encoding must be a str"),
    ],
    ids=["bad-mode", "twice", "read-and-write", "text-and-binary", "mode-type",
         "binary-encoding", "default-mode-encoding", "binary-newline", "unknown-codec",
         "binary-codec", "bad-newline", "unbuffered-text", "buffering-type",
         "encoding-type"],
)
def test_arguments_open_would_refuse_consume_nothing(
    pair: Pair, data_file: Path, kwargs: dict[str, object], exception: type[Exception], words: str
) -> None:
    tx, rx = pair
    rx.settimeout(5)  # a consumed message fails the test rather than hang it
    send_opened(tx, data_file, os.O_RDWR)
    with pytest.raises(exception, match=words):
        rx.recv_file(**kwargs)  # type: ignore[call-overload]
    with rx.recv_file() as f:  # the message is still there
        assert f.read() == b"hello\n"
    if "mode" in kwargs:  # open() agrees (its default mode is text, recv_file's binary)
        with pytest.raises(exception):
            open(data_file, **kwargs)  # type: ignore[call-overload]


def test_directory(pair: Pair, tmp_path: Path) -> None:
    tx, rx = pair
    send_opened(tx, tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    with pytest.raises(IsADirectoryError):
        rx.recv_file()
    assert_in_step(tx, rx)


@pytest.mark.skipif(not hasattr(os, "O_PATH"), reason="O_PATH is Linux's")
def test_o_path_descriptor(pair: Pair, data_file: Path) -> None:
    tx, rx = pair
    send_opened(tx, data_file, os.O_PATH)
    with pytest.raises(ValueError, match="O_PATH"):
        rx.recv_file()
    assert_in_step(tx, rx)


def test_recv_file_at_end_of_stream(pair: Pair) -> None:
    tx, rx = pair
    tx.close()
    with pytest.raises(EOFError):
        rx.recv_file()


def test_recv_file_over_every_socket_type(
    channels: Pair, data_file: Path
) -> None:
    tx, rx = channels
    send_opened(tx, data_file, os.O_RDONLY)
    with rx.recv_file() as f:
        assert f.read() == b"hello\n"


SOCKET_KINDS = [
    (socket.AF_UNIX, socket.SOCK_STREAM),
    (socket.AF_UNIX, socket.SOCK_DGRAM),
    (socket.AF_UNIX, socket.SOCK_SEQPACKET),
    (socket.AF_INET, socket.SOCK_STREAM),
    (socket.AF_INET, socket.SOCK_DGRAM),
    (socket.AF_INET6, socket.SOCK_STREAM),
    (socket.AF_INET6, socket.SOCK_DGRAM),
]


@pytest.mark.parametrize(("family", "kind"), SOCKET_KINDS,
                         ids=[f"{f.name}-{k.name}" for f, k in SOCKET_KINDS])
def test_recv_socket_family_and_type(
    pair: Pair, family: socket.AddressFamily, kind: socket.SocketKind
) -> None:
    tx, rx = pair
    try:
        original = socket.socket(family, kind)
    except OSError as e:  # an IPv6-less kernel, say
        pytest.skip(f"cannot make a {family.name} socket here: {e}")
    with original:
        tx.send_fd(original)
        with rx.recv_socket() as received:
            assert received.family == family
            assert received.type == kind
            assert received.proto == original.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
            assert received.gettimeout() is None
            assert same_file(received.fileno(), original.fileno())


def test_received_listening_socket_accepts(pair: Pair) -> None:
    tx, rx = pair
    with socket.create_server(("127.0.0.1", 0)) as server:
        tx.send_fd(server)
        with rx.recv_socket() as received, \
                socket.create_connection(server.getsockname()) as client:
            conn, _ = received.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_recv_socket_non_blocking_descriptor(pair: Pair) -> None:
    tx, rx = pair
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        tx.send_fd(b)
        with rx.recv_socket() as received:
            assert received.gettimeout() == 0.0
            with pytest.raises(BlockingIOError):
                received.recv(1)


@pytest.mark.parametrize("what", ["pipe", "file"])
def test_recv_socket_refuses_a_non_socket(
    pair: Pair, pipe: tuple[int, int], data_file: Path, what: str
) -> None:
    tx, rx = pair
    if what == "pipe":
        tx.send_fd(pipe[0])
    else:
        send_opened(tx, data_file, os.O_RDONLY)
    with pytest.raises(OSError, match="not a socket") as refused:
        rx.recv_socket()
    assert refused.value.errno == errno.ENOTSOCK
    assert_in_step(tx, rx)


def test_send_fd_takes_a_channel(pair: Pair) -> None:
    """A channel is an object with fileno(): its socket can be passed."""
    tx, rx = pair
    first, second = fdpass.FDChannel.pair()
    with first, second:
        tx.send_fd(first)
        with rx.recv_socket() as received:
            assert same_file(received.fileno(), first.fileno())
            with fdpass.FDChannel(received, closefd=False) as passed:
                passed.send_fds([rx, tx])
            got = second.recv_fds()
            assert [same_file(g, c.fileno()) for g, c in zip(got, (rx, tx))] == [True, True]
            for fd in got:
                os.close(fd)


def test_peer_credentials_of_a_socketpair(pair: Pair) -> None:
    tx, rx = pair
    creds = rx.peer_credentials()
    assert isinstance(creds, fdpass.Credentials)
    assert creds == (peer_pid(os.getpid()), os.getuid(), os.getgid())
    assert creds.pid == peer_pid(os.getpid())


CONNECTING_CHILD = """
import os, sys, fdpass
with fdpass.FDChannel.connect(sys.argv[1]) as ch:
    print(os.getpid(), flush=True)
    ch.recv_message(1, 1)
"""


def test_peer_credentials_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        with python_child(CONNECTING_CHILD, str(path)) as child:
            conn, _ = server.accept()
            with fdpass.FDChannel(conn) as ch:
                assert child.stdout is not None
                child_pid = int(child.stdout.readline())
                assert ch.peer_credentials() == (peer_pid(child_pid), os.getuid(), os.getgid())
                ch.send_fds([ch], data=b"!")
            assert child.wait(timeout=60) == 0


def test_peer_credentials_without_a_peer() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as lone, \
            fdpass.FDChannel(lone, closefd=False) as ch:
        with pytest.raises(OSError) as none:
            ch.peer_credentials()
        assert none.value.errno == errno.ENOTCONN


def test_converters_on_a_closed_channel() -> None:
    tx, rx = fdpass.FDChannel.pair()
    tx.close()
    rx.close()
    for call in (rx.recv_file, rx.recv_socket, rx.peer_credentials):
        with pytest.raises(ValueError, match="closed channel"):
            call()


@pytest.mark.skipif(sys.version_info < (3, 10), reason="open() knows encoding='locale' from 3.10")
def test_recv_file_takes_the_locale_encoding_as_open_does(tmp_path: Path) -> None:
    path = tmp_path / "text"
    path.write_text("hello\n")
    tx, rx = fdpass.FDChannel.pair()
    with tx, rx, open(path, "rb") as f:
        tx.send_fd(f)
        with rx.recv_file("r", encoding="locale") as text:
            assert text.read() == "hello\n"


def layers(f: object) -> list[tuple[object, ...]]:
    """What open() built: each layer's class and the attributes open()
    sets, the descriptor's own number named "fd"."""
    number = f.fileno()  # type: ignore[attr-defined]
    out: list[tuple[object, ...]] = []
    while f is not None:
        name = getattr(f, "name", None)
        out.append((type(f).__name__, getattr(f, "mode", None), "fd" if name == number else name,
                    getattr(f, "line_buffering", None), getattr(f, "encoding", None),
                    getattr(f, "errors", None)))
        f = getattr(f, "buffer", None) or getattr(f, "raw", None)
    return out


@pytest.mark.parametrize(
    ("mode", "buffering", "encoding"),
    [("rb", -1, None), ("r+b", -1, None), ("b+r", 4096, None), ("ab", 0, None),
     ("w", -1, "utf-8"), ("rt+", 1, "latin-1"), ("r", -1, None), ("at", 64, "ascii"),
     ("wb", 1, None)],
)
@pytest.mark.parametrize("terminal", [False, True], ids=["file", "pty"])
def test_recv_file_builds_what_open_builds(
    pair: Pair, data_file: Path, mode: str, buffering: int, encoding: str | None, terminal: bool
) -> None:
    """recv_file builds open()'s layers itself (to know who owns the
    descriptor on every path): the same classes, modes, names, line
    buffering on a terminal, encodings, and open()'s warning for line
    buffering in binary mode."""
    if terminal:
        primary, secondary = os.openpty()
        os.close(primary)
        fd = secondary
    else:
        fd = os.open(data_file, os.O_RDWR)
    try:
        pair[0].send_fd(fd)
        with warnings.catch_warnings(record=True) as opens:
            warnings.simplefilter("always")
            try:
                expected = open(os.dup(fd), mode, buffering, encoding)
            except io.UnsupportedOperation:  # "+" on a terminal: not seekable
                with pytest.raises(io.UnsupportedOperation, match="not seekable"):
                    pair[1].recv_file(mode, buffering, encoding)
                return
        with warnings.catch_warnings(record=True) as ours:
            warnings.simplefilter("always")
            received = pair[1].recv_file(mode, buffering, encoding)
        with received, expected:
            assert layers(received) == layers(expected)
        assert [(w.category, str(w.message)) for w in ours] == \
            [(w.category, str(w.message)) for w in opens]
    finally:
        os.close(fd)


@pytest.mark.parametrize(("buffering", "refusal"), [(2**40, OverflowError), (1, RuntimeWarning)])
def test_recv_file_refuses_a_buffering_open_would_refuse_before_receiving(
    pair: Pair, data_file: Path, buffering: int, refusal: type[Exception]
) -> None:
    # buffering=1 in binary mode: open()'s warning, made an error, comes
    # before open() opens anything.
    tx, rx = pair
    rx.settimeout(5)  # a consumed message fails the test rather than hang it
    send_opened(tx, data_file, os.O_RDONLY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for mode in (None, "rb"):
            with pytest.raises(refusal):
                rx.recv_file(mode, buffering)
        with pytest.raises(refusal):
            open(data_file, "rb", buffering)
    with rx.recv_file() as f:  # the message is still there
        assert f.read() == b"hello\n"


class Mode(str, enum.Enum):
    """Modes as a careless caller may hold them: open() reads the string."""
    READ = "r"
    READ_BYTES = "rb"
    BOTH = "r+b"


@pytest.mark.parametrize("mode", list(Mode))
def test_recv_file_takes_a_mode_of_a_str_subclass_as_open_does(
    pair: Pair, data_file: Path, mode: Mode
) -> None:
    tx, rx = pair
    send_opened(tx, data_file, os.O_RDWR)
    with rx.recv_file(mode) as received, open(os.open(data_file, os.O_RDWR), mode) as expected:
        assert layers(received) == layers(expected)
        assert received.read() == expected.read()
