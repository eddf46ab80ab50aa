"""The syscall engine: sendmsg/recvmsg with SCM_RIGHTS, one PEP 475 loop,
one errno-to-exception mapping, and the one way descriptors are discarded
(by the closer thread).  Nothing here allocates per message."""

from cpython.exc cimport PyErr_CheckSignals
from cpython.long cimport PyLong_AsLongAndOverflow, PyLong_Check
from libc.errno cimport (
    EAFNOSUPPORT, EAGAIN, EBADF, EBADMSG, ECONNREFUSED, EINTR, EMSGSIZE, ENOTCONN, EPERM, EPIPE,
    ETIMEDOUT, errno,
)
from libc.limits cimport INT_MAX
from libc.string cimport memcpy, memset, strerror
from posix.fcntl cimport F_GETFD, F_SETFD, FD_CLOEXEC, fcntl
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.uio cimport iovec

from fdpass._posix cimport (
    AF_UNIX, CMSG_DATA, CMSG_FIRSTHDR, CMSG_LEN, CMSG_NXTHDR, CMSG_SPACE,
    FDPASS_CLOEXEC_METHOD, FDPASS_CONTROL_INTS, FDPASS_CONTROL_MAX, FDPASS_CREDENTIALS_METHOD,
    FDPASS_FAMILY_METHOD, FDPASS_HAVE_MSG_DONTWAIT, FDPASS_MAX_FDS, FDPASS_MSG_CMSG_CLOEXEC,
    FDPASS_MSG_NOSIGNAL, FDPASS_NOSIGPIPE_METHOD, FDPASS_PORTABLE_BUILD, FDPASS_SCM_PIDFD,
    FDPASS_SIGPIPE_GUARD, FDPASS_SO_DOMAIN, FDPASS_WOULD_BLOCK, MSG_CTRUNC, MSG_DONTWAIT,
    MSG_TRUNC, POLLIN, POLLOUT, SCM_RIGHTS, SOL_SOCKET, SOCK_DGRAM, SOCK_STREAM, SO_TYPE,
    cmsghdr, fdpass_control_t, fdpass_read_credentials, fdpass_sendmsg, fdpass_sigpipe_block,
    fdpass_sigpipe_restore, fdpass_sigpipe_t, getsockname, getsockopt, msghdr, poll, pollfd,
    recvmsg, sockaddr, sockaddr_storage, socklen_t,
)

import os
import socket as _socket

from fdpass._errors import ProtocolError

cdef extern from "fdpass_closer.h" nogil:
    enum: FDPASS_CLOSERS
    int fdpass_closer_init()
    void fdpass_discard(const int *fds, int n, int received)
    int fdpass_discards_wait(double timeout)
    void fdpass_closer_retire_idle()
    void fdpass_closer_counts(int *workers, int *busy, size_t *queued)

if fdpass_closer_init() != 0:
    raise MemoryError("pthread_atfork: cannot register the closer's fork handler")

#: Closes that may block at once (files on a hung mount, sockets of the
#: caller's that linger) before any other discard waits behind them.
CLOSERS = FDPASS_CLOSERS


cdef double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef int raise_os_error(int err, str context, Py_ssize_t written=-1) except -1:
    """The one place an errno becomes an exception: OSError picks the
    subclass (BlockingIOError, BrokenPipeError, TimeoutError, ...).  A
    would-block error of a send carries the bytes already sent (written
    >= 0) as BlockingIOError.characters_written, as io's writes do."""
    if err == FDPASS_ECLOSED:
        raise ValueError("I/O operation on closed channel: it was closed while "
                         "this call waited")
    if err == ETIMEDOUT:
        raise OSError(err, "timed out")
    message = strerror(err).decode("utf-8", "replace")
    if context:
        message = f"{message}: {context}"
    if written >= 0 and FDPASS_WOULD_BLOCK(err):
        raise OSError(err, message, written)
    raise OSError(err, message)


