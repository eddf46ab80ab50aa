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
