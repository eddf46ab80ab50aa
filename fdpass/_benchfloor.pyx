"""The benchmark's floor: the same sendmsg/recvmsg calls, with the same
flags, as the engine makes, looped in C with no Python per message.  Used
only by `python -m fdpass bench`, so every row can be read against what the
kernel itself costs."""

from libc.errno cimport ECONNRESET, EINTR, errno
from libc.string cimport memcpy, memset
from posix.uio cimport iovec
from posix.unistd cimport close, read, write

from fdpass._engine cimport raise_os_error
from fdpass._posix cimport (
    CMSG_DATA, CMSG_FIRSTHDR, CMSG_LEN, CMSG_SPACE, FDPASS_MAX_FDS,
    FDPASS_MSG_CMSG_CLOEXEC, FDPASS_MSG_NOSIGNAL, SCM_RIGHTS, SOL_SOCKET,
    cmsghdr, fdpass_control_t, fdpass_sendmsg, msghdr, recvmsg,
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


cdef int send_loop(int sock, int fd, long messages, int per_message, bint await_reply) noexcept nogil:
    """messages sendmsg calls of one 0x00 byte and per_message copies of
    fd; with await_reply, read one byte back after each.  0 or an errno."""
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
        if err == 0 and await_reply:
            err = transfer(False, False, sock, NULL, 0)
        if err:
            return err
    return 0


cdef int recv_loop(int sock, long messages, int per_message, bint reply) noexcept nogil:
    """messages recvmsg calls, closing every descriptor received; with
    reply, write one byte back after each.  0 or an errno."""
    cdef fdpass_control_t control
    cdef msghdr msg
    cdef iovec iov
    cdef cmsghdr *cmsg
    cdef char byte
    cdef long i
    cdef int fd, err = 0
    cdef size_t k, count
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
        cmsg = CMSG_FIRSTHDR(&msg)
        if cmsg != NULL and cmsg.cmsg_type == SCM_RIGHTS:
            count = (cmsg.cmsg_len - CMSG_LEN(0)) // sizeof(int)
            for k in range(count):
                memcpy(&fd, CMSG_DATA(cmsg) + k * sizeof(int), sizeof(int))
                close(fd)
        if reply:
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


def send(int sock, int fd, long messages, int per_message=1, bint await_reply=False):
    """Send messages of per_message copies of fd, in C."""
    cdef int err
    check_per_message(per_message)
    with nogil:
        err = send_loop(sock, fd, messages, per_message, await_reply)
    check(err, "floor sender")


def recv(int sock, long messages, int per_message=1, bint reply=False):
    """Receive messages, closing their descriptors, in C."""
    cdef int err
    check_per_message(per_message)
    with nogil:
        err = recv_loop(sock, messages, per_message, reply)
    check(err, "floor receiver")
