/* Platform gaps for fdpass's engine: every name here is one the engine
 * uses unconditionally, with a fallback where a platform lacks it. */
#pragma once

#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Close-on-exec at receipt, atomically where the kernel can do it. */
#ifdef MSG_CMSG_CLOEXEC
#  define FDPASS_MSG_CMSG_CLOEXEC MSG_CMSG_CLOEXEC
#  define FDPASS_CLOEXEC_METHOD "MSG_CMSG_CLOEXEC"
#else
#  define FDPASS_MSG_CMSG_CLOEXEC 0
#  define FDPASS_CLOEXEC_METHOD "fcntl(F_SETFD, FD_CLOEXEC) after receipt"
#endif

/* No SIGPIPE from sendmsg: a per-call flag where there is one, else the
 * SO_NOSIGPIPE socket option (BSDs, macOS), set when a channel is made. */
#ifdef MSG_NOSIGNAL
#  define FDPASS_MSG_NOSIGNAL MSG_NOSIGNAL
#else
#  define FDPASS_MSG_NOSIGNAL 0
#endif
#ifdef SO_NOSIGPIPE
#  define FDPASS_SO_NOSIGPIPE SO_NOSIGPIPE
#else
#  define FDPASS_SO_NOSIGPIPE (-1)
#endif

/* EAGAIN and EWOULDBLOCK may be one value or two. */
#include <errno.h>
#define FDPASS_WOULD_BLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)

/* The address family in one getsockopt where the platform has SO_DOMAIN;
 * elsewhere getsockname tells. */
#ifdef SO_DOMAIN
#  define FDPASS_SO_DOMAIN SO_DOMAIN
#else
#  define FDPASS_SO_DOMAIN (-1)
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

/* The connected peer's process, user and group: SO_PEERCRED (Linux, where
 * a socket without a peer reports pid 0 and uid -1), else getpeereid(),
 * which has no pid (-1).  0, or -1 with errno set. */
#include <unistd.h>
static inline int
fdpass_peer_credentials(int fd, long *pid, long *uid, long *gid)
{
#if defined(SO_PEERCRED) && defined(__linux__)
    struct ucred cred;
    socklen_t length = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) < 0)
        return -1;
    if (cred.pid == 0 && cred.uid == (uid_t)-1) {
        errno = ENOTCONN;
        return -1;
    }
    *pid = (long)cred.pid;
    *uid = (long)cred.uid;
    *gid = (long)cred.gid;
    return 0;
#else
    uid_t euid;
    gid_t egid;
    if (getpeereid(fd, &euid, &egid) < 0)
        return -1;
    *pid = -1;
    *uid = (long)euid;
    *gid = (long)egid;
    return 0;
#endif
}
