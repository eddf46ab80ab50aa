"""Bad arguments raise before anything reaches the kernel."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

import fdpass
from fdpass import FDChannel


@pytest.fixture
def pair() -> Iterator[tuple[FDChannel, FDChannel]]:
    tx, rx = FDChannel.pair()
    with tx, rx:
        yield tx, rx
        # Nothing bad may have reached the peer: it has no message waiting.
        rx.settimeout(0)
        with pytest.raises(BlockingIOError):
            rx.recv_message(16)


def closed_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


def closed_file() -> object:
    f = tempfile.TemporaryFile()
    f.close()
    return f


def closed_socket() -> object:
    a, b = socket.socketpair()
    a.close()
    b.close()
    return a


BAD = [
    pytest.param(None, TypeError, "not NoneType", id="None"),
    pytest.param(1.0, TypeError, "not float", id="float"),
    pytest.param("0", TypeError, "not str", id="str"),
    pytest.param(b"0", TypeError, "not bytes", id="bytes"),
    pytest.param(-1, ValueError, "non-negative, got -1", id="negative"),
    pytest.param(2**32, OverflowError, "4294967296 is beyond the range of a C int", id="2**32"),
    pytest.param(2**100, OverflowError, "beyond the range of a C int", id="2**100"),
    pytest.param(-(2**100), ValueError, "non-negative", id="-2**100"),
]


@pytest.mark.parametrize("bad,exc,message", BAD)
def test_send_fd_rejects(pair: tuple[FDChannel, FDChannel], bad: object,
                         exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        pair[0].send_fd(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad,exc,message", BAD)
def test_send_fds_rejects_any_bad_item(pair: tuple[FDChannel, FDChannel], bad: object,
                                       exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        pair[0].send_fds([0, 1, bad])  # type: ignore[list-item]


@pytest.mark.parametrize("which", ["INT_MAX", "just closed"])
def test_closed_descriptor_numbers_give_ebadf_naming_them(
        pair: tuple[FDChannel, FDChannel], which: str) -> None:
    fd = 2**31 - 1 if which == "INT_MAX" else closed_fd()
    with pytest.raises(OSError, match=f"descriptor {fd} is not open") as info:
        pair[0].send_fd(fd)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError, match=f"descriptor {fd} is not open"):
        pair[0].send_fds([0, fd])


def test_closed_file_object(pair: tuple[FDChannel, FDChannel]) -> None:
    with pytest.raises(ValueError, match="closed file"):
        pair[0].send_fd(closed_file())  # type: ignore[arg-type]


def test_closed_socket_object(pair: tuple[FDChannel, FDChannel]) -> None:
    with pytest.raises(ValueError, match=r"socket.fileno\(\) returned -1: is it closed"):
        pair[0].send_fd(closed_socket())  # type: ignore[arg-type]


def test_fileno_returning_a_non_int(pair: tuple[FDChannel, FDChannel]) -> None:
    class Odd:
        def fileno(self) -> str:
            return "3"

    with pytest.raises(TypeError, match=r"Odd.fileno\(\) returned str, not int"):
        pair[0].send_fd(Odd())  # type: ignore[arg-type]


def test_empty_list(pair: tuple[FDChannel, FDChannel]) -> None:
    with pytest.raises(ValueError, match="at least one descriptor"):
        pair[0].send_fds([])


def test_too_many(pair: tuple[FDChannel, FDChannel]) -> None:
    with pytest.raises(ValueError, match=f"at most {fdpass.MAX_FDS} descriptors .* got 254"):
        pair[0].send_fds([0] * (fdpass.MAX_FDS + 1))


def test_not_iterable(pair: tuple[FDChannel, FDChannel]) -> None:
    with pytest.raises(TypeError):
        pair[0].send_fds(0)  # type: ignore[arg-type]


def test_empty_data(pair: tuple[FDChannel, FDChannel]) -> None:
    with pytest.raises(ValueError, match="data must not be empty"):
        pair[0].send_fds([0], data=b"")


def test_data_must_be_bytes_like(pair: tuple[FDChannel, FDChannel]) -> None:
    with pytest.raises(TypeError):
        pair[0].send_fds([0], data="x")  # type: ignore[arg-type]
