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
from libc.stdlib cimport free, malloc
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
    FDPASS_HAVE_MMSG, FDPASS_MAX_BATCH, cmsghdr, fdpass_control_t, fdpass_mmsghdr,
    fdpass_read_credentials, fdpass_recv_call, fdpass_send_call, fdpass_sigpipe_block,
    fdpass_small_fd,
    fdpass_sigpipe_restore, fdpass_sigpipe_t, getsockname, getsockopt, msghdr, poll, pollfd,
    recvmsg, sockaddr, sockaddr_storage, socklen_t,
)

import os
import socket as _socket

from fdpass._errors import ProtocolError

cdef extern from "fdpass_closer.h" nogil:
    enum: FDPASS_CLOSERS
    enum: FDPASS_DEFUSES_QUEUES
    int fdpass_closer_init()
    void fdpass_discard(const int *fds, int n, int received)
    int fdpass_discards_wait(double timeout)
    void fdpass_defuse_queue(int fd)
    void fdpass_closer_retire_idle()
    void fdpass_closer_counts(int *workers, int *busy, size_t *queued)

if fdpass_closer_init() != 0:
    raise MemoryError("pthread_atfork: cannot register the closer's fork handler")

#: Closes that may block at once (files on a hung mount, sockets of the
#: caller's that linger) before any other discard waits behind them.
CLOSERS = FDPASS_CLOSERS
#: Whether a socket's queue is defused before its close (Linux's SO_PEEK_OFF;
#: not in the portable build): else a peer's in-flight lingering socket can
#: make that close block a closing thread.
DEFUSES_QUEUES = bool(FDPASS_DEFUSES_QUEUES)


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
    cdef int overflow = 0, fd
    if fdpass_small_fd(f, &fd):
        return fd
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


cdef inline Py_ssize_t raw_call(bint writing, int sock, msghdr *msg, fdpass_mmsghdr *many,
                               unsigned int vlen, int flags) noexcept nogil:
    if writing:
        return fdpass_send_call(sock, msg, many, vlen, flags)
    return fdpass_recv_call(sock, msg, many, vlen, flags)


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


cdef inline bint tripped(const Guard *guard, int sock) noexcept nogil:
    """Whether the call's socket is no longer its own: the channel was
    closed, or the socket.socket it wraps was closed elsewhere (its number
    may be another file's already)."""
    return guard != NULL and (guard.stop[0] != 0 or (guard.owner_fd != NULL
                                                     and guard.owner_fd[0] != sock))


