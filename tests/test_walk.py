"""The control-message walk fed what other kernels (and hostile ones) put
in a control buffer, through fdpass._engine.walk_control: lengths beyond
the buffer (macOS reports the untruncated length on MSG_CTRUNC), headers
cut short, a length that would wrap a pointer, credentials too short,
unknown messages, an empty buffer.  The walk must take exactly what is
there, never read past the buffer (the sanitize env's ASAN would see it),
and account for every descriptor."""

from __future__ import annotations

import socket
import struct

import pytest

from fdpass import MAX_FDS
from fdpass._engine import PORTABLE, walk_control
from support import MUSL

SOL_SOCKET = socket.SOL_SOCKET
SCM_RIGHTS = socket.SCM_RIGHTS
SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
SCM_PIDFD = getattr(socket, "SCM_PIDFD", 4)
HEADER = struct.Struct("@Nii")  # struct cmsghdr: size_t cmsg_len; int level, type
SIZE_MAX = 2 ** (8 * struct.calcsize("N")) - 1


def cmsg(level: int, kind: int, data: bytes, length: int | None = None) -> bytes:
    """One control message, padded to CMSG_SPACE; cmsg_len as given, or right."""
    real = socket.CMSG_LEN(len(data))
    body = HEADER.pack(real if length is None else length, level, kind) + data
    return body.ljust(socket.CMSG_SPACE(len(data)), b"\0")


def ints(*values: int) -> bytes:
    return struct.pack(f"{len(values)}i", *values)


def rights(*fds: int, length: int | None = None) -> bytes:
    return cmsg(SOL_SOCKET, SCM_RIGHTS, ints(*fds), length)


def test_well_formed_messages_are_taken_in_order() -> None:
    control = rights(10, 11) + cmsg(SOL_SOCKET, SCM_PIDFD, ints(12)) + rights(13)
    assert walk_control(control, MAX_FDS) == ([10, 11, 13], [12], 3, None)
    assert walk_control(control, 2) == ([10, 11], [12, 13], 3, None)


def test_a_length_beyond_the_buffer_takes_only_what_is_there() -> None:
    # macOS: cmsg_len says 10 descriptors, the buffer holds 2 of them.
    control = rights(20, 21, length=socket.CMSG_LEN(10 * 4))
    assert walk_control(control[:socket.CMSG_LEN(8)], MAX_FDS) == ([20, 21], [], 2, None)
    # A length that runs over what follows: the rest of the buffer is that
    # message's data, read as ints, and no header in it is read as one (the
    # pidfd message's 77 is not taken for a pidfd).
    control = rights(20, length=socket.CMSG_LEN(10 * 4)) + cmsg(SOL_SOCKET, SCM_PIDFD, ints(77))
    data = control[socket.CMSG_LEN(0):]
    expected = [fd for fd in struct.unpack(f"{len(data) // 4}i", data) if fd >= 0]
    assert walk_control(control, MAX_FDS, True) == (
        expected, [], len(expected), (None, None, None, -1))


@pytest.mark.parametrize("length", [SIZE_MAX, SIZE_MAX - 7, 2 ** 63])
def test_a_length_that_would_wrap_a_pointer_is_clamped(length: int) -> None:
    if MUSL and length % 2 ** 32 < socket.CMSG_LEN(0):
        # musl reads cmsg_len's low 32 bits alone: 2 ** 63 is a 0 there,
        # a header shorter than itself, which ends the walk.
        assert walk_control(rights(40, 41, length=length), MAX_FDS) == ([], [], 0, None)
        return
    fds, extra, total, _ = walk_control(rights(40, 41, length=length), MAX_FDS)
    assert fds[:2] == [40, 41] and total == len(fds) <= 2 + 2  # its padding, at most
    assert not extra


@pytest.mark.parametrize("length", [0, 1, socket.CMSG_LEN(0) - 1])
def test_a_header_shorter_than_itself_ends_the_walk(length: int) -> None:
    assert walk_control(rights(50, length=length) + rights(51), MAX_FDS) == ([], [], 0, None)


@pytest.mark.parametrize("size", [0, 1, HEADER.size - 1])
def test_a_buffer_too_small_for_a_header_holds_nothing(size: int) -> None:
    assert walk_control(rights(60)[:size], MAX_FDS) == ([], [], 0, None)


def test_a_partial_descriptor_is_not_taken() -> None:
    control = rights(70, 71)
    assert walk_control(control[:socket.CMSG_LEN(6)], MAX_FDS) == ([70], [], 1, None)


def test_unknown_messages_are_skipped() -> None:
    control = (cmsg(SOL_SOCKET, 99, b"x" * 12) + cmsg(41, SCM_RIGHTS, ints(80))
               + rights(81))
    assert walk_control(control, MAX_FDS) == ([81], [], 1, None)


def test_negative_values_are_no_descriptors() -> None:
    # SCM_PIDFD holds -errno when the kernel could make no pidfd: the
    # sender keeps the error (for recv_message_from to report EMFILE).
    control = cmsg(SOL_SOCKET, SCM_PIDFD, ints(-24)) + rights(90)
    assert walk_control(control, MAX_FDS, True) == ([90], [], 1, (None, None, None, -24))
    assert walk_control(control, MAX_FDS) == ([90], [], 1, None)


def credentials(pid: int, uid: int, gid: int, cut: int = 0) -> bytes:
    data = struct.pack("iII", pid, uid, gid)
    return cmsg(SOL_SOCKET, SCM_CREDENTIALS, data[:len(data) - cut])


def test_the_sender_takes_credentials_and_the_first_pidfd() -> None:
    control = (credentials(123, 1000, 100) + cmsg(SOL_SOCKET, SCM_PIDFD, ints(7))
               + cmsg(SOL_SOCKET, SCM_PIDFD, ints(8)) + rights(9))
    # The portable build reads no SCM_CREDENTIALS (BSD's SCM_CREDS is another shape).
    sender = (None, None, None, 7) if PORTABLE else (123, 1000, 100, 7)
    assert walk_control(control, MAX_FDS, True) == ([9], [8], 1, sender)
    # Without a sender to hand it to, every pidfd is discarded.
    assert walk_control(control, MAX_FDS) == ([9], [7, 8], 1, None)


@pytest.mark.parametrize("cut", [1, 4, 12])
def test_credentials_cut_short_attest_nothing(cut: int) -> None:
    assert walk_control(credentials(1, 0, 0, cut), MAX_FDS, True) == (
        [], [], 0, (None, None, None, -1))


def test_a_buffer_larger_than_any_kernel_fills_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        walk_control(b"\0" * (1 << 20), MAX_FDS)
