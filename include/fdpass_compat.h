/* Platform gaps for fdpass's engine: every name here is one the engine
 * uses unconditionally, with a fallback where a platform lacks it. */
#pragma once

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>

/* FDPASS_PORTABLE (setup.py defines it when built with FDPASS_PORTABLE=1):
 * none of the Linux-only facilities below, only the fallbacks that BSD and
 * macOS take, so that those paths run, and are tested, on Linux too. */
#ifdef FDPASS_PORTABLE
#  define FDPASS_PORTABLE_BUILD 1
#else
#  define FDPASS_PORTABLE_BUILD 0
#endif

/* Close-on-exec at receipt, atomically where the kernel can do it. */
#if defined(MSG_CMSG_CLOEXEC) && !defined(FDPASS_PORTABLE)
#  define FDPASS_MSG_CMSG_CLOEXEC MSG_CMSG_CLOEXEC
#  define FDPASS_CLOEXEC_METHOD "MSG_CMSG_CLOEXEC"
#else
#  define FDPASS_MSG_CMSG_CLOEXEC 0
#  define FDPASS_CLOEXEC_METHOD "fcntl(F_SETFD, FD_CLOEXEC) after receipt"
#endif

/* No SIGPIPE from sendmsg: a per-call flag where there is one; else the
 * SO_NOSIGPIPE socket option (BSDs, macOS), set on the socket before it
 * sends (fdpass_nosigpipe); else SIGPIPE blocked in the sending thread
 * around the send (fdpass_sigpipe_block and _restore). */
#if defined(MSG_NOSIGNAL) && !defined(FDPASS_PORTABLE)
#  define FDPASS_MSG_NOSIGNAL MSG_NOSIGNAL
#  define FDPASS_NOSIGPIPE_METHOD "MSG_NOSIGNAL"
#  define FDPASS_SIGPIPE_GUARD 0
#elif defined(SO_NOSIGPIPE)
#  define FDPASS_MSG_NOSIGNAL 0
#  define FDPASS_USE_SO_NOSIGPIPE 1
#  define FDPASS_NOSIGPIPE_METHOD "SO_NOSIGPIPE"
#  define FDPASS_SIGPIPE_GUARD 0
#else
#  define FDPASS_MSG_NOSIGNAL 0
#  define FDPASS_NOSIGPIPE_METHOD "SIGPIPE blocked around sendmsg"
#  define FDPASS_SIGPIPE_GUARD 1
#endif

/* Where SO_NOSIGPIPE is the way, every socket fdpass sends on has it:
 * FDChannel sets it once, the functional send before each send (the
 * caller's socket, which no one wants killing the process).  0, or -1
 * with errno set. */
static inline int
fdpass_nosigpipe(int fd)
{
#ifdef FDPASS_USE_SO_NOSIGPIPE
    int one = 1;
    return setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one));
#else
    (void)fd;
    return 0;
#endif
}

#if FDPASS_SIGPIPE_GUARD
#  include <pthread.h>
#  include <signal.h>
#  include <time.h>
/* The mask is per thread, and the SIGPIPE that a socket write raises goes
 * to the writing thread: blocking it in this thread alone is thread-safe. */
typedef struct {
    sigset_t old;     /* the thread's mask before the send */
    int was_pending;  /* a SIGPIPE already pending then is not ours to take */
} fdpass_sigpipe_t;

static inline void
fdpass_sigpipe_block(fdpass_sigpipe_t *state)
{
    sigset_t pipe_only, pending;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &state->old);
    /* Only a SIGPIPE the thread blocked already can be pending (another one
     * is delivered, or discarded while ignored), so only then is there a
     * sigpending to pay; one that comes in between is pending, so left alone. */
    state->was_pending = sigismember(&state->old, SIGPIPE) == 1
        && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
}

/* After the send: epipe when it failed with EPIPE, whose SIGPIPE (pending,
 * as blocked) is taken with a zero timeout, never waited for; then the
 * thread's mask as it was.  errno is kept. */
