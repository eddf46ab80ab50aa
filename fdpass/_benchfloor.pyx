"""The benchmark's floor: the same sendmsg/recvmsg calls, with the same
flags, as the engine makes, looped in C with no Python per message.  Used
only by `python -m fdpass bench`, so every row can be read against what the
kernel itself costs."""

from libc.errno cimport ECONNRESET, EINTR, ENOSYS, errno
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from posix.uio cimport iovec
from posix.unistd cimport close, read, write

from fdpass._engine cimport raise_os_error
from fdpass._posix cimport (
    CMSG_DATA, CMSG_FIRSTHDR, CMSG_LEN, CMSG_SPACE, FDPASS_HAVE_MMSG, FDPASS_MAX_BATCH,
    FDPASS_MAX_FDS, FDPASS_MSG_CMSG_CLOEXEC, FDPASS_MSG_NOSIGNAL, SCM_RIGHTS, SOL_SOCKET,
    cmsghdr, fdpass_control_t, fdpass_mmsghdr, fdpass_recv_call, fdpass_send_call, msghdr,
    fdpass_sendmsg, recvmsg,
)


cdef int transfer(bint message, bint writing, int sock, msghdr *msg, int flags) noexcept nogil:
    """One sendmsg/recvmsg of msg (message), or one write/read of a single
    byte reply, retried on EINTR: 0, or an errno (ECONNRESET when the
    call moved no byte: the peer has gone)."""
    cdef char byte = 0
    cdef Py_ssize_t rc
    while True:
        if message:
            rc = fdpass_sendmsg(sock, msg, flags) if writing else recvmsg(sock, msg, flags)
        else:
            rc = write(sock, &byte, 1) if writing else read(sock, &byte, 1)
        if rc == 1:
            return 0
        if rc == 0:
            return ECONNRESET
        if errno != EINTR:
            return errno


cdef int send_loop(int sock, int fd, long messages, int per_message, long reply_every) noexcept nogil:
    """messages sendmsg calls of one 0x00 byte and per_message copies of
    fd; with reply_every, read one byte back after every reply_every
    messages (1: ping-pong).  0 or an errno."""
    cdef fdpass_control_t control
    cdef msghdr msg
    cdef iovec iov
    cdef cmsghdr *cmsg
    cdef char byte = 0
    cdef long i
    cdef int k, err = 0
    memset(&msg, 0, sizeof(msg))
    memset(control.buf, 0, CMSG_SPACE(per_message * sizeof(int)))
    iov.iov_base = &byte
    iov.iov_len = 1
    msg.msg_iov = &iov
    msg.msg_iovlen = 1
    msg.msg_control = control.buf
    msg.msg_controllen = CMSG_SPACE(per_message * sizeof(int))
    cmsg = CMSG_FIRSTHDR(&msg)
    cmsg.cmsg_level = SOL_SOCKET
    cmsg.cmsg_type = SCM_RIGHTS
    cmsg.cmsg_len = CMSG_LEN(per_message * sizeof(int))
    for k in range(per_message):
        memcpy(CMSG_DATA(cmsg) + k * sizeof(int), &fd, sizeof(int))
    for i in range(messages):
        err = transfer(True, True, sock, &msg, FDPASS_MSG_NOSIGNAL)
        if err == 0 and reply_every and (i + 1) % reply_every == 0:
            err = transfer(False, False, sock, NULL, 0)
        if err:
            return err
    return 0


cdef int close_received(msghdr *msg) noexcept nogil:
    cdef cmsghdr *cmsg = CMSG_FIRSTHDR(msg)
    cdef size_t k, count
    cdef int fd
    if cmsg != NULL and cmsg.cmsg_type == SCM_RIGHTS:
        count = (cmsg.cmsg_len - CMSG_LEN(0)) // sizeof(int)
        for k in range(count):
            memcpy(&fd, CMSG_DATA(cmsg) + k * sizeof(int), sizeof(int))
            close(fd)
    return 0


cdef int recv_loop(int sock, long messages, int per_message, long reply_every) noexcept nogil:
    """messages recvmsg calls, closing every descriptor received; with
    reply_every, write one byte back after every reply_every.  0 or an errno."""
    cdef fdpass_control_t control
    cdef msghdr msg
    cdef iovec iov
    cdef cmsghdr *cmsg
    cdef char byte
    cdef long i
    cdef int err = 0
    memset(&msg, 0, sizeof(msg))
    iov.iov_base = &byte
    iov.iov_len = 1
    msg.msg_iov = &iov
    msg.msg_iovlen = 1
    for i in range(messages):
        msg.msg_control = control.buf
        msg.msg_controllen = CMSG_SPACE(per_message * sizeof(int))
        err = transfer(True, False, sock, &msg, FDPASS_MSG_CMSG_CLOEXEC)
        if err:
            return err
        close_received(&msg)
        if reply_every and (i + 1) % reply_every == 0:
            err = transfer(False, True, sock, NULL, 0)
            if err:
                return err
    return 0


