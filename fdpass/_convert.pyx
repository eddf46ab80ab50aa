"""Received descriptors turned into file and socket objects, with the
descriptor closed on every path where the conversion fails."""

from libc.errno cimport ENOTSOCK, errno
from posix.fcntl cimport (
    F_GETFL, O_ACCMODE, O_APPEND, O_NONBLOCK, O_RDONLY, O_RDWR, O_WRONLY, fcntl,
)

from fdpass._engine cimport discard_fds, raise_os_error
from fdpass._posix cimport FDPASS_O_PATH

import codecs
import socket as _socket
import sys

cdef frozenset MODE_CHARS = frozenset("rwaxbt+")
cdef tuple NEWLINES = (None, "", "\n", "\r", "\r\n")


cdef int check_open_args(object mode, object buffering, object encoding, object errors,
                         object newline) except -1:
    """open()'s own checks of what needs no descriptor, made before a
    message is received, so that a mistake consumes nothing.  open()'s
    defaults need no check: recv_file() pays none."""
    cdef bint text = False
    if (mode is None and encoding is None and errors is None and newline is None
            and type(buffering) is int):
        return 0
    for name, value in (("mode", mode), ("encoding", encoding), ("errors", errors),
                        ("newline", newline)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
    if not isinstance(buffering, int):
        raise TypeError(f"buffering must be an int, not {type(buffering).__name__}")
    if mode is not None:
        chars = frozenset(mode)
        if not chars <= MODE_CHARS or len(chars) != len(mode):
            raise ValueError(f"invalid mode: {mode!r}")
        if len(chars & frozenset("rwax")) != 1:
            raise ValueError(f"invalid mode {mode!r}: it must have exactly one of "
                             "read, write, append or create")
        if "t" in chars and "b" in chars:
            raise ValueError(f"invalid mode {mode!r}: text and binary at once")
        text = "b" not in chars
    if not text:
        for name, value in (("encoding", encoding), ("errors", errors), ("newline", newline)):
            if value is not None:
                raise ValueError(f"binary mode doesn't take an {name} argument "
                                 "(name a text mode, such as \"r\")")
    elif buffering == 0:
        raise ValueError("can't have unbuffered text I/O (buffering=0 in text mode)")
    if newline not in NEWLINES:
        raise ValueError(f"illegal newline value: {newline!r}")
    if encoding == "locale" and sys.version_info >= (3, 10):
        pass  # open()'s name for the locale's encoding (PEP 597)
    elif encoding is not None and not codecs.lookup(encoding)._is_text_encoding:
        raise LookupError(f"{encoding!r} is not a text encoding")
    return 0


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


cdef str file_mode(int fd, object mode):
    """mode, checked against what the descriptor allows; for None, the
    binary mode its access flags give (as the sender opened it)."""
    cdef int flags = access_flags(fd)
    cdef int access = flags & O_ACCMODE
    cdef bint readable = access == O_RDONLY or access == O_RDWR
    cdef bint writable = access == O_WRONLY or access == O_RDWR
    if mode is None:
        if not writable:
            return "rb"
        prefix = "a" if flags & O_APPEND else ("r" if readable else "w")
        return prefix + ("+b" if readable else "b")
    if ("r" in mode or "+" in mode) and not readable:
        raise ValueError(f"mode {mode!r} reads, but the received descriptor is write-only")
    if any(c in mode for c in "wax+") and not writable:
        raise ValueError(f"mode {mode!r} writes, but the received descriptor is read-only")
    return mode


cdef class _HandOver:
    """open()'s opener for a descriptor we already hold.  Once open() has
    called it, the io machinery owns the descriptor and closes it if
    anything later fails (a directory, an unknown encoding); before that,
    it is still ours to close."""
    cdef int fd
    cdef bint taken

    def __call__(self, path, flags):
        self.taken = True
        return self.fd


cdef object file_from_fd(int fd, object mode, object buffering, object encoding,
                         object errors, object newline):
    cdef _HandOver opener = _HandOver()
    opener.fd = fd
    try:
        # A bytes name: open() passes it on as it is, where a str is encoded.
        f = open(b"<received descriptor>", file_mode(fd, mode), buffering,
                 encoding, errors, newline, opener=opener)
    except BaseException:
        if not opener.taken:
            discard_fds(&fd, 1)
        raise
    raw = getattr(f, "buffer", f)
    getattr(raw, "raw", raw).name = fd  # as open(fd) names it
    return f


cdef object socket_from_fd(int fd):
    """A socket.socket of the descriptor's own family, type and protocol,
    whose timeout agrees with the descriptor (0.0 when O_NONBLOCK is set)."""
    cdef int flags
    try:
        sock = _socket.socket(fileno=fd)
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
