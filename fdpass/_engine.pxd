# The engine's C-level interface, shared by FDChannel and the functional API.

cdef enum:
    # err for a call that woke to find its channel closed (raises ValueError);
    # errno values are positive.
    FDPASS_ECLOSED = -1

cdef enum RecvStatus:
    RECV_OK            # descriptors (maybe none) in fds[:nfds], data in the buffer
    RECV_EMPTY         # no byte and no descriptor: end of stream, or an empty datagram
    RECV_TOO_MANY      # more descriptors than maxfds; all discarded
    RECV_CTRUNC        # control data truncated, the buffer was full; all discarded
    RECV_CTRUNC_LIMIT  # control data truncated with room to spare (EMFILE); all discarded
    RECV_TRUNCATED     # a record longer than the buffer, refused (MSG_TRUNC asked); all discarded

cdef struct Received:
    Py_ssize_t nbytes  # bytes received; with RECV_TRUNCATED, the record's length
    size_t buflen      # the buffer's size
    int nfds           # descriptors handed to the caller in fds[]
    int total          # descriptors the message carried
    RecvStatus status

cdef struct Guard:
    # What a call that waited checks before it touches its socket again.
    const int *stop       # set by close() from another thread
    const int *owner_fd   # the wrapped socket.socket's descriptor, or NULL:
                          # it must still be the call's socket

cdef struct Sender:
    bint attested      # an SCM_CREDENTIALS came: pid, uid and gid are the kernel's
    long pid
    long uid
    long gid
    int pidfd          # from SCM_PIDFD, the caller's once received; else -1
    int pidfd_error    # the errno SCM_PIDFD held instead (EMFILE: no slot for it); else 0

cdef struct Batch:
    # Messages for send_messages, in order.
    Py_ssize_t count
    const int *fds          # every message's descriptors, one message's after another's
    const int *nfds         # how many each message has
    const char **data       # each message's payload (at least one byte)
    const size_t *lengths
    bint atomic             # records (datagram, seqpacket), which no send splits
    Py_ssize_t done         # set: the messages that went whole

cdef int as_fd(object f) except -1
cdef int unix_socket_type(int fd, int *family, int *err) noexcept nogil
cdef int check_unix_socket(int fd, int *family, int *err) noexcept nogil
cdef int send_message(int sock, const int *fds, int nfds, const char *data,
                      size_t length, int flags, double timeout, const Guard *guard,
                      int *err, size_t *sent) except -2
cdef int send_messages(int sock, Batch *batch, int flags, double timeout,
                       const Guard *guard, int *err, size_t *sent) except -2
cdef Py_ssize_t recv_messages(int sock, char *bufs, size_t buflen, int *fds, int maxfds,
                              Py_ssize_t count, int flags, double timeout, const Guard *guard,
                              Received *outs, int *err) except -2
cdef int recv_message_into(int sock, void *buf, size_t buflen, int *fds, int maxfds,
                           int flags, double timeout, const Guard *guard, Received *out,
                           Sender *sender, int *err) except -2
cdef void discard_fds(const int *fds, int n) noexcept nogil
cdef void defuse_queue(int fd) noexcept nogil
cdef void discard_received(const int *fds, Received *r, Sender *sender) noexcept nogil
cdef int send_errno(int err, int sock_type, bint connected) noexcept nogil
cdef int raise_os_error(int err, str context, Py_ssize_t written=*) except -1
cdef int raise_send_error(int err, int sock, const int *fds, int nfds,
                          size_t sent, int sock_type, bint connected) except -1
cdef int raise_recv_status(const Received *r, int maxfds, int sock_type) except -1

cdef extern from *:
    """
    /* A received descriptor as an int object, the caller's from then on; or
     * NULL with the exception set and fd discarded.  A try/except around the
     * conversion costs a receive about 30 instructions on CPython 3.12. */
    static CYTHON_INLINE PyObject *fdpass_fd_object(int fd, void (*discard)(const int *, int)) {
        PyObject *number = PyLong_FromLong(fd);
        if (number == NULL)
            discard(&fd, 1);
        return number;
    }
    """
    object fdpass_fd_object(int fd, void (*discard)(const int *, int) noexcept nogil)