cdef int as_fd(object f) except -1:
    """A descriptor number from an int or an object with fileno(),
    as the os and socket modules accept them."""
    cdef long value
    cdef int overflow = 0
    number = f
    if not PyLong_Check(f):
        try:
            fileno = f.fileno
        except AttributeError:
            raise TypeError(
                f"expected a descriptor: an int or an object with fileno(), "
                f"not {type(f).__name__}") from None
        number = fileno()
        if not PyLong_Check(number):
            raise TypeError(f"{type(f).__name__}.fileno() returned "
                            f"{type(number).__name__}, not int")
    value = PyLong_AsLongAndOverflow(number, &overflow)
    if overflow > 0 or value > INT_MAX:
        raise OverflowError(f"descriptor {number} is beyond the range of a C int")
    if overflow < 0 or value < 0:
        if number is f:
            raise ValueError(f"descriptor must be non-negative, got {number}")
        raise ValueError(f"{type(f).__name__}.fileno() returned {number}: is it closed?")
    return <int>value


cdef int check_unix_socket(int fd, int *family, int *err) noexcept nogil:
    """0 for an AF_UNIX socket; -1 with err set (EBADF, ENOTSOCK, or
    EAFNOSUPPORT with family) for anything else.  One syscall."""
    cdef sockaddr_storage addr
    cdef socklen_t length
    cdef int value = 0
    if FDPASS_SO_DOMAIN >= 0:
        length = sizeof(value)
        if getsockopt(fd, SOL_SOCKET, FDPASS_SO_DOMAIN, &value, &length) < 0:
            err[0] = errno
            return -1
    else:
        length = sizeof(addr)
        memset(&addr, 0, sizeof(addr))
        if getsockname(fd, <sockaddr *>&addr, &length) < 0:
            err[0] = errno
            return -1
        value = addr.ss_family
    family[0] = value
    if value != AF_UNIX:
        err[0] = EAFNOSUPPORT
        return -1
    return 0


cdef int unix_socket_type(int fd, int *family, int *err) noexcept nogil:
    """SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM for an AF_UNIX socket;
    -1 with err set, as check_unix_socket, for anything else."""
    cdef int value = 0
    cdef socklen_t length = sizeof(value)
    if check_unix_socket(fd, family, err) < 0:
        return -1
    if getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &length) < 0:
        err[0] = errno
        return -1
    return value


cdef int wait_ready(int fd, bint writing, double timeout, double deadline,
                    int *err) except -2:
    """Poll until fd is ready (1), the deadline passes (0) or poll fails (-1).
    A negative timeout waits for ever."""
    cdef pollfd pfd
    cdef int rc, ms, saved
    cdef double remaining
    pfd.fd = fd
    pfd.events = POLLOUT if writing else POLLIN
    while True:
        if timeout < 0:
            ms = -1
        else:
            remaining = deadline - monotonic()
            if remaining <= 0:
                return 0
            ms = <int>(remaining * 1000.0 + 0.999) if remaining < 2e6 else 2000000000
        with nogil:
            rc = poll(&pfd, 1, ms)
            saved = errno
        if rc > 0:
            return 1
        if rc < 0:
            if saved != EINTR:
                err[0] = saved
                return -1
            PyErr_CheckSignals()


cdef double deadline_for(double timeout) noexcept nogil:
    return monotonic() + timeout if timeout > 0 else 0.0


cdef inline Py_ssize_t raw_call(bint writing, int sock, msghdr *msg, int flags) noexcept nogil:
    return fdpass_sendmsg(sock, msg, flags) if writing else recvmsg(sock, msg, flags)


