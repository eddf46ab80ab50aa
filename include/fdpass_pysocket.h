/* The head of CPython's socket object (Modules/socketmodule.h,
 * PySocketSockObject), the same from 3.9 to 3.13: a channel reads a wrapped
 * socket's descriptor and timeout from it at each call, which costs a load
 * where gettimeout() and fileno() cost two method calls.  _channel.pyx
 * checks the layout against the methods at import and uses the methods if
 * they disagree. */
#pragma once

#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    int sock_fd;            /* SOCKET_T on POSIX; -1 once closed or detached */
    int sock_family;
    int sock_type;
    int sock_proto;
    PyObject *(*errorhandler)(void);
    int64_t sock_timeout;   /* _PyTime_t, nanoseconds; negative: blocking */
} fdpass_socket_head;

static inline int
fdpass_socket_fd(PyObject *sock)
{
    return ((fdpass_socket_head *)sock)->sock_fd;
}

/* Where the descriptor lives: a call that waits watches it, so that a socket
 * closed elsewhere meanwhile (-1, or its number reused) is noticed. */
static inline const int *
fdpass_socket_fd_field(PyObject *sock)
{
    return &((fdpass_socket_head *)sock)->sock_fd;
}

/* Seconds, or -1.0 for a blocking socket, as the channel counts them. */
static inline double
fdpass_socket_timeout(PyObject *sock)
{
    int64_t ns = ((fdpass_socket_head *)sock)->sock_timeout;
    return ns < 0 ? -1.0 : (double)ns * 1e-9;
}

/* A descriptor number read straight from an exact int of one digit (below
 * 2**30, so within a C int): 1 with *fd set; else 0, and as_fd takes the
 * full path, with its errors.  PyLong_AsLongAndOverflow costs a send about
 * 40 instructions more.  CPython 3.12 made the digit count public. */
static inline int
fdpass_small_fd(PyObject *o, int *fd)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (PyLong_CheckExact(o) && PyUnstable_Long_IsCompact((PyLongObject *)o)) {
        Py_ssize_t value = PyUnstable_Long_CompactValue((PyLongObject *)o);
        if (value >= 0) {
            *fd = (int)value;
            return 1;
        }
    }
#else
    (void)o;
    (void)fd;
#endif
    return 0;
}
