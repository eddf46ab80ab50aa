"""FDChannel: descriptor passing over one UNIX-domain socket, with the
standard socket module's timeout rules."""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_Check, PyLong_FromLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from libc.errno cimport (
    EAFNOSUPPORT, EBADF, EBADMSG, EMFILE, ENFILE, ENODATA, ENOPROTOOPT, ENOTSOCK, errno,
)
from libc.math cimport isnan
from libc.string cimport memset
from posix.fcntl cimport F_GETFD, F_GETFL, F_SETFD, FD_CLOEXEC, O_NONBLOCK, fcntl
from posix.unistd cimport close

from fdpass._convert cimport check_open_args, file_from_fd, socket_from_fd
from fdpass._engine cimport (
    FDPASS_ECLOSED, RECV_EMPTY, RECV_OK, RECV_TRUNCATED, Batch, Guard, Received, Sender, as_fd,
    defuse_queue, discard_fds, discard_received, fdpass_fd_object, raise_os_error,
    raise_recv_status, raise_send_error, recv_message_into, recv_messages, send_message,
    send_messages, unix_socket_type,
)
from fdpass._posix cimport (
    FDPASS_MAX_BATCH, FDPASS_MAX_FDS, FDPASS_SO_PASSCRED, FDPASS_SO_PASSPIDFD, FDPASS_SO_PASSRIGHTS,
    FDPASS_SO_PEERPIDFD, MSG_DONTWAIT, MSG_TRUNC, SHUT_RDWR, SOCK_DGRAM, SOCK_SEQPACKET,
    SOCK_STREAM, SOL_SOCKET, fdpass_nosigpipe, fdpass_peer_credentials, fdpass_socket_fd,
    fdpass_socket_fd_field, fdpass_socket_timeout, getpeername, getsockopt, setsockopt, shutdown, sockaddr,
    sockaddr_storage, socklen_t,
)

import errno as _errno
import os
import socket as _socket

from fdpass._credentials import Credentials
from fdpass._credentials import Sender as SenderTuple
from fdpass._errors import ProtocolError

MAX_FDS = FDPASS_MAX_FDS
#: The most messages one recv_many takes.
MAX_BATCH = FDPASS_MAX_BATCH


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


cdef enum Owner:
    OWNER_NUMBER          # a descriptor number: the channel's own
    OWNER_SOCKET          # a socket.socket, read through its C struct
    OWNER_SOCKET_METHODS  # a socket.socket, read through fileno() and gettimeout()
    OWNER_OBJECT          # any other object with fileno()


cdef bint socket_head_matches():
    """Whether this interpreter's socket objects start as fdpass_pysocket.h
    says: the descriptor and timeout read from the struct agree with what
    fileno() and gettimeout() return, open and closed."""
    a, b = _socket.socketpair()
    try:
        for value, expected in ((None, -1.0), (0.0, 0.0), (2.5, 2.5), (1e-3, 1e-3)):
            a.settimeout(value)
            if (fdpass_socket_fd(<PyObject *>a) != a.fileno()
                    or abs(fdpass_socket_timeout(<PyObject *>a) - expected) > 1e-9):
                return False
    finally:
        a.close()
        b.close()
    return fdpass_socket_fd(<PyObject *>a) == -1


cdef bint SOCKET_HEAD = socket_head_matches()


cdef Py_ssize_t check_maxfds(Py_ssize_t maxfds) except -1:
    if not 1 <= maxfds <= FDPASS_MAX_FDS:
        raise ValueError(f"maxfds must be within 1..{FDPASS_MAX_FDS}, got {maxfds}")
    return maxfds


#: Set to anything but "" or "0", this environment variable makes refuse_fds
#: close arriving descriptors at receipt even where the kernel could refuse
#: them (SO_PASSRIGHTS): the path a kernel before 6.16 takes, for tests.
REFUSAL_ENV = "FDPASS_NO_PASSRIGHTS"