static inline void
fdpass_sigpipe_restore(const fdpass_sigpipe_t *state, int epipe)
{
    static const struct timespec zero = {0, 0};
    sigset_t pipe_only, pending;
    int saved = errno;
    if (epipe && !state->was_pending && sigpending(&pending) == 0
            && sigismember(&pending, SIGPIPE) == 1) {
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        while (sigtimedwait(&pipe_only, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &state->old, NULL);
    errno = saved;
}
#else
typedef char fdpass_sigpipe_t;
#  define fdpass_sigpipe_block(state) ((void)(state))
#  define fdpass_sigpipe_restore(state, epipe) ((void)(state), (void)(epipe))
#endif

/* musl's sendmsg() on a 64-bit platform copies the control buffer, to
 * zero the padding its struct cmsghdr has where the kernel's length is
 * wider, into 1024 bytes of stack, and fails with ENOMEM on a larger
 * one: MAX_FDS descriptors need 1032, more beside credentials.  There the
 * engine makes the system call itself; every msghdr and control buffer it
 * builds is zeroed first, padding included.  glibc's and the BSDs'
 * sendmsg() pass the buffer as it is.  (musl defines no macro of its own:
 * it is the Linux C library that is not glibc, bionic or uClibc.) */
#if defined(__linux__) && !defined(__GLIBC__) && !defined(__BIONIC__) && !defined(__UCLIBC__) \
    && defined(__LP64__)
#  include <sys/syscall.h>
#  include <unistd.h>
#  define fdpass_sendmsg(fd, msg, flags) ((ssize_t)syscall(SYS_sendmsg, (fd), (msg), (flags)))
/* Its sendmmsg() sends each message through that sendmsg(). */
#  define fdpass_sendmmsg(fd, many, vlen, flags) \
    ((int)syscall(SYS_sendmmsg, (fd), (many), (vlen), (flags)))
#else
#  define fdpass_sendmsg(fd, msg, flags) sendmsg((fd), (msg), (flags))
#  define fdpass_sendmmsg(fd, many, vlen, flags) sendmmsg((fd), (many), (vlen), (flags))
#endif

/* EAGAIN and EWOULDBLOCK may be one value or two. */
#define FDPASS_WOULD_BLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)

/* The address family in one getsockopt where the platform has SO_DOMAIN;
 * elsewhere getsockname tells. */
#if defined(SO_DOMAIN) && !defined(FDPASS_PORTABLE)
#  define FDPASS_SO_DOMAIN SO_DOMAIN
#  define FDPASS_FAMILY_METHOD "SO_DOMAIN"
#else
#  define FDPASS_SO_DOMAIN (-1)
#  define FDPASS_FAMILY_METHOD "getsockname"
#endif

/* A per-call non-blocking flag lets a call that cannot block keep the GIL;
 * without one, every call releases it. */
#ifdef MSG_DONTWAIT
#  define FDPASS_HAVE_MSG_DONTWAIT 1
#else
#  define MSG_DONTWAIT 0
#  define FDPASS_HAVE_MSG_DONTWAIT 0
#endif

/* Most descriptors in one message.  Linux's SCM_MAX_FD (253) lives in a
 * kernel-internal header; the other platforms take at least as many. */
#ifdef SCM_MAX_FD
#  define FDPASS_MAX_FDS SCM_MAX_FD
#else
#  define FDPASS_MAX_FDS 253
#endif

/* Room for one credentials message beside the descriptors: Linux attaches
 * SCM_CREDENTIALS to every message once SO_PASSCRED is set on the receiver. */
#if defined(SCM_CREDENTIALS)
#  define FDPASS_CRED_SPACE CMSG_SPACE(sizeof(struct ucred))
#else
#  define FDPASS_CRED_SPACE CMSG_SPACE(128)
#endif

/* Linux >= 6.5 attaches a pidfd of the sender (SCM_PIDFD) to every message
 * once SO_PASSPIDFD is set on the receiver: a descriptor to close like any
 * other.  An older libc lacks the names; the values are the kernel's ABI. */
#if defined(__linux__)
#  ifndef SCM_PIDFD
#    define SCM_PIDFD 0x04
#  endif
#  ifndef SO_PASSPIDFD
#    define SO_PASSPIDFD 76
#  endif
#  define FDPASS_SCM_PIDFD SCM_PIDFD
#  define FDPASS_PIDFD_SPACE CMSG_SPACE(sizeof(int))
#else
#  define FDPASS_SCM_PIDFD (-1)
#  define FDPASS_PIDFD_SPACE 0
#endif

/* Who is on the other end (Linux only; -1 where the platform has no such
 * option, and the portable build takes the other platforms' side):
 * SO_PEERPIDFD (6.5) gives the connected peer's pidfd, SO_PASSCRED with
 * SO_PASSPIDFD has the kernel attest each message's sender, SO_PASSRIGHTS
 * (6.16) turned off makes the kernel refuse descriptors for this socket.
 * A kernel older than the option answers ENOPROTOOPT at run time. */
#if defined(__linux__) && !defined(FDPASS_PORTABLE)
#  ifndef SO_PEERPIDFD
#    define SO_PEERPIDFD 77
#  endif
#  ifndef SO_PASSRIGHTS
#    define SO_PASSRIGHTS 83
#  endif
#  define FDPASS_SO_PEERPIDFD SO_PEERPIDFD
#  define FDPASS_SO_PASSPIDFD SO_PASSPIDFD
#  define FDPASS_SO_PASSRIGHTS SO_PASSRIGHTS
#  define FDPASS_SO_PASSCRED SO_PASSCRED
#else
#  define FDPASS_SO_PEERPIDFD (-1)
#  define FDPASS_SO_PASSPIDFD (-1)
#  define FDPASS_SO_PASSRIGHTS (-1)
#  define FDPASS_SO_PASSCRED (-1)
#endif

/* The sender the kernel attests in an SCM_CREDENTIALS control message of
 * length bytes (already clamped to the buffer): 1 with pid, uid and gid
 * set, or 0 for any other control message or one too short to hold them. */
#include <string.h>
static inline int
fdpass_read_credentials(const struct cmsghdr *cmsg, size_t length,
                        long *pid, long *uid, long *gid)
{
#if FDPASS_SO_PASSCRED >= 0
    struct ucred cred;
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_CREDENTIALS
            || length < CMSG_LEN(sizeof(cred)))
        return 0;
    memcpy(&cred, CMSG_DATA(cmsg), sizeof(cred));
    *pid = (long)cred.pid;
    *uid = (long)cred.uid;
    *gid = (long)cred.gid;
    return 1;
#else
    (void)cmsg; (void)length; (void)pid; (void)uid; (void)gid;
    return 0;
#endif
}

/* Every receive offers room for the most descriptors a message can carry,
 * plus credentials and a pidfd: so the kernel never discards descriptors for
 * want of room (their last close could block, in the receiving thread), and
 * MSG_CTRUNC means only that this process ran out of descriptors. */
#define FDPASS_RIGHTS_SPACE(n) CMSG_SPACE((n) * sizeof(int))
#define FDPASS_CONTROL_MAX \
    (FDPASS_RIGHTS_SPACE(FDPASS_MAX_FDS) + FDPASS_CRED_SPACE + FDPASS_PIDFD_SPACE)
/* The most descriptors such a buffer can hold, whatever the messages in it. */
#define FDPASS_CONTROL_INTS (FDPASS_CONTROL_MAX / sizeof(int))

/* A control buffer aligned for struct cmsghdr, as CMSG_FIRSTHDR requires. */
typedef union {
    struct cmsghdr align;
    unsigned char buf[FDPASS_CONTROL_MAX];
} fdpass_control_t;

/* Storage for get_errno(): one slot per OS thread, as errno itself. */
#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#  define FDPASS_THREAD_LOCAL _Thread_local
#else
#  define FDPASS_THREAD_LOCAL __thread
#endif

/* O_PATH (Linux) descriptors name a file but can be neither read nor written. */
#include <fcntl.h>
#ifdef O_PATH
#  define FDPASS_O_PATH O_PATH
#else
#  define FDPASS_O_PATH 0
#endif

/* The connected peer's process, user and group: SO_PEERCRED (Linux), else
 * getpeereid() (BSDs, macOS), which has no pid (-1). */
#include <unistd.h>
#if defined(SO_PEERCRED) && defined(__linux__) && !defined(FDPASS_PORTABLE)
#  define FDPASS_USE_SO_PEERCRED 1
#endif
#if defined(SO_PEERCRED) && defined(__linux__)
/* ENOTCONN for a socket without a peer, which Linux reports as pid 0 and
 * uid -1.  0, or -1 with errno set. */
static inline int
fdpass_peercred(int fd, struct ucred *cred)
{
    socklen_t length = sizeof(*cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &length) < 0)
        return -1;
    if (cred->pid == 0 && cred->uid == (uid_t)-1) {
        errno = ENOTCONN;
        return -1;
    }
    return 0;
}
#endif