cdef int full_buffer(int err, bint writing, int sock) noexcept nogil:
    """err, or EAGAIN for an EMSGSIZE from a send on a stream socket: macOS's
    way of saying that the peer's buffer has no room yet for a message with
    descriptors, so it is waited for as any full buffer is.  On a datagram
    or seqpacket socket EMSGSIZE means a message too long, and stays an
    error; a Linux stream never says it, so this one path serves every
    build.  One getsockopt, on that error only."""
    cdef int value = 0
    cdef socklen_t length = sizeof(value)
    if (writing and err == EMSGSIZE
            and getsockopt(sock, SOL_SOCKET, SO_TYPE, &value, &length) == 0
            and value == SOCK_STREAM):
        return EAGAIN
    return err


cdef Py_ssize_t msg_call(bint writing, int sock, msghdr *msg, int flags,
                         double timeout, double deadline, const int *stop,
                         int *err) except -2:
    """sendmsg/recvmsg in the PEP 475 loop.  The first try is non-blocking
    and keeps the GIL (it cannot wait, and releasing the GIL costs more than
    the call); only a call that would block waits with the GIL released:
    inside the syscall when flags lack MSG_DONTWAIT (the descriptor's own
    behaviour), else in poll, for ever when timeout < 0, else while the
    timeout allows (until deadline when it is > 0).  A call that waits in
    poll and is woken by close() from another thread (*stop set) never
    touches the socket again.  EINTR is retried unless a signal handler
    raised.  -1 with err set on failure (ETIMEDOUT for a timeout,
    FDPASS_ECLOSED when *stop was set while the call waited)."""
    cdef Py_ssize_t n
    cdef int saved, ready
    while True:
        if FDPASS_HAVE_MSG_DONTWAIT:
            n = raw_call(writing, sock, msg, flags | MSG_DONTWAIT)
            saved = errno
            if n < 0 and FDPASS_WOULD_BLOCK(saved) and not flags & MSG_DONTWAIT:
                with nogil:
                    n = raw_call(writing, sock, msg, flags)
                    saved = errno
        else:
            with nogil:
                n = raw_call(writing, sock, msg, flags)
                saved = errno
        if n >= 0:
            return n
        saved = full_buffer(saved, writing, sock)
        if stop != NULL and stop[0]:
            saved = FDPASS_ECLOSED
        elif saved == EINTR:
            PyErr_CheckSignals()
            continue
        elif FDPASS_WOULD_BLOCK(saved) and timeout != 0:
            ready = wait_ready(sock, writing, timeout, deadline, err)
            if stop != NULL and stop[0]:
                ready = -1
                err[0] = FDPASS_ECLOSED
            if ready == 1:
                continue
            if ready == 0:
                err[0] = ETIMEDOUT
            return -1
        err[0] = saved
        return -1


cdef int send_message(int sock, const int *fds, int nfds, const char *data,
                      size_t length, int flags, double timeout, const int *stop,
                      int *err, size_t *sent) except -2:
    """Send data with fds attached to its first byte, and the rest of it
    within the same deadline; 0, or -1 with err and sent set to the bytes
    that did go (the descriptors with them, when sent > 0).  Never raises
    SIGPIPE: MSG_NOSIGNAL, or SO_NOSIGPIPE set on the socket beforehand,
    or else (FDPASS_SIGPIPE_GUARD) SIGPIPE blocked in this thread around
    the whole send, and the one it raised taken.  A build without the
    guard compiles to the plain send_all call."""
    cdef fdpass_sigpipe_t guard
    cdef int rc = 0
    if not FDPASS_SIGPIPE_GUARD:
        return send_all(sock, fds, nfds, data, length, flags, timeout, stop, err, sent)
    fdpass_sigpipe_block(&guard)
    try:
        rc = send_all(sock, fds, nfds, data, length, flags, timeout, stop, err, sent)
    finally:
        fdpass_sigpipe_restore(&guard, rc < 0 and err[0] == EPIPE)
    return rc


