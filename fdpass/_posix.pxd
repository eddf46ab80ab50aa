# Declarations Cython does not ship: <sys/socket.h>, <poll.h> and our
# platform shims.  Everything else comes from Cython's own posix/libc .pxd.
from cpython.object cimport PyObject

from posix.uio cimport iovec


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct sockaddr_storage:
        sa_family_t ss_family

    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    enum:
        AF_UNIX
        SOCK_STREAM
        SOCK_DGRAM
        SOCK_SEQPACKET
        SOL_SOCKET
        SO_TYPE
        SCM_RIGHTS
        MSG_CTRUNC
        MSG_TRUNC
        MSG_DONTWAIT
        SHUT_RDWR

    ssize_t sendmsg(int sockfd, const msghdr *msg, int flags)
    ssize_t recvmsg(int sockfd, msghdr *msg, int flags)
    int getsockname(int sockfd, sockaddr *addr, socklen_t *addrlen)
    int getsockopt(int sockfd, int level, int optname, void *optval, socklen_t *optlen)
    int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen)
    int getpeername(int sockfd, sockaddr *addr, socklen_t *addrlen)
    int shutdown(int sockfd, int how)

    cmsghdr *CMSG_FIRSTHDR(msghdr *msg)
    cmsghdr *CMSG_NXTHDR(msghdr *msg, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_LEN(size_t length)
    size_t CMSG_SPACE(size_t length)


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents

    ctypedef unsigned long nfds_t

    enum:
        POLLIN
        POLLOUT

    int poll(pollfd *fds, nfds_t nfds, int timeout)


cdef extern from "fdpass_compat.h" nogil:
    enum:
        FDPASS_PORTABLE_BUILD
        FDPASS_MSG_CMSG_CLOEXEC
        FDPASS_MSG_NOSIGNAL
        FDPASS_SIGPIPE_GUARD
        FDPASS_SO_DOMAIN
        FDPASS_MAX_FDS
        FDPASS_CONTROL_MAX
        FDPASS_CONTROL_INTS
        FDPASS_O_PATH
        FDPASS_HAVE_MSG_DONTWAIT
        FDPASS_SCM_PIDFD
        FDPASS_SO_PEERPIDFD
        FDPASS_SO_PASSPIDFD
        FDPASS_SO_PASSRIGHTS
        FDPASS_SO_PASSCRED
        FDPASS_HAVE_MMSG
        FDPASS_MAX_BATCH

    const char *FDPASS_CLOEXEC_METHOD
    const char *FDPASS_NOSIGPIPE_METHOD
    const char *FDPASS_FAMILY_METHOD
    const char *FDPASS_CREDENTIALS_METHOD
    bint FDPASS_WOULD_BLOCK(int err)
    int fdpass_peer_credentials(int fd, long *pid, long *uid, long *gid)
    int fdpass_read_credentials(const cmsghdr *cmsg, size_t length,
                                long *pid, long *uid, long *gid)
    int fdpass_nosigpipe(int fd)
    ssize_t fdpass_sendmsg(int sockfd, const msghdr *msg, int flags)

    ctypedef struct fdpass_sigpipe_t:
        pass
    void fdpass_sigpipe_block(fdpass_sigpipe_t *state)
    void fdpass_sigpipe_restore(const fdpass_sigpipe_t *state, int epipe)

    ctypedef struct fdpass_mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    ssize_t fdpass_send_call(int sock, msghdr *msg, fdpass_mmsghdr *many,
                             unsigned int vlen, int flags)
    ssize_t fdpass_recv_call(int sock, msghdr *msg, fdpass_mmsghdr *many,
                             unsigned int vlen, int flags)

    ctypedef union fdpass_control_t:
        cmsghdr align
        unsigned char buf[FDPASS_CONTROL_MAX]


cdef extern from "fdpass_pysocket.h":
    # PyObject *: Cython passes a pointer as it is, where it takes and drops
    # a reference to an attribute passed as an object.
    int fdpass_socket_fd(PyObject *sock)
    const int *fdpass_socket_fd_field(PyObject *sock)
    double fdpass_socket_timeout(PyObject *sock)
    bint fdpass_small_fd(object o, int *fd)
