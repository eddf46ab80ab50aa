"""FDChannel: descriptor passing over one UNIX-domain socket, with the
standard socket module's timeout rules."""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.errno cimport EAFNOSUPPORT, EBADF, ENOTSOCK, errno
from libc.math cimport isnan
from posix.fcntl cimport F_GETFL, O_NONBLOCK, fcntl
from posix.unistd cimport close

from fdpass._convert cimport file_from_fd, socket_from_fd
from fdpass._engine cimport (
    RECV_EMPTY, RECV_OK, Received, as_fd, close_fds, raise_os_error,
    raise_recv_status, raise_send_error, recv_message_into, send_message,
    unix_socket_type,
)
from fdpass._posix cimport (
    FDPASS_MAX_FDS, FDPASS_SO_NOSIGPIPE, MSG_DONTWAIT, SOCK_DGRAM,
    SOCK_SEQPACKET, SOCK_STREAM, SOL_SOCKET, fdpass_peer_credentials, setsockopt,
)

import os
import socket as _socket

from fdpass._credentials import Credentials

MAX_FDS = FDPASS_MAX_FDS


cdef double timeout_value(object value) except? -2.0:
    """socket.settimeout's rules: None blocks (-1 here), else seconds >= 0."""
    cdef double t
    if value is None:
        return -1.0
    try:
        t = value
    except TypeError:
        raise TypeError(f"timeout must be None or a number, not {type(value).__name__}") from None
    if isnan(t) or t < 0:
        raise ValueError(f"timeout must be None or a number >= 0, got {value!r}")
    return t


cdef Py_ssize_t check_maxfds(Py_ssize_t maxfds) except -1:
    if not 1 <= maxfds <= FDPASS_MAX_FDS:
        raise ValueError(f"maxfds must be within 1..{FDPASS_MAX_FDS}, got {maxfds}")
    return maxfds