cdef inline Py_ssize_t msg_call(bint writing, int sock, msghdr *msg, fdpass_mmsghdr *many,
                                unsigned int vlen, int flags, double timeout, double deadline,
                                const Guard *guard, int *err) except -2:
    """sendmsg/recvmsg in the PEP 475 loop (with many, sendmmsg/recvmmsg
    of up to vlen messages: the count).  A send's first try is non-blocking
    and keeps the GIL (it cannot wait, and releasing the GIL costs more than
    the call).  A receive is one call without the GIL, because the kernel
    discards what this process cannot install (at RLIMIT_NOFILE), and the
    last close of a discarded descriptor, in this thread on the way out of
    the call, can block for as long as its sender chose; with the GIL
    released anyway, a non-blocking try before a blocking one would only
    cost every receive that waits a second system call.  A call that would block
    waits with the GIL released: inside the syscall when flags lack
    MSG_DONTWAIT (the descriptor's own behaviour), else in poll, for ever
    when timeout < 0, else while the timeout allows (until deadline when it
    is > 0).  A call that waits in
    poll or inside the syscall and finds its socket no longer its own
    (tripped: closed from another thread, or its socket.socket closed
    elsewhere) never touches the number again.  EINTR is retried unless a signal handler
    raised.  -1 with err set on failure (ETIMEDOUT for a timeout,
    FDPASS_ECLOSED when the guard tripped while the call waited)."""
    cdef Py_ssize_t n
    cdef int saved, ready
    while True:
        if FDPASS_HAVE_MSG_DONTWAIT and writing:
            n = fdpass_send_call(sock, msg, many, vlen, flags | MSG_DONTWAIT)
            saved = errno
            if n < 0 and FDPASS_WOULD_BLOCK(saved) and not flags & MSG_DONTWAIT:
                with nogil:
                    n = fdpass_send_call(sock, msg, many, vlen, flags)
                    saved = errno
        else:
            with nogil:
                n = raw_call(writing, sock, msg, many, vlen, flags)
                saved = errno
        if n >= 0:
            return n
        saved = full_buffer(saved, writing, sock)
        if tripped(guard, sock):
            saved = FDPASS_ECLOSED
        elif saved == EINTR:
            PyErr_CheckSignals()
            if not tripped(guard, sock):
                continue
            saved = FDPASS_ECLOSED
        elif FDPASS_WOULD_BLOCK(saved) and timeout != 0:
            ready = wait_ready(sock, writing, timeout, deadline, err)
            if tripped(guard, sock):
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
                      size_t length, int flags, double timeout, const Guard *guard,
                      int *err, size_t *sent) except -2:
    """Send data with fds attached to its first byte, and the rest of it
    within the same deadline; 0, or -1 with err and sent set to the bytes
    that did go (the descriptors with them, when sent > 0).  Never raises
    SIGPIPE: MSG_NOSIGNAL, or SO_NOSIGPIPE set on the socket beforehand,
    or else (FDPASS_SIGPIPE_GUARD) SIGPIPE blocked in this thread around
    the whole send, and the one it raised taken.  A build without the
    guard compiles to the plain send_all call."""
    cdef Batch one
    if not FDPASS_SIGPIPE_GUARD:
        return send_all(sock, fds, nfds, data, length, flags, timeout, deadline_for(timeout),
                        guard, err, sent)
    one.count = 1
    one.fds = fds
    one.nfds = &nfds
    one.data = &data
    one.lengths = &length
    one.atomic = False
    return send_messages(sock, &one, flags, timeout, guard, err, sent)


cdef int send_messages(int sock, Batch *batch, int flags, double timeout,
                       const Guard *guard, int *err, size_t *sent) except -2:
    """Send every message of batch, in order, within one deadline, each as
    send_message sends one: 0, or -1 with err, batch.done (the messages that
    went whole) and sent (the bytes of the next one that went)."""
    cdef fdpass_sigpipe_t sigpipe
    cdef int rc = 0
    if not FDPASS_SIGPIPE_GUARD:
        return send_batch(sock, batch, flags, timeout, guard, err, sent)
    fdpass_sigpipe_block(&sigpipe)
    try:
        rc = send_batch(sock, batch, flags, timeout, guard, err, sent)
    finally:
        fdpass_sigpipe_restore(&sigpipe, rc < 0 and err[0] == EPIPE)
    return rc


cdef inline size_t fill_rights(msghdr *msg, unsigned char *control, const int *fds,
                               int nfds) noexcept nogil:
    """msg's control buffer: fds in one SCM_RIGHTS message of exactly
    CMSG_SPACE(nfds ints), as FreeBSD requires, or none without fds.  Its size."""
    cdef cmsghdr *cmsg
    cdef size_t fdbytes = nfds * sizeof(int)
    if nfds == 0:
        msg.msg_control = NULL
        msg.msg_controllen = 0
        return 0
    memset(control, 0, CMSG_SPACE(fdbytes))
    msg.msg_control = control
    msg.msg_controllen = CMSG_SPACE(fdbytes)
    cmsg = CMSG_FIRSTHDR(msg)
    cmsg.cmsg_level = SOL_SOCKET
    cmsg.cmsg_type = SCM_RIGHTS
    cmsg.cmsg_len = CMSG_LEN(fdbytes)
    memcpy(CMSG_DATA(cmsg), fds, fdbytes)
    return CMSG_SPACE(fdbytes)