cdef int send_all(int sock, const int *fds, int nfds, const char *data,
                  size_t length, int flags, double timeout, const int *stop,
                  int *err, size_t *sent) except -2:
    """send_message's sendmsg loop: the descriptors go with the first
    byte, in a control buffer of exactly CMSG_SPACE(nfds ints), as FreeBSD
    requires; later parts of a stream's payload go with no control buffer
    at all (NULL, length 0)."""
    cdef fdpass_control_t control
    cdef msghdr msg
    cdef iovec iov
    cdef cmsghdr *cmsg
    cdef Py_ssize_t n
    cdef size_t fdbytes = nfds * sizeof(int)
    cdef double deadline = deadline_for(timeout)
    memset(&msg, 0, sizeof(msg))
    memset(control.buf, 0, CMSG_SPACE(fdbytes))
    iov.iov_base = <void *>data
    iov.iov_len = length
    msg.msg_iov = &iov
    msg.msg_iovlen = 1
    msg.msg_control = control.buf
    msg.msg_controllen = CMSG_SPACE(fdbytes)
    cmsg = CMSG_FIRSTHDR(&msg)
    cmsg.cmsg_level = SOL_SOCKET
    cmsg.cmsg_type = SCM_RIGHTS
    cmsg.cmsg_len = CMSG_LEN(fdbytes)
    memcpy(CMSG_DATA(cmsg), fds, fdbytes)
    flags |= FDPASS_MSG_NOSIGNAL
    sent[0] = 0
    while True:
        n = msg_call(True, sock, &msg, flags, timeout, deadline, stop, err)
        if n < 0:
            return -1
        # A stream socket may take part of a long payload: the descriptors
        # went with the first byte, the rest follows without them.
        sent[0] += n
        if sent[0] >= length:
            return 0
        iov.iov_base = <void *>(data + sent[0])
        iov.iov_len = length - sent[0]
        msg.msg_control = NULL
        msg.msg_controllen = 0


cdef void discard_fds(const int *fds, int n) noexcept nogil:
    """Received descriptors nobody takes: the closer closes them (a socket
    its sender set to linger, abortively), so that no close a peer chose
    stalls the caller or its event loop."""
    if n > 0:
        fdpass_discard(fds, n, 1)


def discard(f, *, bint own=False):
    """Drop f, a descriptor number or a socket.socket (detached here), on
    the closer: the one way fdpass drops a descriptor, in every module.
    own: the library's or the caller's own (a channel's socket, a
    listener), closed as it was set up; else a received one, refused (a
    socket set to linger is closed without lingering)."""
    cdef int fd
    if isinstance(f, _socket.socket):
        fd = f.detach()
        if fd < 0:
            return
    elif PyLong_Check(f):
        fd = f
        if fd < 0:
            raise ValueError(f"descriptor must be non-negative, got {fd}")
    else:
        raise TypeError(f"discard takes a descriptor number or a socket.socket, "
                        f"not {type(f).__name__}")
    with nogil:
        fdpass_discard(&fd, 1, not own)


def discard_all(fds):
    """discard() each received descriptor of the list fds, emptying it."""
    while fds:
        discard(fds.pop())


def wait_for_discards(timeout=None):
    """Wait until every descriptor fdpass discarded so far is closed, and
    its closing threads are gone; True then, False when timeout seconds
    (None: no limit) passed first.  Discards are closed in the background;
    this is for code that counts its descriptors or threads (a leak check,
    a fork that follows)."""
    cdef double seconds = -1.0
    cdef int idle
    if timeout is not None:
        seconds = timeout
        if not seconds >= 0:
            raise ValueError(f"timeout must be None or a number >= 0, got {timeout!r}")
    with nogil:
        idle = fdpass_discards_wait(seconds)
    return bool(idle)


def closer_state():
    """(threads, closing, queued): the closer's threads alive, those of
    them in a close, and the descriptors waiting for one."""
    cdef int workers = 0, busy = 0
    cdef size_t queued = 0
    fdpass_closer_counts(&workers, &busy, &queued)
    return workers, busy, queued


def _retire_idle_closers():
    with nogil:
        fdpass_closer_retire_idle()


