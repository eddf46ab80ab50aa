# The engine's C-level interface, shared by FDChannel and the functional API.

cdef enum RecvStatus:
    RECV_OK            # descriptors (maybe none) in fds[:nfds], data in the buffer
    RECV_EMPTY         # no byte and no descriptor: end of stream, or an empty datagram
    RECV_TOO_MANY      # more descriptors than maxfds; all closed
    RECV_CTRUNC        # control data truncated, the buffer was full; all closed
    RECV_CTRUNC_LIMIT  # control data truncated with room to spare (EMFILE); all closed

cdef struct Received:
    Py_ssize_t nbytes
    int nfds           # descriptors handed to the caller in fds[]
    int total          # descriptors the message carried
    RecvStatus status

cdef int as_fd(object f) except -1
cdef int unix_socket_type(int fd, int *family, int *err) noexcept nogil
cdef int check_unix_socket(int fd, int *family, int *err) noexcept nogil
cdef int send_message(int sock, const int *fds, int nfds, const char *data,
                      size_t length, int flags, double timeout, int *err,
                      size_t *sent) except -2
cdef int recv_message_into(int sock, void *buf, size_t buflen, int *fds, int maxfds,
                           int flags, double timeout, Received *out, int *err) except -2
cdef void close_fds(const int *fds, int n) noexcept nogil
cdef int raise_os_error(int err, str context, Py_ssize_t written=*) except -1
cdef int raise_send_error(int err, int sock, const int *fds, int nfds,
                          size_t sent) except -1
cdef int raise_recv_status(const Received *r, int maxfds, int sock_type) except -1