cdef int send_batch(int sock, Batch *batch, int flags, double timeout,
                    const Guard *guard, int *err, size_t *sent) except -2:
    """sendmmsg where the platform has it and the batch cannot be split
    (records, or one-byte messages on a stream: a stream's sendmmsg could
    send part of one message and then the next); else send_all per message."""
    cdef double deadline = deadline_for(timeout)
    cdef fdpass_mmsghdr *many
    cdef iovec *iovs
    cdef unsigned char *control
    cdef size_t space = 0
    cdef Py_ssize_t i, n, offset = 0, count = batch.count
    cdef bint whole = True
    batch.done = 0
    sent[0] = 0
    for i in range(count):
        if batch.lengths[i] != 1 and not batch.atomic:
            whole = False
        space += CMSG_SPACE(batch.nfds[i] * sizeof(int))
    if not FDPASS_HAVE_MMSG or count < 2 or not whole:
        for i in range(count):
            if send_all(sock, batch.fds + offset, batch.nfds[i], batch.data[i],
                        batch.lengths[i], flags, timeout, deadline, guard, err, sent) < 0:
                return -1
            offset += batch.nfds[i]
            batch.done += 1
            sent[0] = 0
            if batch.done < count and tripped(guard, sock):
                err[0] = FDPASS_ECLOSED
                return -1
        return 0
    many = <fdpass_mmsghdr *>malloc(count * (sizeof(fdpass_mmsghdr) + sizeof(iovec)) + space)
    if many == NULL:
        raise MemoryError(f"cannot allocate a batch of {count} messages")
    try:
        iovs = <iovec *>(many + count)
        control = <unsigned char *>(iovs + count)
        memset(many, 0, count * sizeof(fdpass_mmsghdr))
        for i in range(count):
            iovs[i].iov_base = <void *>batch.data[i]
            iovs[i].iov_len = batch.lengths[i]
            many[i].msg_hdr.msg_iov = &iovs[i]
            many[i].msg_hdr.msg_iovlen = 1
            control += fill_rights(&many[i].msg_hdr, control, batch.fds + offset,
                                   batch.nfds[i])
            offset += batch.nfds[i]
        while batch.done < count:
            n = msg_call(True, sock, NULL, many + batch.done,
                         <unsigned int>min(count - batch.done, FDPASS_MAX_BATCH),
                         flags | FDPASS_MSG_NOSIGNAL, timeout, deadline, guard, err)
            if n < 0:
                return -1
            batch.done += n
            if batch.done < count and tripped(guard, sock):
                err[0] = FDPASS_ECLOSED
                return -1
        return 0
    finally:
        free(many)


cdef int send_all(int sock, const int *fds, int nfds, const char *data,
                  size_t length, int flags, double timeout, double deadline,
                  const Guard *guard, int *err, size_t *sent) except -2:
    """send_message's sendmsg loop: the descriptors go with the first
    byte, in a control buffer of exactly CMSG_SPACE(nfds ints), as FreeBSD
    requires; later parts of a stream's payload go with no control buffer
    at all (NULL, length 0)."""
    cdef fdpass_control_t control
    cdef msghdr msg
    cdef iovec iov
    cdef Py_ssize_t n
    memset(&msg, 0, sizeof(msg))
    iov.iov_base = <void *>data
    iov.iov_len = length
    msg.msg_iov = &iov
    msg.msg_iovlen = 1
    fill_rights(&msg, control.buf, fds, nfds)
    flags |= FDPASS_MSG_NOSIGNAL
    sent[0] = 0
    while True:
        n = msg_call(True, sock, &msg, NULL, 0, flags, timeout, deadline, guard, err)
        if n < 0:
            return -1
        # A stream socket may take part of a long payload: the descriptors
        # went with the first byte, the rest follows without them.
        sent[0] += n
        if sent[0] >= length:
            return 0
        if tripped(guard, sock):  # the rest would go to whatever has the number now
            err[0] = FDPASS_ECLOSED
            return -1
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


cdef void defuse_queue(int fd) noexcept nogil:
    """Turn off the linger of the descriptors in flight in fd's queue (an
    AF_UNIX socket about to be closed), so that its close does not wait."""
    fdpass_defuse_queue(fd)


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


#: Seconds wait_for_discards waits at a time between checks for signals.
cdef double WAIT_SLICE = 0.1