cdef class FDChannel:
    """Sends and receives open descriptors over an AF_UNIX socket
    (SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM).

    sock is a socket.socket, a descriptor number or an object with
    fileno(); with closefd (as with open()), close() closes it too."""

    cdef int _fd
    cdef int _type
    cdef bint _closefd
    cdef object _owner       # what was wrapped, closed by close() when closefd
    cdef object _gettimeout  # the wrapped socket.socket's gettimeout, else None
    cdef double _timeout     # the channel's own timeout otherwise; < 0 blocks

    def __cinit__(self):
        self._fd = -1

    def __init__(self, sock, *, bint closefd=True):
        cdef int fd, sock_type, one = 1, family = 0, err = 0
        if self._fd >= 0:
            raise RuntimeError("FDChannel.__init__ called on an open channel")
        if isinstance(sock, _socket.socket):
            fd = sock.fileno()
            if fd < 0:
                raise_os_error(EBADF, "the socket is closed")
        else:
            fd = as_fd(sock)
        sock_type = unix_socket_type(fd, &family, &err)
        if sock_type < 0:
            if err == EAFNOSUPPORT:
                raise ValueError(
                    f"FDChannel needs an AF_UNIX socket, not {family_name(family)} "
                    "(other families drop passed descriptors silently)")
            raise_os_error(err, f"descriptor {fd} is "
                           + ("not a socket" if err == ENOTSOCK else "not usable"))
        if sock_type != SOCK_STREAM and sock_type != SOCK_SEQPACKET and sock_type != SOCK_DGRAM:
            raise ValueError(f"FDChannel needs a SOCK_STREAM, SOCK_SEQPACKET or "
                             f"SOCK_DGRAM socket, not type {sock_type}")
        if FDPASS_SO_NOSIGPIPE >= 0 and setsockopt(
                fd, SOL_SOCKET, FDPASS_SO_NOSIGPIPE, &one, sizeof(one)) < 0:
            raise_os_error(errno, f"setsockopt(SO_NOSIGPIPE) on descriptor {fd}")
        if isinstance(sock, _socket.socket):
            self._gettimeout = sock.gettimeout
            self._timeout = -1.0
        else:
            self._gettimeout = None
            self._timeout = 0.0 if fcntl(fd, F_GETFL) & O_NONBLOCK else -1.0
        self._owner = sock
        self._closefd = closefd
        self._type = sock_type
        self._fd = fd

    def __dealloc__(self):
        if self._fd >= 0 and self._closefd and PyLong_Check(self._owner):
            close(self._fd)

    @classmethod
    def pair(cls, int type=SOCK_STREAM):
        """Two connected channels over a new socketpair."""
        return wrap_socketpair(cls, type)

    @classmethod
    def connect(cls, path):
        """A channel connected to the AF_UNIX SOCK_STREAM socket listening at path."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
            return cls(sock)
        except BaseException:
            sock.close()
            raise

    cdef int _open_fd(self) except -1:
        if self._fd < 0:
            raise ValueError("I/O operation on closed channel")
        return self._fd

    cdef double _call_timeout(self) except? -2.0:
        self._open_fd()
        if self._gettimeout is None:
            return self._timeout
        value = self._gettimeout()
        return -1.0 if value is None else timeout_value(value)

    cdef int _send(self, double timeout, const int *fds, int nfds,
                   const char *data, size_t length) except -1:
        cdef int err = 0
        cdef size_t sent = 0
        if send_message(self._fd, fds, nfds, data, length,
                        MSG_DONTWAIT if timeout >= 0 else 0, timeout, &err, &sent) < 0:
            raise_send_error(err, self._fd, fds, nfds, sent)
        return 0

    cdef int _recv(self, double timeout, void *buf, size_t buflen, int *fds,
                   int maxfds, Received *r) except -1:
        cdef int err = 0
        if recv_message_into(self._fd, buf, buflen, fds, maxfds,
                             MSG_DONTWAIT if timeout >= 0 else 0, timeout, r, &err) < 0:
            raise_os_error(err, None)
        return 0

    @property
    def closed(self):
        return self._fd < 0

    @property
    def type(self):
        """The socket type: socket.SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM."""
        return _socket.SocketKind(self._type)

    def fileno(self):
        return self._open_fd()

    def close(self):
        """Close the channel, and with closefd the socket it wraps."""
        cdef int fd = self._fd
        if fd < 0:
            return
        owner = self._owner
        self._fd = -1
        self._owner = None
        self._gettimeout = None
        if not self._closefd:
            return
        close_method = None if PyLong_Check(owner) else getattr(owner, "close", None)
        if close_method is not None:
            close_method()
        elif close(fd) < 0:
            raise_os_error(errno, f"closing descriptor {fd}")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        if self._fd < 0:
            return "<fdpass.FDChannel [closed]>"
        return (f"<fdpass.FDChannel fd={self._fd} type={self.type.name} "
                f"timeout={self.gettimeout()!r}>")

    def gettimeout(self):
        """Seconds a call may wait; None blocks, 0.0 never waits."""
        if self._gettimeout is not None:
            return self._gettimeout()
        return None if self._timeout < 0 else self._timeout

    def settimeout(self, value):
        """As socket.settimeout; on a wrapped socket.socket, sets its timeout."""
        cdef double t = timeout_value(value)
        if self._gettimeout is not None:
            self._owner.settimeout(value)
        else:
            self._timeout = t

    def setblocking(self, bint flag):
        self.settimeout(None if flag else 0.0)

    @cython.binding(False)
    def send_fd(self, f):
        """Send one descriptor (an int or an object with fileno()) in one
        message of one 0x00 byte: IO::FDPass's wire format."""
        cdef double timeout = self._call_timeout()
        cdef int fd = as_fd(f)
        self._send(timeout, &fd, 1, b"\0", 1)

    @cython.binding(False)
    def send_fds(self, fs, data=b"\0"):
        """Send 1..MAX_FDS descriptors in one message whose payload is data."""
        cdef double timeout = self._call_timeout()
        cdef int fds[FDPASS_MAX_FDS]
        cdef Py_ssize_t i, n
        cdef Py_buffer view
        items = tuple(fs)
        n = len(items)
        if n == 0:
            raise ValueError("send_fds needs at least one descriptor")
        if n > FDPASS_MAX_FDS:
            raise ValueError(f"at most {FDPASS_MAX_FDS} descriptors fit in one message, got {n}")
        for i in range(n):
            fds[i] = as_fd(items[i])
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len == 0:
                raise ValueError("data must not be empty: descriptors travel with a byte")
            self._send(timeout, fds, <int>n, <const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    @cython.binding(False)
    def recv_fd(self):
        """Receive one message and return its one descriptor, now the caller's."""
        cdef double timeout = self._call_timeout()
        cdef int fd = -1
        cdef char byte
        cdef Received r
        self._recv(timeout, &byte, 1, &fd, 1, &r)
        if r.nfds == 0:
            raise_recv_status(&r, 1, self._type)
        try:
            return fd
        except BaseException:
            close(fd)
            raise

    def recv_file(self, mode=None, buffering=-1, encoding=None, errors=None, newline=None):
        """Receive one descriptor as a file object that owns it, as
        open(fd, ...) makes; mode None follows the descriptor's access
        flags: "rb", "wb", "ab", "r+b" or "a+b"."""
        return file_from_fd(self.recv_fd(), mode, buffering, encoding, errors, newline)

    def recv_socket(self):
        """Receive one descriptor as a socket.socket of its own family and type."""
        return socket_from_fd(self.recv_fd())

    def peer_credentials(self):
        """The connected peer's Credentials(pid, uid, gid) (SO_PEERCRED)."""
        cdef long pid = -1, uid = -1, gid = -1
        if fdpass_peer_credentials(self._open_fd(), &pid, &uid, &gid) < 0:
            raise_os_error(errno, "no peer credentials")
        return Credentials(pid, uid, gid)

    def recv_fds(self, Py_ssize_t maxfds=FDPASS_MAX_FDS):
        """Receive one message and return its descriptors (at least one)."""
        cdef double timeout = self._call_timeout()
        cdef int fds[FDPASS_MAX_FDS]
        cdef char byte
        cdef Received r
        check_maxfds(maxfds)
        self._recv(timeout, &byte, 1, fds, <int>maxfds, &r)
        if r.nfds == 0:
            raise_recv_status(&r, <int>maxfds, self._type)
        try:
            return [fds[i] for i in range(r.nfds)]
        except BaseException:
            close_fds(fds, r.nfds)
            raise

    def recv_message(self, Py_ssize_t bufsize, Py_ssize_t maxfds=FDPASS_MAX_FDS):
        """Receive one message: (payload of at most bufsize bytes, descriptors)."""
        cdef double timeout = self._call_timeout()
        cdef int fds[FDPASS_MAX_FDS]
        cdef Received r
        cdef char *buf
        if bufsize < 1:
            raise ValueError(f"bufsize must be at least 1, got {bufsize}")
        check_maxfds(maxfds)
        buf = <char *>PyMem_Malloc(bufsize)
        if buf == NULL:
            raise MemoryError(f"cannot allocate a {bufsize}-byte buffer")
        try:
            self._recv(timeout, buf, bufsize, fds, <int>maxfds, &r)
            if r.status != RECV_OK and not (r.status == RECV_EMPTY and self._type == SOCK_DGRAM):
                raise_recv_status(&r, <int>maxfds, self._type)
            try:
                return PyBytes_FromStringAndSize(buf, r.nbytes), [fds[i] for i in range(r.nfds)]
            except BaseException:
                close_fds(fds, r.nfds)
                raise
        finally:
            PyMem_Free(buf)


def wrap_socketpair(make, int type=SOCK_STREAM):
    """(make(a), make(b)) over a new AF_UNIX socketpair (a, b); both
    sockets are closed if either call fails."""
    a, b = _socket.socketpair(_socket.AF_UNIX, type)
    try:
        return make(a), make(b)
    except BaseException:
        a.close()
        b.close()
        raise


cdef str family_name(int family):
    try:
        return _socket.AddressFamily(family).name
    except ValueError:
        return f"address family {family}"