cdef int set_option(int fd, int option, int value, str name) except -1:
    """setsockopt(SOL_SOCKET, option, value): 0, or 1 where the kernel or
    the platform lacks the option (ENOPROTOOPT; option < 0)."""
    cdef int rc, saved
    if option < 0:
        return 1
    rc = setsockopt(fd, SOL_SOCKET, option, &value, sizeof(value))
    saved = errno
    if rc == 0:
        return 0
    if saved == ENOPROTOOPT:
        return 1
    raise_os_error(saved, f"setsockopt({name}) on descriptor {fd}")


def refusal_forced_to_close():
    """Whether REFUSAL_ENV has refuse_fds close descriptors at receipt,
    whatever the kernel could refuse."""
    return os.environ.get(REFUSAL_ENV, "") not in ("", "0")


cdef int refuse_in_kernel(int fd) except -1:
    """Turn SO_PASSRIGHTS off on fd, unless REFUSAL_ENV says not to, so
    that the kernel refuses descriptors sent to it (the sender gets EPERM)
    where the option works; whether it does is never decided by kernel
    version or headers."""
    if not refusal_forced_to_close():
        set_option(fd, FDPASS_SO_PASSRIGHTS, 0, "SO_PASSRIGHTS")
    return 0


cdef int refused() except -1:
    raise ValueError("this channel refuses descriptors (refuse_fds=True): it "
                     "receives data, with recv_message")


def naming_path(error, path):
    """error, naming the socket path that connecting to failed, as open()'s
    errors name theirs: "No such file or directory" alone says not which."""
    if error.filename is None:
        error.filename = os.fspath(path)
    return error


cdef list fd_list(const int *fds, int n):
    """fds[:n] as a list made at its size: a comprehension grows it by
    appends, several reallocations for a batch of 64."""
    cdef list result = PyList_New(n)
    cdef int i
    for i in range(n):
        number = PyLong_FromLong(fds[i])
        Py_INCREF(number)  # PyList_SET_ITEM steals the reference `number` drops
        PyList_SET_ITEM(result, i, number)
    return result