def wait_for_discards(timeout=None):
    """Wait until every descriptor fdpass discarded so far is closed, and
    its closing threads are gone; True then, False when timeout seconds
    (None: no limit) passed first.  Discards are closed in the background;
    this is for code that counts its descriptors or threads (a leak check,
    a fork that follows)."""
    cdef double seconds = -1.0, deadline = 0.0, step
    cdef int idle = 0
    if timeout is not None:
        seconds = timeout
        if not seconds >= 0:
            raise ValueError(f"timeout must be None or a number >= 0, got {timeout!r}")
        deadline = monotonic() + seconds
    while True:
        # In slices, so that a signal handler (Ctrl-C) runs while a close blocks.
        step = WAIT_SLICE if seconds < 0 else min(WAIT_SLICE, deadline - monotonic())
        with nogil:
            idle = fdpass_discards_wait(step if step > 0 else 0.0)
        if idle or (seconds >= 0 and monotonic() >= deadline):
            return bool(idle)
        PyErr_CheckSignals()


def closer_state():
    """(threads, closing, queued): the closer's threads alive, those of
    them in a close, and the descriptors waiting for one."""
    cdef int workers = 0, busy = 0
    cdef size_t queued = 0
    fdpass_closer_counts(&workers, &busy, &queued)
    return workers, busy, queued


#: Seconds a fork waits for discards under way to be closed (each takes
#: microseconds, unless it blocks), so that it finds no closing thread.
FORK_GRACE = 0.1


def _before_fork():
    """Python 3.12+ warns of forking a multi-threaded process: a fork finds
    no closing thread but one blocked in a close, if any."""
    cdef double grace = FORK_GRACE
    with nogil:
        if not fdpass_discards_wait(grace):
            fdpass_closer_retire_idle()


os.register_at_fork(before=_before_fork)


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
            count = (length - <size_t>(data - <unsigned char *>cmsg)) // sizeof(int)
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
                           int flags, double timeout, const Guard *guard, Received *out,
                           Sender *sender, int *err) except -2:
    """One recvmsg into buf; its descriptors into fds[:maxfds], and with a
    sender, who sent it (as far as the socket's SO_PASSCRED and
    SO_PASSPIDFD have the kernel say).  The control buffer always has room
    for the most a message can carry, so the kernel never discards
    descriptors for want of room: we do, off this thread.  MSG_TRUNC in
    flags (datagram and seqpacket sockets) refuses a record longer than
    buf.  0 with out->status set (on any status but RECV_OK and RECV_EMPTY
    every descriptor, the sender's pidfd too, is already discarded), or -1
    with err (the guard tripped: FDPASS_ECLOSED, and the message's
    descriptors discarded)."""
    cdef fdpass_control_t control
    cdef msghdr msg
    cdef iovec iov
    cdef Py_ssize_t n
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
    n = msg_call(False, sock, &msg, NULL, 0, flags | FDPASS_MSG_CMSG_CLOEXEC, timeout,
                 deadline_for(timeout), guard, err)
    if n < 0:
        return -1
    return finish_received(sock, &msg, n, fds, maxfds, flags, guard, out, sender, err)


cdef inline int finish_received(int sock, msghdr *msg, Py_ssize_t n, int *fds, int maxfds,
                                int flags, const Guard *guard, Received *out, Sender *sender,
                                int *err) noexcept nogil:
    """What one received message came with, walked (take_fds) and judged:
    recv_message_into's return, for a message of n bytes in msg."""
    cdef int extra[FDPASS_CONTROL_INTS]
    cdef int nextra = 0
    cdef size_t other_space = 0, room
    out.nbytes = n
    out.nfds = take_fds(msg, fds, maxfds, extra, &nextra, &out.total, &other_space, sender)
    discard_fds(extra, nextra)
    if tripped(guard, sock):
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