#ifdef FDPASS_USE_SO_PEERCRED
#  define FDPASS_CREDENTIALS_METHOD "SO_PEERCRED"
#else
#  define FDPASS_CREDENTIALS_METHOD "getpeereid"
#  if defined(__linux__)
/* glibc has no getpeereid: for the portable build, the BSD call made from
 * SO_PEERCRED, giving what getpeereid gives there (the peer's effective
 * uid and gid, ENOTCONN without a peer) and dropping the pid, so that the
 * branch below is the one BSD and macOS run. */
static inline int
fdpass_getpeereid(int fd, uid_t *euid, gid_t *egid)
{
    struct ucred cred;
    if (fdpass_peercred(fd, &cred) < 0)
        return -1;
    *euid = cred.uid;
    *egid = cred.gid;
    return 0;
}
#  else
#    define fdpass_getpeereid getpeereid
#  endif
#endif

/* 0, or -1 with errno set. */
static inline int
fdpass_peer_credentials(int fd, long *pid, long *uid, long *gid)
{
#ifdef FDPASS_USE_SO_PEERCRED
    struct ucred cred;
    if (fdpass_peercred(fd, &cred) < 0)
        return -1;
    *pid = (long)cred.pid;
    *uid = (long)cred.uid;
    *gid = (long)cred.gid;
    return 0;
#else
    uid_t euid;
    gid_t egid;
    if (fdpass_getpeereid(fd, &euid, &egid) < 0)
        return -1;
    *pid = -1;
    *uid = (long)euid;
    *gid = (long)egid;
    return 0;
#endif
}