# A fork finds no idle closing thread (only one blocked in a close, if any):
# Python 3.12+ warns of forking a multi-threaded process.
os.register_at_fork(before=_retire_idle_closers)


cdef inline int take_fds(msghdr *msg, int *fds, int maxfds, int *extra, int *nextra,
                         int *total, size_t *other_space, Sender *sender) noexcept nogil:
    """Walk every control message: the first maxfds SCM_RIGHTS descriptors
    go to fds, any beyond them to extra (for discarding); so does every
    SCM_PIDFD's pidfd, but the first when sender asks for one, with the
    SCM_CREDENTIALS there are.  Lengths from the kernel are clamped to the
    buffer (compared, never added: a huge one must not wrap the pointer).
    Returns how many went to fds."""
    cdef cmsghdr *cmsg = CMSG_FIRSTHDR(msg)
    cdef unsigned char *end = <unsigned char *>msg.msg_control + msg.msg_controllen
    cdef unsigned char *data
    cdef size_t length, count, i
    cdef int fd, taken = 0
    cdef bint rights, last = False
    while cmsg != NULL and not last:
        if cmsg.cmsg_len < CMSG_LEN(0):
            break
        length = cmsg.cmsg_len
        if length > <size_t>(end - <unsigned char *>cmsg):
            # Cut short by the buffer (macOS reports the untruncated length):
            # take what is there, and trust no header after it.
            length = end - <unsigned char *>cmsg
            last = True
        rights = cmsg.cmsg_level == SOL_SOCKET and cmsg.cmsg_type == SCM_RIGHTS
        if rights or (cmsg.cmsg_level == SOL_SOCKET and cmsg.cmsg_type == FDPASS_SCM_PIDFD):
            data = CMSG_DATA(cmsg)
            count = (length - (data - <unsigned char *>cmsg)) // sizeof(int)
            for i in range(count):
                memcpy(&fd, data + i * sizeof(int), sizeof(int))
                if fd < 0:  # SCM_PIDFD's -errno: no pidfd could be made
                    if not rights and sender != NULL and sender.pidfd < 0:
                        sender.pidfd_error = -fd
                    continue
                if FDPASS_MSG_CMSG_CLOEXEC == 0:
                    fcntl(fd, F_SETFD, FD_CLOEXEC)  # the only descriptor flag
                if rights and taken < maxfds:
                    fds[taken] = fd
                    taken += 1
                elif not rights and sender != NULL and sender.pidfd < 0:
                    sender.pidfd = fd
                else:
                    extra[nextra[0]] = fd
                    nextra[0] += 1
                if rights:
                    total[0] += 1
        elif sender != NULL and fdpass_read_credentials(cmsg, length, &sender.pid,
                                                        &sender.uid, &sender.gid):
            sender.attested = True
        if not rights:
            other_space[0] += CMSG_SPACE(length - CMSG_LEN(0))
        cmsg = CMSG_NXTHDR(msg, cmsg)
    return taken


cdef inline void init_sender(Sender *sender) noexcept nogil:
    sender.attested = False
    sender.pid = sender.uid = sender.gid = -1
    sender.pidfd = -1
    sender.pidfd_error = 0


