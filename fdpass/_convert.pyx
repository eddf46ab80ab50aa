"""Received descriptors turned into file and socket objects, with the
descriptor closed on every path where the conversion fails."""

from libc.errno cimport ENOTSOCK, errno
from posix.fcntl cimport (
    F_GETFL, O_ACCMODE, O_APPEND, O_NONBLOCK, O_RDONLY, O_RDWR, O_WRONLY, fcntl,
)

from posix.unistd cimport SEEK_CUR, lseek

from fdpass._engine cimport discard_fds, raise_os_error
from fdpass._posix cimport FDPASS_O_PATH

import codecs
import socket as _socket
import os as _os
import sys
import warnings
from itertools import permutations
from io import (
    BufferedRandom, BufferedReader, BufferedWriter, FileIO, TextIOWrapper, UnsupportedOperation,
)

cdef tuple NEWLINES = (None, "", "\n", "\r", "\r\n")


cdef class _Mode:
    """What one of open()'s modes asks of a descriptor, worked out once."""
    cdef readonly str raw        # FileIO's mode: one of "rwax", and "+"
    cdef readonly bint reads, writes, text


cdef dict make_modes():
    """Every mode open() takes, each spelling of it (its characters in any
    order), so that a mode is checked by one lookup."""
    modes = {}
    for first in "rwax":
        for rest in ("", "+", "b", "t", "+b", "+t"):
            for spelling in permutations(first + rest):
                m = _Mode()
                m.raw = first + "+" * ("+" in rest)
                m.reads = first == "r" or "+" in rest
                m.writes = first != "r" or "+" in rest
                m.text = "b" not in rest
                modes["".join(spelling)] = m
    return modes


cdef dict MODES = make_modes()
#: What mode=None gives, from the descriptor's access flags.
cdef _Mode RB = MODES["rb"], WB = MODES["wb"], AB = MODES["ab"]
cdef _Mode RPB = MODES["r+b"], APB = MODES["a+b"]


