cdef int check_open_args(object mode, object buffering, object encoding, object errors,
                         object newline) except -1

# Received descriptor -> Python object.  Each takes ownership of fd: it
# returns an object that owns it, or closes it and raises.

cdef object file_from_fd(int fd, object mode, object buffering, object encoding,
                         object errors, object newline)
cdef object socket_from_fd(int fd)