cdef class FDChannel:
    # The first two lines are the constructor's signature, which help() and
    # inspect.signature() read (a type's __text_signature__); the
    # docstring they show starts after them.
    """FDChannel(sock, *, closefd=True, refuse_fds=False, passcred=False)
--

Sends and receives open descriptors over an AF_UNIX socket
    (SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM).

    sock is a socket.socket, a descriptor number or an object with
    fileno(); with closefd (as with open()), close() closes it too.
    refuse_fds: the channel never takes a descriptor (the kernel refuses
    them where it can, else they are closed at receipt).  passcred: the
    kernel attests each message's sender, for recv_message_from."""

    cdef int _fd             # the socket's descriptor while open, else -1
    cdef int _type
    cdef bint _closefd
    cdef bint _connected     # had a peer when made (datagram: ENOTCONN means it left)
    cdef bint _refuse        # refuse_fds: every descriptor that arrives is closed
    cdef bint _passcred      # SO_PASSCRED set: recv_message_from may be called
    cdef Owner _kind
    cdef object _owner       # what was wrapped, closed by close() when closefd
    cdef double _timeout     # the channel's own timeout (not a socket.socket's); < 0 blocks
    cdef int _users          # calls waiting without the GIL: they hold _held's number
    cdef int _stop           # close() came while calls waited: they wake and raise
    cdef int _held           # the descriptor to close when the last waiting call leaves
    cdef Guard _guard        # what a waiting call checks: _stop, and the wrapped socket's number
    cdef list _backlog       # what a recv_many received past a failed message, for the next

    def __cinit__(self):
        self._fd = -1
        self._held = -1
        self._guard.stop = &self._stop
        self._guard.owner_fd = NULL

    def __init__(self, sock, *, bint closefd=True, bint refuse_fds=False, bint passcred=False):
        cdef int fd, sock_type, family = 0, err = 0
        cdef sockaddr_storage peer
        cdef socklen_t length = sizeof(peer)
        if self._fd >= 0 or self._held >= 0:
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
        if fdpass_nosigpipe(fd) < 0:
            raise_os_error(errno, f"setsockopt(SO_NOSIGPIPE) on descriptor {fd}")
        if passcred:
            if set_option(fd, FDPASS_SO_PASSCRED, 1, "SO_PASSCRED"):
                raise_os_error(ENOPROTOOPT, "this platform has no per-message "
                               "credentials (SO_PASSCRED)")
            set_option(fd, FDPASS_SO_PASSPIDFD, 1, "SO_PASSPIDFD")  # else no pidfd: Linux < 6.5
        if refuse_fds:
            refuse_in_kernel(fd)
        self._guard.owner_fd = NULL
        if isinstance(sock, _socket.socket):
            self._kind = OWNER_SOCKET if SOCKET_HEAD else OWNER_SOCKET_METHODS
            self._timeout = -1.0
            if SOCKET_HEAD:  # _owner keeps the socket, and so the field, alive
                self._guard.owner_fd = fdpass_socket_fd_field(<PyObject *>sock)
        else:
            self._kind = OWNER_NUMBER if PyLong_Check(sock) else OWNER_OBJECT
            self._timeout = 0.0 if fcntl(fd, F_GETFL) & O_NONBLOCK else -1.0
        self._connected = getpeername(fd, <sockaddr *>&peer, &length) == 0
        self._owner = sock
        self._closefd = closefd
        self._refuse = refuse_fds
        self._passcred = passcred
        self._type = sock_type
        self._fd = fd

    def __dealloc__(self):
        cdef int fd = self._fd
        self._drop_backlog()
        if fd >= 0 and self._closefd and self._kind == OWNER_NUMBER:
            with nogil:
                close(fd)

    @classmethod
    def pair(cls, int type=SOCK_STREAM):
        """Two connected channels over a new socketpair."""
        return wrap_socketpair(cls, type)

    @classmethod
    def connect(cls, path):
        """A channel connected to the AF_UNIX SOCK_STREAM socket listening at path."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            try:
                sock.connect(os.fspath(path))
            except OSError as error:
                raise naming_path(error, path)
            return cls(sock)
        except BaseException:
            sock.close()
            raise

    cdef bint _owns(self, int fd) except -1:
        """Whether what was wrapped still has descriptor fd."""
        if self._kind == OWNER_SOCKET:
            return fdpass_socket_fd(<PyObject *>self._owner) == fd
        if self._kind == OWNER_NUMBER:
            return True
        try:
            return self._owner.fileno() == fd
        except (OSError, ValueError):
            return False

    cdef bint _wrapped_open(self) except -1:
        """Whether the channel is open.  A socket closed elsewhere (its number
        maybe another file's already) closes the channel, which then never
        touches that number."""
        if self._fd < 0:
            return False
        if self._owns(self._fd):
            return True
        self._fd = -1  # _owner stays: a call waiting in another thread watches it
        return False

    cdef int _live_fd(self) except -1:
        if not self._wrapped_open():
            raise ValueError("I/O operation on closed channel")
        return self._fd

    @cython.final
    cdef inline int _begin(self, double *timeout) except -1:
        """Start a call that may wait without the GIL: its descriptor,
        which stays this channel's until _end(), and its timeout."""
        cdef int fd = self._fd
        cdef PyObject *owner = <PyObject *>self._owner
        if self._kind == OWNER_SOCKET and fd >= 0 and fdpass_socket_fd(owner) == fd:
            timeout[0] = fdpass_socket_timeout(owner)  # the hot path: two loads
        elif self._kind == OWNER_NUMBER and fd >= 0:
            timeout[0] = self._timeout
        else:
            fd = self._begin_checked(timeout)
        self._users += 1
        return fd

    cdef int _begin_checked(self, double *timeout) except -1:
        """_begin's other cases, out of line: a channel closed, or a socket
        closed elsewhere (both raise), or asked for its timeout."""
        fd = self._live_fd()
        if self._kind == OWNER_SOCKET_METHODS:
            value = self._owner.gettimeout()
            timeout[0] = -1.0 if value is None else timeout_value(value)
        else:
            timeout[0] = self._timeout
        return fd

    @cython.final
    cdef inline int _end(self) except -1:
        self._users -= 1
        if self._users == 0 and self._stop:
            self._release()
        return 0

    cdef int _release(self) except -1:
        """Close what the channel wraps, as closefd says.  The descriptors in
        flight in its queue, a peer's doing, close with it: they are defused
        first, so that no lingering socket among them makes this close wait."""
        cdef int fd = self._held, rc
        if not self._closefd:
            self._held = -1
            self._owner = None
            return 0
        if self._kind == OWNER_NUMBER or self._owns(fd):
            with nogil:
                defuse_queue(fd)
        owner = self._owner
        self._held = -1
        self._owner = None
        close_method = None if self._kind == OWNER_NUMBER else getattr(owner, "close", None)
        if close_method is not None:
            close_method()
            return 0
        with nogil:
            rc = close(fd)
        if rc < 0:
            raise_os_error(errno, f"closing descriptor {fd}")
        return 0

    cdef inline int _wait_flags(self, double timeout) noexcept:
        """How a call that would block waits: a blocking one with closefd
        inside the syscall, which close() wakes by shutting the socket down;
        any other in poll (MSG_DONTWAIT), so that a call woken after close()
        (by its timeout, or by the socket, which the caller still owns and
        may shut down) takes nothing from a socket that is not its own."""
        return MSG_DONTWAIT if timeout >= 0 or not self._closefd else 0

    @cython.final
    cdef inline int _send(self, int sock, double timeout, const int *fds, int nfds,
                   const char *data, size_t length) except -1:
        cdef int err = 0
        cdef size_t sent = 0
        if send_message(sock, fds, nfds, data, length, self._wait_flags(timeout),
                        timeout, &self._guard, &err, &sent) < 0:
            raise_send_error(err, sock, fds, nfds, sent, self._type, self._connected)
        return 0

    cdef int _drop_backlog(self) except -1:
        """Discard the descriptors of messages no call will return now."""
        backlog, self._backlog = self._backlog, None
        if backlog:
            for item in backlog:
                if type(item) is tuple:
                    discard_all_of(item[1])
        return 0

    @cython.final
    cdef inline int _recv(self, int sock, double timeout, void *buf, size_t buflen, int *fds,
                   int maxfds, int flags, Received *r, Sender *sender) except -1:
        cdef int err = 0
        if self._backlog is not None:
            backlogged()
        if recv_message_into(sock, buf, buflen, fds, maxfds, flags | self._wait_flags(timeout),
                             timeout, &self._guard, r, sender, &err) < 0:
            raise_os_error(err, None)
        return 0

    @property
    def closed(self):
        """Whether the channel is closed: by close(), or because the socket
        it wraps was closed elsewhere."""
        return not self._wrapped_open()

    @property
    def type(self):
        """The socket type: socket.SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM."""
        return _socket.SocketKind(self._type)

    def fileno(self):
        """The socket's descriptor; -1 once closed, as socket.socket's."""
        return -1 if self.closed else self._fd

    def close(self):
        """Close the channel, and with closefd the socket it wraps.  Calls
        waiting on it in other threads raise ValueError when they wake:
        with closefd at once (the socket is shut down first), without it
        when their timeout passes or the socket, still the caller's, is
        ready or shut down.  The socket is closed when the last of them has
        left, so none touches a number reused since."""
        cdef int fd = self._fd
        self._drop_backlog()
        if fd < 0:
            return
        self._fd = -1
        self._held = fd
        if not self._users:
            self._release()
            return
        self._stop = 1
        if self._closefd and self._owns(fd):
            shutdown(fd, SHUT_RDWR)

    def shutdown(self, int how):
        """Shut down one or both directions (socket.SHUT_RD, SHUT_WR,
        SHUT_RDWR), as socket.shutdown: a peer blocked on the socket wakes."""
        if shutdown(self._live_fd(), how) < 0:
            raise_os_error(errno, f"shutdown({how})")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        if self.closed:
            return "<fdpass.FDChannel [closed]>"
        return (f"<fdpass.FDChannel fd={self._fd} type={self.type.name} "
                f"timeout={self.gettimeout()!r}>")

    def gettimeout(self):
        """Seconds a call may wait; None blocks, 0.0 never waits."""
        if self._kind == OWNER_SOCKET or self._kind == OWNER_SOCKET_METHODS:
            if self._owner is not None:
                return self._owner.gettimeout()
        return None if self._timeout < 0 else self._timeout

    def settimeout(self, value):
        """As socket.settimeout; on a wrapped socket.socket, sets its timeout."""
        cdef double t = timeout_value(value)
        if (self._kind == OWNER_SOCKET or self._kind == OWNER_SOCKET_METHODS) \
                and self._owner is not None:
            self._owner.settimeout(value)
        else:
            self._timeout = t

    def setblocking(self, bint flag):
        """As socket.setblocking: settimeout(None) if flag, else settimeout(0.0)."""
        self.settimeout(None if flag else 0.0)

    @cython.binding(False)
    def send_fd(self, f):
        """Send one descriptor (an int or an object with fileno()) in one
        message of one 0x00 byte: IO::FDPass's wire format."""
        cdef double timeout
        cdef int sock = self._begin(&timeout)
        cdef int fd
        try:
            fd = as_fd(f)
            self._send(sock, timeout, &fd, 1, b"\0", 1)
        finally:
            self._end()

    @cython.binding(False)
    def send_fds(self, fs, data=b"\0"):
        """Send 1..MAX_FDS descriptors in one message whose payload is data."""
        cdef double timeout
        cdef int sock = self._begin(&timeout)
        cdef int fds[FDPASS_MAX_FDS]
        cdef Py_ssize_t i, n
        cdef Py_buffer view
        try:
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
                self._send(sock, timeout, fds, <int>n, <const char *>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        finally:
            self._end()

    @cython.binding(False)
    def recv_fd(self):
        """Receive one message and return its one descriptor, now the caller's."""
        cdef double timeout
        cdef int sock
        cdef int fd = -1
        cdef char byte
        cdef Received r
        if self._refuse:
            refused()
        sock = self._begin(&timeout)
        try:
            self._recv(sock, timeout, &byte, 1, &fd, 1, 0, &r, NULL)
            if r.nfds == 0:
                raise_recv_status(&r, 1, self._type)
        finally:
            self._end()
        return fdpass_fd_object(fd, discard_fds)

    def recv_file(self, mode=None, buffering=-1, encoding=None, errors=None, newline=None):
        """Receive one descriptor as a file object that owns it, as
        open(fd, ...) makes; mode None follows the descriptor's access
        flags: "rb", "wb", "ab", "r+b" or "a+b".  Arguments open() would
        refuse are refused before anything is received."""
        check_open_args(mode, buffering, encoding, errors, newline)
        return file_from_fd(self.recv_fd(), mode, buffering, encoding, errors, newline)

    def recv_socket(self):
        """Receive one descriptor as a socket.socket of its own family and type."""
        return socket_from_fd(self.recv_fd())

    def peer_credentials(self):
        """The connected peer's Credentials(pid, uid, gid) (SO_PEERCRED)."""
        cdef long pid = -1, uid = -1, gid = -1
        if fdpass_peer_credentials(self._live_fd(), &pid, &uid, &gid) < 0:
            raise_os_error(errno, "no peer credentials")
        return Credentials(pid, uid, gid)

    def recv_fds(self, Py_ssize_t maxfds=FDPASS_MAX_FDS):
        """Receive one message and return its descriptors (at least one)."""
        cdef double timeout
        cdef int sock
        cdef int fds[FDPASS_MAX_FDS]
        cdef char byte
        cdef Received r
        check_maxfds(maxfds)
        if self._refuse:
            refused()
        sock = self._begin(&timeout)
        try:
            self._recv(sock, timeout, &byte, 1, fds, <int>maxfds, 0, &r, NULL)
            if r.nfds == 0:
                raise_recv_status(&r, <int>maxfds, self._type)
        finally:
            self._end()
        try:
            return fd_list(fds, r.nfds)
        except BaseException:
            discard_fds(fds, r.nfds)
            raise

    def recv_message(self, Py_ssize_t bufsize, Py_ssize_t maxfds=FDPASS_MAX_FDS):
        """Receive one message: (payload of at most bufsize bytes, descriptors).
        A datagram or record longer than bufsize is refused, never cut short."""
        return self._recv_record(bufsize, maxfds, False)

    def recv_message_from(self, Py_ssize_t bufsize, Py_ssize_t maxfds=FDPASS_MAX_FDS):
        """Receive one message as recv_message does, and who sent it:
        (payload, descriptors, Sender(pid, uid, gid, pidfd)) as the kernel
        attests it for this message; the pidfd (-1 where the kernel
        attached none) is the caller's.  Needs passcred=True."""
        if not self._passcred:
            raise ValueError("recv_message_from needs a channel made with passcred=True")
        return self._recv_record(bufsize, maxfds, True)

    cdef tuple _recv_record(self, Py_ssize_t bufsize, Py_ssize_t maxfds, bint from_sender):
        cdef double timeout
        cdef int sock
        cdef int fds[FDPASS_MAX_FDS]
        cdef Received r
        cdef Sender sender
        cdef char *buf
        if bufsize < 1:
            raise ValueError(f"bufsize must be at least 1, got {bufsize}")
        check_maxfds(maxfds)
        sock = self._begin(&timeout)
        try:
            buf = <char *>PyMem_Malloc(bufsize)
            if buf == NULL:
                raise MemoryError(f"cannot allocate a {bufsize}-byte buffer")
            try:
                # A refusing channel takes no descriptor: any that arrives
                # (queued before refusal took effect, or where the kernel
                # cannot refuse) is one too many, and closed.
                self._recv(sock, timeout, buf, bufsize, fds, 0 if self._refuse else <int>maxfds,
                           0 if self._type == SOCK_STREAM else MSG_TRUNC, &r,
                           &sender if from_sender else NULL)
                try:
                    if r.status != RECV_OK and not (r.status == RECV_EMPTY
                                                    and self._type == SOCK_DGRAM):
                        self._raise_status(&r, <int>maxfds)
                    data = PyBytes_FromStringAndSize(buf, r.nbytes)
                    received = fd_list(fds, r.nfds)
                    if not from_sender:
                        return data, received
                    check_attested(&sender, r.total)
                    return data, received, SenderTuple(sender.pid, sender.uid, sender.gid,
                                                       sender.pidfd)
                except BaseException:
                    discard_received(fds, &r, &sender if from_sender else NULL)
                    raise
            finally:
                PyMem_Free(buf)
        finally:
            self._end()

    def recv_many(self, Py_ssize_t max_messages, Py_ssize_t bufsize=1,
                  Py_ssize_t maxfds=FDPASS_MAX_FDS):
        """Receive 1..max_messages messages, in one system call where the
        platform has recvmmsg: a list of (payload, descriptors) as
        recv_message returns them, waiting (as the timeout says) for the
        first only.  When message k cannot be returned, the k before it
        are, and the next recv_many raises k's error (as recvmmsg(2) has
        it), then returns the messages after it."""
        cdef double timeout
        cdef int sock, err = 0
        cdef int *fds
        cdef char *bufs
        cdef Received *outs
        cdef Py_ssize_t i, count = 0
        cdef int taken = 0 if self._refuse else <int>maxfds
        cdef bint failed = False
        if not 1 <= max_messages <= FDPASS_MAX_BATCH:
            raise ValueError(f"max_messages must be within 1..{FDPASS_MAX_BATCH}, "
                             f"got {max_messages}")
        if bufsize < 1:
            raise ValueError(f"bufsize must be at least 1, got {bufsize}")
        check_maxfds(maxfds)
        if self._backlog is not None:
            return self._from_backlog(max_messages)
        sock = self._begin(&timeout)
        try:
            # The structs first, where PyMem_Malloc aligns them, the bytes last.
            outs = <Received *>PyMem_Malloc(max_messages * (sizeof(Received) + bufsize
                                                            + maxfds * sizeof(int)))
            if outs == NULL:
                raise MemoryError(f"cannot allocate room for {max_messages} messages")
            try:
                fds = <int *>(outs + max_messages)
                bufs = <char *>(fds + max_messages * maxfds)
                count = recv_messages(sock, bufs, bufsize, fds, taken,
                                      max_messages,
                                      (0 if self._type == SOCK_STREAM else MSG_TRUNC)
                                      | self._wait_flags(timeout),
                                      timeout, &self._guard, outs, &err)
                if count < 0:
                    raise_os_error(err, None)
                try:
                    items = []
                    for i in range(count):
                        if outs[i].status == RECV_OK or (outs[i].status == RECV_EMPTY
                                                         and self._type == SOCK_DGRAM):
                            items.append((PyBytes_FromStringAndSize(bufs + i * bufsize,
                                                                    outs[i].nbytes),
                                          fd_list(fds + i * taken, outs[i].nfds)))
                            continue
                        failed = True
                        try:
                            self._raise_status(&outs[i], <int>maxfds)
                        except Exception as error:
                            items.append(error)
                        if outs[i].status == RECV_EMPTY and self._type == SOCK_STREAM:
                            break  # end of stream: the rest are the same
                except BaseException:
                    for i in range(count):
                        discard_fds(fds + i * taken, outs[i].nfds)
                    raise
            finally:
                PyMem_Free(outs)
        finally:
            self._end()
        if not failed:
            return items  # every message returned: no backlog to keep
        self._backlog = items
        return self._from_backlog(max_messages)

    cdef list _from_backlog(self, Py_ssize_t max_messages):
        """The messages received before the first error in the backlog, or
        that error raised; the rest stay for the next call."""
        cdef Py_ssize_t n = 0
        backlog = self._backlog
        if isinstance(backlog[0], BaseException):
            error = backlog.pop(0)
            if not backlog:
                self._backlog = None
            raise error
        while n < len(backlog) and n < max_messages and type(backlog[n]) is tuple:
            n += 1
        result = backlog[:n]
        del backlog[:n]
        if not backlog:
            self._backlog = None
        return result

    cdef int _raise_status(self, const Received *r, int maxfds) except -1:
        """The error for a message recv_message cannot return."""
        if self._refuse and r.status != RECV_TRUNCATED and r.status != RECV_EMPTY:
            raise ProtocolError(EBADMSG, (
                "this channel refuses descriptors (refuse_fds=True): "
                f"the message carried some ({r.total} received), and they "
                "are closed in the background"))
        raise_recv_status(r, maxfds, self._type)

    def send_many(self, messages):
        """Send every (payload, descriptors) of messages, in order, in one
        system call where the platform has sendmmsg; each payload at least
        one byte, each message's descriptors a sequence of at most MAX_FDS
        (none is fine).  Returns when all went; an error names in
        .messages_sent how many went whole before it."""
        cdef double timeout
        cdef int sock, err = 0
        cdef Batch batch
        cdef size_t sent = 0
        cdef Py_ssize_t i, j, k, n, counted, total = 0
        cdef Py_buffer *buffers
        cdef char *block
        cdef int *fds
        # A tuple holds its items for the call, whatever another thread does
        # to the caller's list while a send waits without the GIL.
        items = messages if type(messages) is tuple else tuple(messages)
        n = len(items)
        if n == 0:
            return
        for i in range(n):
            data, fs = items[i]
            k = len(fs)
            if k > FDPASS_MAX_FDS:
                raise ValueError(f"at most {FDPASS_MAX_FDS} descriptors fit in one message, "
                                 f"got {k} in message {i}")
            total += k
        block = <char *>PyMem_Malloc(n * (sizeof(Py_buffer) + sizeof(char *) + sizeof(size_t)
                                          + sizeof(int)) + total * sizeof(int))
        if block == NULL:
            raise MemoryError(f"cannot allocate room for {n} messages")
        buffers = <Py_buffer *>block
        batch.data = <const char **>(buffers + n)
        batch.lengths = <size_t *>(batch.data + n)
        batch.nfds = <int *>(batch.lengths + n)
        fds = <int *>(batch.nfds + n)
        batch.fds = fds
        batch.count = n
        batch.atomic = self._type != SOCK_STREAM
        memset(buffers, 0, n * sizeof(Py_buffer))  # PyBuffer_Release skips a view never taken
        try:
            counted, total = total, 0
            for i in range(n):
                item = items[i]
                data, fs = item
                k = len(fs)
                # A fileno() may have grown this list since it was counted:
                # its descriptors would run past the block.
                if k > FDPASS_MAX_FDS or total + k > counted:
                    raise RuntimeError(f"message {i}'s descriptors changed size while "
                                       "send_many read them")
                for j in range(k):
                    fds[total + j] = as_fd(fs[j])
                (<int *>batch.nfds)[i] = <int>k
                total += k
                if type(data) is bytes and type(item) is tuple:  # held by items: no view
                    batch.data[i] = PyBytes_AS_STRING(data)
                    (<size_t *>batch.lengths)[i] = PyBytes_GET_SIZE(data)
                else:
                    PyObject_GetBuffer(data, &buffers[i], PyBUF_SIMPLE)
                    batch.data[i] = <const char *>buffers[i].buf
                    (<size_t *>batch.lengths)[i] = buffers[i].len
                if batch.lengths[i] == 0:
                    raise ValueError(f"message {i}'s payload is empty: every message "
                                     "needs at least one byte")
            sock = self._begin(&timeout)
            try:
                if send_messages(sock, &batch, self._wait_flags(timeout), timeout,
                                 &self._guard, &err, &sent) < 0:
                    total = 0
                    for i in range(batch.done):
                        total += batch.nfds[i]
                    try:
                        raise_send_error(err, sock, fds + total, batch.nfds[batch.done],
                                         sent, self._type, self._connected)
                    except BaseException as error:
                        error.messages_sent = batch.done
                        raise
            finally:
                self._end()
        finally:
            for i in range(n):
                PyBuffer_Release(&buffers[i])
            PyMem_Free(block)

    def peer_pidfd(self):
        """A new pidfd for the connected peer (SO_PEERPIDFD, Linux >= 6.5),
        close-on-exec and the caller's to close: unlike a pid, it cannot
        come to name another process."""
        cdef int fd = self._live_fd(), pidfd = -1, saved, flags
        cdef socklen_t length = sizeof(pidfd)
        if FDPASS_SO_PEERPIDFD < 0:
            raise_os_error(ENOPROTOOPT, "this platform has no SO_PEERPIDFD")
        if getsockopt(fd, SOL_SOCKET, FDPASS_SO_PEERPIDFD, &pidfd, &length) < 0:
            saved = errno
            if saved == ENOPROTOOPT:
                raise_os_error(saved, "SO_PEERPIDFD needs Linux 6.5 or later")
            raise_os_error(saved, "SO_PEERPIDFD: no connected peer" if saved == ENODATA
                           else f"SO_PEERPIDFD on descriptor {fd}")
        flags = fcntl(pidfd, F_GETFD)
        if flags >= 0 and not flags & FD_CLOEXEC:
            fcntl(pidfd, F_SETFD, flags | FD_CLOEXEC)
        return pidfd


cdef int check_attested(const Sender *sender, int total) except -1:
    """A message is from a sender only when the kernel names one: no
    credentials at all, or pid 0, is a message the kernel cannot attribute
    (queued before SO_PASSCRED was set, or sent from outside this pid
    namespace), and an EOFError at the end of a stream never gets here.
    A pidfd the kernel could make but not install (this process at its
    descriptor limit) must not pass for a kernel without SCM_PIDFD."""
    if sender.pidfd_error == EMFILE or sender.pidfd_error == ENFILE:
        raise ProtocolError(EBADMSG, (
            "the kernel could not install the sender's pidfd (SCM_PIDFD: "
            f"{_errno.errorcode[sender.pidfd_error]}): this process is at its descriptor limit "
            f"(RLIMIT_NOFILE); the message's {total} descriptors are closed in the background"))
    if not sender.attested:
        raise ProtocolError(EBADMSG, "the kernel attached no credentials to this message "
                            "(SCM_CREDENTIALS): its sender is unknown")
    if sender.pid == 0:
        raise ProtocolError(EBADMSG, (
            "the kernel could not name this message's sender (pid 0): it was queued "
            "before SO_PASSCRED took effect, or sent from outside this pid namespace"))
    return 0


cdef int backlogged() except -1:
    raise ValueError("recv_many holds messages it received past a failed one, in order: "
                     "take them with recv_many before any other receive")


cdef int discard_all_of(list fds) except -1:
    cdef int fd
    for number in fds:
        fd = number
        discard_fds(&fd, 1)
    return 0


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