cdef int check_open_args(object mode, object buffering, object encoding, object errors,
                         object newline) except -1:
    """open()'s own checks of what needs no descriptor, made before a
    message is received, so that a mistake consumes nothing.  The binary
    modes with open()'s defaults cost one lookup."""
    cdef _Mode m = MODES.get(mode) if type(mode) is str else None
    cdef int size
    if (encoding is None and errors is None and newline is None and type(buffering) is int
            and (mode is None or (m is not None and not m.text))):
        size = buffering  # open()'s OverflowError past a C int
        if size == 1:
            warn_line_buffering()
        return 0
    for name, value in (("mode", mode), ("encoding", encoding), ("errors", errors),
                        ("newline", newline)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
    if not isinstance(buffering, int):
        raise TypeError(f"buffering must be an int, not {type(buffering).__name__}")
    size = buffering
    if mode is not None and m is None:
        mode = str.__str__(mode)  # what open() reads of a str subclass (an enum's)
        m = MODES.get(mode)
        if m is None:
            refuse_mode(mode)
    if m is None or not m.text:
        for name, value in (("encoding", encoding), ("errors", errors), ("newline", newline)):
            if value is not None:
                article = "a" if name == "newline" else "an"
                raise ValueError(f"binary mode doesn't take {article} {name} argument "
                                 "(name a text mode, such as \"r\")")
        if size == 1:
            warn_line_buffering()
    elif buffering == 0:
        raise ValueError("can't have unbuffered text I/O (buffering=0 in text mode)")
    if newline not in NEWLINES:
        raise ValueError(f"illegal newline value: {newline!r}")
    if encoding == "locale" and sys.version_info >= (3, 10):
        pass  # open()'s name for the locale's encoding (PEP 597)
    elif encoding is not None and not codecs.lookup(encoding)._is_text_encoding:
        raise LookupError(f"{encoding!r} is not a text encoding")
    return 0


cdef int warn_line_buffering() except -1:
    """open()'s warning, given where open() gives it: before anything is
    opened, so that a warning made an error consumes nothing."""
    warnings.warn("line buffering (buffering=1) isn't supported in binary mode, "
                  "the default buffer size will be used", RuntimeWarning)
    return 0


cdef int refuse_mode(str mode) except -1:
    """Say what is wrong with a mode open() would refuse."""
    chars = frozenset(mode)
    if not chars <= frozenset("rwaxbt+") or len(chars) != len(mode):
        raise ValueError(f"invalid mode: {mode!r}")
    if len(chars & frozenset("rwax")) != 1:
        raise ValueError(f"invalid mode {mode!r}: it must have exactly one of "
                         "read, write, append or create")
    raise ValueError(f"invalid mode {mode!r}: text and binary at once")


cdef int access_flags(int fd) except -1:
    """The descriptor's F_GETFL flags; O_PATH ones are refused, as no
    file object can read or write through them."""
    cdef int flags = fcntl(fd, F_GETFL)
    if flags < 0:
        raise_os_error(errno, "fcntl(F_GETFL) on the received descriptor")
    if flags & FDPASS_O_PATH:
        raise ValueError("the received descriptor was opened with O_PATH: "
                         "it can be neither read nor written")
    return flags


cdef _Mode file_mode(int fd, object mode):
    """mode, checked against what the descriptor allows; for None, the
    binary mode its access flags give (as the sender opened it)."""
    cdef int flags = access_flags(fd)
    cdef int access = flags & O_ACCMODE
    cdef bint readable = access == O_RDONLY or access == O_RDWR
    cdef bint writable = access == O_WRONLY or access == O_RDWR
    cdef _Mode m
    if mode is None:
        if not writable:
            return RB
        if flags & O_APPEND:
            return APB if readable else AB
        return RPB if readable else WB
    m = MODES[mode if type(mode) is str else str.__str__(mode)]
    if m.reads and not readable:
        raise ValueError(f"mode {mode!r} reads, but the received descriptor is write-only")
    if m.writes and not writable:
        raise ValueError(f"mode {mode!r} writes, but the received descriptor is read-only")
    return m


cdef object file_from_fd(int fd, object mode, object buffering, object encoding,
                         object errors, object newline):
    """What open(fd, mode, ...) makes, built as open() builds it, so that
    ownership is never in doubt: FileIO given a number never closes it
    when it fails (a directory), and once it exists, it owns the
    descriptor.  open(fd) cannot tell its caller which of the two
    happened, and open() through an opener costs a system call more."""
    cdef int size
    cdef _Mode m
    try:
        size = buffering  # open()'s C int
        m = file_mode(fd, mode)
        if m.reads and m.writes and size != 0 and lseek(fd, 0, SEEK_CUR) < 0:
            # BufferedRandom's refusal, made while the descriptor is ours:
            # once FileIO owns it, only FileIO can close it, and at the
            # descriptor limit drop_file() has no number for a second
            # reference, so a lingering socket's close would wait here.
            raise UnsupportedOperation("File or stream is not seekable.")
        raw = FileIO(fd, m.raw)
    except BaseException:
        discard_fds(&fd, 1)
        raise
    try:
        return layered(raw, m, mode, size, encoding, errors, newline)
    except BaseException:  # no memory for the buffer, a text layer that failed
        drop_file(raw)
        raise


cdef int drop_file(object raw) except -1:
    """Drop what raw owns on the discard path: raw closes one of two
    references to the peer's file, never the last, whose close may linger.
    With no descriptor to spare for the second, raw closes the last."""
    cdef int twin = -1
    try:
        twin = _os.dup(raw.fileno())
    except OSError:
        pass
    raw.close()
    if twin >= 0:
        discard_fds(&twin, 1)
    return 0


cdef object layered(object raw, _Mode m, object mode, int buffering, object encoding,
                    object errors, object newline):
    """open()'s layers over raw, by open()'s rules (its arguments checked)."""
    cdef bint line_buffering = False
    if buffering == 1 or (buffering < 0 and raw.isatty()):
        buffering = -1
        line_buffering = True
    if buffering < 0:
        buffering = raw._blksize
    if buffering == 0:
        return raw
    if m.reads and m.writes:
        buffer = BufferedRandom(raw, buffering)
    elif m.reads:
        buffer = BufferedReader(raw, buffering)
    else:
        buffer = BufferedWriter(raw, buffering)
    if not m.text:
        return buffer
    try:
        text = TextIOWrapper(buffer, encoding, errors, newline, line_buffering)
    except BaseException:  # an error handler unknown (-X dev), a warning made an error
        buffer.detach()  # else, dropped here, it closes raw: the last close, in this thread
        raise
    text.mode = mode
    return text


cdef object socket_from_fd(int fd):
    """A socket.socket of the descriptor's own family, type and protocol,
    whose timeout agrees with the descriptor (0.0 when O_NONBLOCK is set)."""
    cdef int flags
    try:
        sock = _socket.socket(-1, -1, -1, fd)  # fd's own family, type and protocol
    except OSError as e:
        discard_fds(&fd, 1)
        if e.errno == ENOTSOCK:
            raise_os_error(ENOTSOCK, "the received descriptor is not a socket; it is "
                           "closed in the background")
        raise
    except BaseException:
        discard_fds(&fd, 1)
        raise
    flags = fcntl(fd, F_GETFL)
    if flags >= 0 and flags & O_NONBLOCK and sock.gettimeout() is None:
        sock.setblocking(False)
    return sock