def walk_control(const unsigned char[:] control, int maxfds, bint from_sender=False):
    """The control-message walk over a buffer as a kernel might fill one, for
    the tests to give it what other kernels do (lengths beyond the buffer,
    headers cut short, credentials too short).  (fds, extra, total, sender):
    the descriptors handed over, the ones to discard, the SCM_RIGHTS count,
    and with from_sender (pid, uid, gid, pidfd), pid, uid and gid None
    without credentials, pidfd -errno where SCM_PIDFD held one, else -1.
    Closes nothing."""
    cdef fdpass_control_t buf
    cdef msghdr msg
    cdef int fds[FDPASS_MAX_FDS]
    cdef int extra[FDPASS_CONTROL_INTS]
    cdef int nextra = 0, total = 0, taken
    cdef size_t other_space = 0, size = control.shape[0]
    cdef Sender sender
    if size > FDPASS_CONTROL_MAX:
        raise ValueError(f"a control buffer holds at most {FDPASS_CONTROL_MAX} bytes")
    if not 0 <= maxfds <= FDPASS_MAX_FDS:
        raise ValueError(f"maxfds must be within 0..{FDPASS_MAX_FDS}, got {maxfds}")
    memset(&msg, 0, sizeof(msg))
    if size:
        memcpy(buf.buf, &control[0], size)
        msg.msg_control = buf.buf
    msg.msg_controllen = size
    init_sender(&sender)
    taken = take_fds(&msg, fds, maxfds, extra, &nextra, &total, &other_space,
                     &sender if from_sender else NULL)
    found = None
    if from_sender:
        pidfd = sender.pidfd if sender.pidfd >= 0 else -sender.pidfd_error or -1
        found = ((sender.pid, sender.uid, sender.gid, pidfd) if sender.attested
                 else (None, None, None, pidfd))
    return [fds[i] for i in range(taken)], [extra[i] for i in range(nextra)], total, found


cdef int recv_message_into(int sock, void *buf, size_t buflen, int *fds, int maxfds,
                           int flags, double timeout, const int *stop, Received *out,
                           Sender *sender, int *err) except -2:
    """One recvmsg into buf; its descriptors into fds[:maxfds], and with a
    sender, who sent it (as far as the socket's SO_PASSCRED and
    SO_PASSPIDFD have the kernel say).  The control buffer always has room
    for the most a message can carry, so the kernel never discards
    descriptors for want of room: we do, off this thread.  MSG_TRUNC in
    flags (datagram and seqpacket sockets) refuses a record longer than
    buf.  0 with out->status set (on any status but RECV_OK and RECV_EMPTY
    every descriptor, the sender's pidfd too, is already discarded), or -1
    with err (after *stop was set: FDPASS_ECLOSED, and the message's
    descriptors discarded)."""
    cdef fdpass_control_t control
    cdef int extra[FDPASS_CONTROL_INTS]
    cdef int nextra = 0
    cdef msghdr msg
    cdef iovec iov
    cdef Py_ssize_t n
    cdef size_t other_space = 0, room
    memset(&msg, 0, sizeof(msg))
    iov.iov_base = buf
    iov.iov_len = buflen
    msg.msg_iov = &iov
    msg.msg_iovlen = 1
    msg.msg_control = control.buf
    msg.msg_controllen = FDPASS_CONTROL_MAX
    out.total = 0
    out.nfds = 0
    out.buflen = buflen
    if sender != NULL:
        init_sender(sender)
    n = msg_call(False, sock, &msg, flags | FDPASS_MSG_CMSG_CLOEXEC, timeout,
                 deadline_for(timeout), stop, err)
    if n < 0:
        return -1
    out.nbytes = n
    out.nfds = take_fds(&msg, fds, maxfds, extra, &nextra, &out.total, &other_space, sender)
    discard_fds(extra, nextra)
    if stop != NULL and stop[0]:
        discard_received(fds, out, sender)
        err[0] = FDPASS_ECLOSED
        return -1
    if msg.msg_flags & MSG_CTRUNC:
        # With room for every descriptor a message can carry, the kernel
        # stops installing them when this process cannot take another
        # (EMFILE); room tells the two apart where a message can carry more.
        room = (FDPASS_CONTROL_MAX - other_space - CMSG_LEN(0)) // sizeof(int)
        out.status = RECV_CTRUNC_LIMIT if <size_t>out.total < room else RECV_CTRUNC
    elif out.total > maxfds:
        out.status = RECV_TOO_MANY
    elif flags & MSG_TRUNC and msg.msg_flags & MSG_TRUNC:
        out.status = RECV_TRUNCATED
    elif n == 0 and out.total == 0:
        out.status = RECV_EMPTY
        return 0
    else:
        out.status = RECV_OK
        return 0
    discard_received(fds, out, sender)
    return 0