cdef Py_ssize_t recv_messages(int sock, char *bufs, size_t buflen, int *fds, int maxfds,
                              Py_ssize_t count, int flags, double timeout, const Guard *guard,
                              Received *outs, int *err) except -2:
    """Up to count messages, as recv_message_into receives one (message i
    into bufs + i * buflen, its descriptors into fds + i * maxfds, its
    status in outs[i]), waiting as it does for the first only: one
    recvmmsg where the platform has it, else recvmsg until one would
    block.  How many came (at least 1), or -1 with err, nothing kept."""
    cdef fdpass_mmsghdr *many
    cdef iovec *iovs
    cdef fdpass_control_t *controls
    cdef Py_ssize_t i, n, got = 0
    cdef int rc = 0
    if not FDPASS_HAVE_MMSG or count == 1:
        while got < count:
            if recv_message_into(sock, bufs + got * buflen, buflen, fds + got * maxfds, maxfds,
                                 flags if got == 0 else flags | MSG_DONTWAIT,
                                 timeout if got == 0 else 0.0, guard, &outs[got], NULL,
                                 err) < 0:
                if got == 0 or err[0] != FDPASS_ECLOSED:
                    break  # an error after the first is the next call's to raise
                for i in range(got):
                    discard_received(fds + i * maxfds, &outs[i], NULL)
                return -1
            got += 1
            if outs[got - 1].status == RECV_EMPTY:
                break  # end of stream: every later call would say so again
        return got if got else -1
    many = <fdpass_mmsghdr *>malloc(count * (sizeof(fdpass_mmsghdr) + sizeof(iovec)
                                             + sizeof(fdpass_control_t)))
    if many == NULL:
        raise MemoryError(f"cannot allocate a batch of {count} messages")
    try:
        controls = <fdpass_control_t *>(many + count)
        iovs = <iovec *>(controls + count)
        memset(many, 0, count * sizeof(fdpass_mmsghdr))
        for i in range(count):
            iovs[i].iov_base = bufs + i * buflen
            iovs[i].iov_len = buflen
            many[i].msg_hdr.msg_iov = &iovs[i]
            many[i].msg_hdr.msg_iovlen = 1
            many[i].msg_hdr.msg_control = controls[i].buf
            many[i].msg_hdr.msg_controllen = FDPASS_CONTROL_MAX
            outs[i].total = 0
            outs[i].nfds = 0
            outs[i].buflen = buflen
        n = msg_call(False, sock, NULL, many, <unsigned int>count,
                     flags | FDPASS_MSG_CMSG_CLOEXEC, timeout, deadline_for(timeout), guard, err)
        if n < 0:
            return -1
        # Every message is walked, and its descriptors kept or discarded, even
        # when one finds the guard tripped: then all are discarded.
        for i in range(n):
            if finish_received(sock, &many[i].msg_hdr, many[i].msg_len, fds + i * maxfds,
                               maxfds, flags, guard, &outs[i], NULL, err) < 0:
                rc = -1
        if rc < 0:
            for i in range(n):
                discard_received(fds + i * maxfds, &outs[i], NULL)
            err[0] = FDPASS_ECLOSED
            return -1
        return n
    finally:
        free(many)


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
                   f"{maxfds} were expected; all are closed in the background")
    elif r.status == RECV_CTRUNC_LIMIT:
        message = ("control data truncated (MSG_CTRUNC) with room to spare: the "
                   "kernel dropped descriptors this process could not take, most "
                   "likely because it reached its descriptor limit (RLIMIT_NOFILE, "
                   f"EMFILE); the {r.total} received are closed in the background")
    elif r.status == RECV_CTRUNC:
        message = ("control data truncated (MSG_CTRUNC): the message carried "
                   f"more than the {FDPASS_MAX_FDS} descriptors one message may; "
                   f"the {r.total} received are closed in the background")
    elif r.status == RECV_TRUNCATED:
        message = (f"the message ({r.nbytes} bytes) is longer than bufsize "
                   f"({r.buflen}): refused rather than cut short; its {r.total} "
                   "descriptors are closed in the background")
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
#: How recv_many and send_many take many messages: one call, or a loop.
BATCH_METHOD = "recvmmsg/sendmmsg" if FDPASS_HAVE_MMSG else "recvmsg/sendmsg loop"