cdef int check(int err, str what) except -1:
    if err:
        raise_os_error(err, what)
    return 0


cdef int check_per_message(int per_message) except -1:
    if not 1 <= per_message <= FDPASS_MAX_FDS:
        raise ValueError(f"per_message must be within 1..{FDPASS_MAX_FDS}, got {per_message}")
    return per_message


cdef int burst_loop(bint writing, int sock, int fd, long bursts, int size) noexcept nogil:
    """bursts of size one-descriptor messages, each burst one sendmmsg (or
    recvmmsg until size came, closing every descriptor), then one byte
    back.  0 or an errno."""
    cdef fdpass_mmsghdr *many
    cdef fdpass_control_t *controls
    cdef iovec *iovs
    cdef char *bytes_
    cdef cmsghdr *cmsg
    cdef long b
    cdef int i, got, err = 0
    cdef Py_ssize_t n
    if not FDPASS_HAVE_MMSG:
        return ENOSYS
    many = <fdpass_mmsghdr *>malloc(size * (sizeof(fdpass_mmsghdr) + sizeof(fdpass_control_t)
                                            + sizeof(iovec) + 1))
    if many == NULL:
        return errno
    controls = <fdpass_control_t *>(many + size)
    iovs = <iovec *>(controls + size)
    bytes_ = <char *>(iovs + size)
    memset(many, 0, size * sizeof(fdpass_mmsghdr))
    for i in range(size):
        bytes_[i] = 0
        iovs[i].iov_base = &bytes_[i]
        iovs[i].iov_len = 1
        many[i].msg_hdr.msg_iov = &iovs[i]
        many[i].msg_hdr.msg_iovlen = 1
        many[i].msg_hdr.msg_control = controls[i].buf
        if writing:
            many[i].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(int))
            memset(controls[i].buf, 0, CMSG_SPACE(sizeof(int)))
            cmsg = CMSG_FIRSTHDR(&many[i].msg_hdr)
            cmsg.cmsg_level = SOL_SOCKET
            cmsg.cmsg_type = SCM_RIGHTS
            cmsg.cmsg_len = CMSG_LEN(sizeof(int))
            memcpy(CMSG_DATA(cmsg), &fd, sizeof(int))
    for b in range(bursts):
        got = 0
        while got < size and err == 0:
            if not writing:
                for i in range(got, size):
                    many[i].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(int))
            n = (fdpass_send_call(sock, NULL, many + got, size - got, FDPASS_MSG_NOSIGNAL)
                 if writing else
                 fdpass_recv_call(sock, NULL, many + got, size - got, FDPASS_MSG_CMSG_CLOEXEC))
            if n < 0:
                if errno != EINTR:
                    err = errno
            elif n == 0:
                err = ECONNRESET
            else:
                if not writing:
                    for i in range(got, got + <int>n):
                        close_received(&many[i].msg_hdr)
                got += <int>n
        if err == 0:
            err = transfer(False, not writing, sock, NULL, 0)
        if err:
            break
    free(many)
    return err


def send(int sock, int fd, long messages, int per_message=1, long reply_every=0):
    """Send messages of per_message copies of fd, in C."""
    cdef int err
    check_per_message(per_message)
    with nogil:
        err = send_loop(sock, fd, messages, per_message, reply_every)
    check(err, "floor sender")


def recv(int sock, long messages, int per_message=1, long reply_every=0):
    """Receive messages, closing their descriptors, in C."""
    cdef int err
    check_per_message(per_message)
    with nogil:
        err = recv_loop(sock, messages, per_message, reply_every)
    check(err, "floor receiver")


def send_bursts(int sock, int fd, long bursts, int size):
    """bursts sendmmsg calls of size one-descriptor messages, each then
    awaiting one byte back, in C (Linux's sendmmsg)."""
    cdef int err
    if not 1 <= size <= FDPASS_MAX_BATCH:
        raise ValueError(f"size must be within 1..{FDPASS_MAX_BATCH}, got {size}")
    with nogil:
        err = burst_loop(True, sock, fd, bursts, size)
    check(err, "floor burst sender")


def recv_bursts(int sock, long bursts, int size):
    """bursts of size messages taken with recvmmsg, closing their
    descriptors, each then answered with one byte, in C."""
    cdef int err
    if not 1 <= size <= FDPASS_MAX_BATCH:
        raise ValueError(f"size must be within 1..{FDPASS_MAX_BATCH}, got {size}")
    with nogil:
        err = burst_loop(False, sock, -1, bursts, size)
    check(err, "floor burst receiver")


#: Whether send_bursts and recv_bursts can run: recvmmsg/sendmmsg in this build.
HAVE_MMSG = bool(FDPASS_HAVE_MMSG)