cdef void discard_received(const int *fds, Received *r, Sender *sender) noexcept nogil:
    """Discard what one receive took: its descriptors, and the sender's pidfd."""
    discard_fds(fds, r.nfds)
    r.nfds = 0
    if sender != NULL and sender.pidfd >= 0:
        discard_fds(&sender.pidfd, 1)
        sender.pidfd = -1


cdef int send_errno(int err, int sock_type, bint connected) noexcept nogil:
    """A gone peer is EPIPE on every socket type: on a connected datagram
    socket the kernel says ECONNREFUSED, then ENOTCONN."""
    if sock_type == SOCK_DGRAM and (err == ECONNREFUSED or (connected and err == ENOTCONN)):
        return EPIPE
    return err


cdef int raise_send_error(int err, int sock, const int *fds, int nfds,
                          size_t sent, int sock_type, bint connected) except -1:
    """Name the descriptor behind an EBADF (the kernel does not say which),
    and the likely reason for an EPERM."""
    cdef int i
    if err == EBADF:
        for i in range(nfds):
            if fcntl(fds[i], F_GETFD) < 0:
                raise_os_error(err, f"descriptor {fds[i]} is not open")
        raise_os_error(err, f"socket descriptor {sock} is not open")
    if err == EPERM and nfds > 0:
        raise_os_error(err, "the kernel refused to pass descriptors: the peer most "
                       "likely refuses them (SO_PASSRIGHTS turned off on its socket, "
                       "or a security module)")
    raise_os_error(send_errno(err, sock_type, connected), None, sent)


cdef int raise_recv_status(const Received *r, int maxfds, int sock_type) except -1:
    """EOFError at end of stream; ProtocolError (EBADMSG) for a message
    that breaks the protocol, a message without a descriptor included."""
    if r.status == RECV_EMPTY and sock_type != SOCK_DGRAM:
        raise EOFError("end of stream: the peer closed the connection")
    if r.status == RECV_TOO_MANY:
        message = (f"the message carried {r.total} descriptors where at most "
                   f"{maxfds} were expected; all were closed")
    elif r.status == RECV_CTRUNC_LIMIT:
        message = ("control data truncated (MSG_CTRUNC) with room to spare: the "
                   "kernel dropped descriptors this process could not take, most "
                   "likely because it reached its descriptor limit (RLIMIT_NOFILE, "
                   f"EMFILE); the {r.total} received were closed")
    elif r.status == RECV_CTRUNC:
        message = ("control data truncated (MSG_CTRUNC): the message carried "
                   f"more than the {FDPASS_MAX_FDS} descriptors one message may; "
                   f"the {r.total} received were closed")
    elif r.status == RECV_TRUNCATED:
        message = (f"the message ({r.nbytes} bytes) is longer than bufsize "
                   f"({r.buflen}): refused rather than cut short; its {r.total} "
                   "descriptors were closed")
    else:
        message = f"the message ({r.nbytes} bytes) carried no descriptor"
    raise ProtocolError(EBADMSG, message)


#: Built with FDPASS_PORTABLE=1: the fallbacks below, not Linux's facilities.
PORTABLE = bool(FDPASS_PORTABLE_BUILD)
#: How received descriptors become close-on-exec in this build.
CLOEXEC_METHOD = FDPASS_CLOEXEC_METHOD.decode("ascii")
#: How a send to a gone peer is kept from raising SIGPIPE.
NOSIGPIPE_METHOD = FDPASS_NOSIGPIPE_METHOD.decode("ascii")
#: How a socket's address family is checked.
FAMILY_METHOD = FDPASS_FAMILY_METHOD.decode("ascii")
#: Where peer_credentials() comes from (getpeereid: no pid, -1).
CREDENTIALS_METHOD = FDPASS_CREDENTIALS_METHOD.decode("ascii")
