"""IO::FDPass's two functions for code ported from Perl: descriptor numbers
in, a bool or a descriptor out, and errno kept per thread as Perl's $!."""

cimport cython
from cpython.long cimport PyLong_Check
from libc.errno cimport EBADMSG, ECONNRESET, errno

from fdpass._engine cimport (
    RECV_EMPTY, Received, check_unix_socket, discard_fds, fdpass_fd_object, recv_message_into,
    send_errno, send_message, unix_socket_type,
)
from fdpass._posix cimport FDPASS_WOULD_BLOCK, MSG_DONTWAIT, SOCK_DGRAM, fdpass_nosigpipe

cdef extern from "fdpass_compat.h":
    """
    static FDPASS_THREAD_LOCAL int fdpass_last_errno = 0;
    """
    int fdpass_last_errno


cdef int fd_number(object value, str name) except? -1:
    if not PyLong_Check(value):
        raise TypeError(f"{name} must be an int descriptor number, not {type(value).__name__}")
    return value


cdef bint failed(int err) noexcept:
    global fdpass_last_errno
    fdpass_last_errno = err
    return False


@cython.binding(False)
def send(socket_fd, fd_to_pass):
    """Send fd_to_pass over the UNIX socket socket_fd; False on failure,
    with get_errno() telling why.  A non-blocking socket may fail with EAGAIN."""
    cdef int sock = fd_number(socket_fd, "socket_fd")
    cdef int fd = fd_number(fd_to_pass, "fd_to_pass")
    cdef int family = 0, err = 0, type_err = 0
    cdef size_t sent
    if check_unix_socket(sock, &family, &err) < 0:
        return failed(err)
    if fdpass_nosigpipe(sock) < 0:
        return failed(errno)
    if send_message(sock, &fd, 1, b"\0", 1, 0, 0.0, NULL, &err, &sent) < 0:
        return failed(send_errno(err, unix_socket_type(sock, &family, &type_err), True))
    return True


@cython.binding(False)
def recv(socket_fd):
    """Receive one descriptor from the UNIX socket socket_fd; -1 on failure,
    with get_errno() telling why (ECONNRESET at end of stream, EBADMSG for
    a message that carried no descriptor, or more than one)."""
    cdef int sock = fd_number(socket_fd, "socket_fd")
    cdef int fd = -1, family = 0, err = 0, rc
    cdef char byte
    cdef Received r
    # A descriptor arriving proves an AF_UNIX socket, so the family is only
    # checked when none did, and before waiting (a TCP socket must not block).
    rc = recv_message_into(sock, &byte, 1, &fd, 1, MSG_DONTWAIT, 0.0, NULL, &r, NULL, &err)
    if rc < 0 or r.nfds == 0:
        if check_unix_socket(sock, &family, &err) < 0:
            failed(err)
            return -1
        if rc < 0 and FDPASS_WOULD_BLOCK(err):
            rc = recv_message_into(sock, &byte, 1, &fd, 1, 0, 0.0, NULL, &r, NULL, &err)
        if rc < 0:
            failed(err)
            return -1
    if r.nfds == 0:
        # Nothing at all is the end of the stream, but on a datagram socket.
        failed(ECONNRESET if r.status == RECV_EMPTY
               and unix_socket_type(sock, &family, &err) != SOCK_DGRAM else EBADMSG)
        return -1
    return fdpass_fd_object(fd, discard_fds)


def get_errno():
    """The errno of this thread's last failed send() or recv()."""
    return fdpass_last_errno