/* Many messages in one system call: recvmmsg/sendmmsg (Linux).  Elsewhere,
 * and in the portable build, the engine loops over recvmsg/sendmsg; the
 * type exists everywhere so that one engine compiles for both. */
#if defined(__linux__) && !defined(FDPASS_PORTABLE)
#  define FDPASS_HAVE_MMSG 1
typedef struct mmsghdr fdpass_mmsghdr;
#else
#  define FDPASS_HAVE_MMSG 0
typedef struct {
    struct msghdr msg_hdr;
    unsigned int msg_len;
} fdpass_mmsghdr;
#endif
/* The most messages one call takes (the kernel's UIO_MAXIOV). */
#define FDPASS_MAX_BATCH 1024

/* sendmsg of msg, or with many (FDPASS_HAVE_MMSG only) sendmmsg of vlen
 * messages: the count sent. */
static inline ssize_t
fdpass_send_call(int sock, struct msghdr *msg, fdpass_mmsghdr *many,
                 unsigned int vlen, int flags)
{
#if FDPASS_HAVE_MMSG
    if (many != NULL)
        return fdpass_sendmmsg(sock, many, vlen, flags);
#else
    (void)many; (void)vlen;
#endif
    return fdpass_sendmsg(sock, msg, flags);
}

/* recvmsg of msg, or with many recvmmsg of up to vlen messages, returning
 * as soon as one has come (MSG_WAITFORONE): the count received. */
static inline ssize_t
fdpass_recv_call(int sock, struct msghdr *msg, fdpass_mmsghdr *many,
                 unsigned int vlen, int flags)
{
#if FDPASS_HAVE_MMSG
    if (many != NULL)
        return recvmmsg(sock, many, vlen, flags | MSG_WAITFORONE, NULL);
#else
    (void)many; (void)vlen;
#endif
    return recvmsg(sock, msg, flags);
}
