/* The closer: the one discard path of fdpass.  Every descriptor the package
 * drops (a peer's extras, a truncated message's, a failed conversion's, the
 * handoff's and systemd's refusals, an asyncio channel's socket) is closed
 * here, off the caller's thread and event loop, because the last close of a
 * descriptor can block for as long as somebody else chose: a TCP socket with
 * SO_LINGER and unsent data, a file on a hung FUSE or NFS mount.
 *
 * A pool of plain C threads, in the shape of CPython's ThreadPoolExecutor:
 * an idle worker is reused before another is started, and a worker about to
 * close while more work waits and nobody is idle starts another first, so a
 * close that blocks holds up only itself.  At most FDPASS_CLOSERS threads
 * exist; past that bound (that many closes blocked at once) discards queue,
 * in memory bounded by the process's descriptor limit (one queued entry is
 * one open descriptor).  A worker idle for FDPASS_CLOSER_IDLE_MS exits, so
 * no thread exists while nothing is discarded, and fdpass_discards_wait()
 * and the before-fork hook retire the idle ones at once.
 *
 * A received descriptor is the library's to refuse: a socket among them
 * that its sender set to linger is closed abortively (SO_LINGER {1, 0}), so
 * that a peer cannot pile up lingering sockets.  The caller's own sockets
 * are closed as the caller set them up.  The queue of an AF_UNIX socket,
 * received or the caller's, is a peer's doing, and its in-flight
 * descriptors are closed with it: those are defused first
 * (fdpass_defuse_queue).
 *
 * Included by _engine.pyx only, so there is one closer per process. */
#pragma once

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fdpass_compat.h"

/* Whether a queue can be peeked whole (SO_PEEK_OFF is Linux's): elsewhere,
 * and in the portable build, in-flight descriptors close as they are. */
#if defined(SO_PEEK_OFF) && !defined(FDPASS_PORTABLE)
#  define FDPASS_DEFUSES_QUEUES 1
#else
#  define FDPASS_DEFUSES_QUEUES 0
#endif

/* The bound: closes that may block at once without delaying any other. */
#define FDPASS_CLOSERS 16
#define FDPASS_CLOSER_IDLE_MS 50

typedef struct {
    int fd;
    int received;  /* the library refuses it: no lingering */
} fdpass_discarded;

static pthread_mutex_t fdpass_closer_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fdpass_closer_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t fdpass_closer_done = PTHREAD_COND_INITIALIZER;
/* A ring: head is the oldest entry, so no discard waits behind newer ones. */
static fdpass_discarded *fdpass_closer_queue = NULL;
static size_t fdpass_closer_head = 0, fdpass_closer_length = 0, fdpass_closer_capacity = 0;
static int fdpass_closer_workers = 0;  /* threads alive (in this process) */
static int fdpass_closer_idle = 0;     /* of them, waiting for work */
static int fdpass_closer_busy = 0;     /* of them, closing a descriptor */
static int fdpass_closer_retire = 0;   /* idle workers exit now (a generation count) */
/* Workers that have exited, to be joined: joined, a thread is gone from the
 * process, which a fork that follows can count on. */
static pthread_t fdpass_closer_exited[FDPASS_CLOSERS];
static int fdpass_closer_nexited = 0;

/* A socket set to linger is made to close without lingering. */
static void
fdpass_no_linger(int fd)
{
    struct linger lg;
    socklen_t length = sizeof(lg);
    if (getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &length) == 0
            && lg.l_onoff && lg.l_linger != 0) {
        lg.l_onoff = 1;
        lg.l_linger = 0;
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
}

/* The most a defusing walk reads of a queue, so that a peer filling it as
 * fast as it can cannot keep a closing thread walking for ever: more
 * messages than an unprivileged sender's buffer holds (a 4 MiB wmem_max
 * holds about 11,000 one-byte messages with a descriptor each). */
#define FDPASS_DEFUSE_CALLS 65536
/* How deep it follows AF_UNIX sockets in flight inside queues: Linux lets
 * descriptors nest no deeper than that (MAX_RECURSION_LEVEL, 4). */
#define FDPASS_DEFUSE_DEPTH 4

/* The descriptors in flight in the queue of fd, an AF_UNIX socket of the
 * caller's about to be closed, are closed with it when this is its last
 * reference, each as the last close of its own: a peer's lingering socket
 * among them would block this thread.  Peeking (never taking: the socket
 * may be shared, and then its queue is another process's) gives copies of
 * them, through which their linger is turned off; the copies' closes are
 * not the last.  An AF_UNIX socket among them has a queue of its own,
 * which is defused in turn.  Linux, where SO_PEEK_OFF walks the whole
 * queue. */
static void
fdpass_defuse_queue_at(int fd, int depth)
{
#if FDPASS_DEFUSES_QUEUES
    char scratch[16384];  /* peeked bytes, dropped */
    fdpass_control_t control;
    struct sockaddr_storage addr;
    socklen_t length = sizeof(addr);
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *cmsg;
    size_t room;
    int value = 0, calls, i, count, received;
    memset(&addr, 0, sizeof(addr));
    if (getsockname(fd, (struct sockaddr *)&addr, &length) < 0 || addr.ss_family != AF_UNIX)
        return;
    length = sizeof(value);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &length) < 0 || value)
        return;  /* a listener's queue is of connections, not descriptors */
    value = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &value, sizeof(value)) < 0)
        return;
    for (calls = 0; calls < FDPASS_DEFUSE_CALLS; calls++) {
        memset(&msg, 0, sizeof(msg));
        iov.iov_base = scratch;
        iov.iov_len = sizeof(scratch);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof(control.buf);
        if (recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT | FDPASS_MSG_CMSG_CLOEXEC) <= 0)
            break;
        for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
            if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_len < CMSG_LEN(0)
                    || (cmsg->cmsg_type != SCM_RIGHTS && cmsg->cmsg_type != FDPASS_SCM_PIDFD))
                continue;
            room = (size_t)(control.buf + msg.msg_controllen - (unsigned char *)cmsg);
            count = (int)(((cmsg->cmsg_len < room ? cmsg->cmsg_len : room) - CMSG_LEN(0))
                          / sizeof(int));
            for (i = 0; i < count; i++) {
                memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
                if (received < 0)
                    continue;  /* SCM_PIDFD's -errno */
                fdpass_no_linger(received);
                if (depth < FDPASS_DEFUSE_DEPTH)
                    fdpass_defuse_queue_at(received, depth + 1);
                close(received);  /* a copy: the queue still holds the file */
            }
            if (cmsg->cmsg_len >= room)
                break;
        }
    }
#else
    (void)fd;
    (void)depth;
#endif
}

static void
fdpass_defuse_queue(int fd)
{
    fdpass_defuse_queue_at(fd, 0);
}

static void
fdpass_close_discarded(fdpass_discarded entry)
{
    if (entry.received)
        fdpass_no_linger(entry.fd);
    fdpass_defuse_queue(entry.fd);
    close(entry.fd);  /* never retried on EINTR: the descriptor is gone either way */
}

static void
fdpass_closer_deadline(struct timespec *deadline, double seconds)
{
    clock_gettime(CLOCK_REALTIME, deadline);
    deadline->tv_sec += (time_t)seconds;
    deadline->tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (deadline->tv_nsec >= 1000000000L) {
        deadline->tv_sec += 1;
        deadline->tv_nsec -= 1000000000L;
    }
}

static int fdpass_closer_start(void);

/* With the lock held: whether the oldest entry was taken into *entry. */
static int
fdpass_closer_take(fdpass_discarded *entry)
{
    if (fdpass_closer_length == 0)
        return 0;
    *entry = fdpass_closer_queue[fdpass_closer_head];
    fdpass_closer_head = (fdpass_closer_head + 1) % fdpass_closer_capacity;
    fdpass_closer_length--;
    return 1;
}

static void fdpass_closer_join_exited(void);

static void *
fdpass_closer_main(void *unused)
{
    fdpass_discarded entry;
    struct timespec deadline;
    int retire, rc;
    (void)unused;
    pthread_mutex_lock(&fdpass_closer_lock);
    for (;;) {
        retire = fdpass_closer_retire;
        rc = 0;
        fdpass_closer_deadline(&deadline, FDPASS_CLOSER_IDLE_MS / 1000.0);
        fdpass_closer_idle++;
        while (fdpass_closer_length == 0 && rc != ETIMEDOUT && retire == fdpass_closer_retire)
            rc = pthread_cond_timedwait(&fdpass_closer_work, &fdpass_closer_lock, &deadline);
        fdpass_closer_idle--;
        if (!fdpass_closer_take(&entry))
            break;
        /* More waits and nobody is free for it: this close may block. */
        if (fdpass_closer_length > 0 && fdpass_closer_idle == 0
                && fdpass_closer_workers < FDPASS_CLOSERS && fdpass_closer_start() == 0)
            fdpass_closer_workers++;
        fdpass_closer_busy++;
        pthread_mutex_unlock(&fdpass_closer_lock);
        fdpass_close_discarded(entry);
        pthread_mutex_lock(&fdpass_closer_lock);
        fdpass_closer_busy--;
        if (fdpass_closer_length == 0 && fdpass_closer_busy == 0)
            pthread_cond_broadcast(&fdpass_closer_done);
    }
    /* A long burst outran the joins: this one joins those before it, so
     * that every exited worker is joined (one that detached itself could
     * still be in the process once counted gone).  No cycle: a worker
     * enters the list only once it has done its joining. */
    while (fdpass_closer_nexited == FDPASS_CLOSERS) {
        pthread_mutex_unlock(&fdpass_closer_lock);
        fdpass_closer_join_exited();
        pthread_mutex_lock(&fdpass_closer_lock);
    }
    fdpass_closer_exited[fdpass_closer_nexited++] = pthread_self();
    fdpass_closer_workers--;
    pthread_cond_broadcast(&fdpass_closer_done);
    pthread_mutex_unlock(&fdpass_closer_lock);
    return NULL;
}

/* Join the workers that have exited; called without the lock. */
static void
fdpass_closer_join_exited(void)
{
    pthread_t exited[FDPASS_CLOSERS];
    int i, n;
    pthread_mutex_lock(&fdpass_closer_lock);
    n = fdpass_closer_nexited;
    memcpy(exited, fdpass_closer_exited, (size_t)n * sizeof(pthread_t));
    fdpass_closer_nexited = 0;
    pthread_mutex_unlock(&fdpass_closer_lock);
    for (i = 0; i < n; i++)
        pthread_join(exited[i], NULL);
}

/* fork: the child must not inherit a lock held mid-change. */
static void
fdpass_closer_before_fork(void)
{
    pthread_mutex_lock(&fdpass_closer_lock);
}

static void
fdpass_closer_after_fork_parent(void)
{
    pthread_mutex_unlock(&fdpass_closer_lock);
}

/* A forked child has the queue (its own copies of those descriptors) but no
 * thread: its own start on its next discard or wait. */
static void
fdpass_closer_after_fork_child(void)
{
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t work = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
    fdpass_closer_lock = lock;
    fdpass_closer_work = work;
    fdpass_closer_done = done;
    fdpass_closer_workers = fdpass_closer_idle = fdpass_closer_busy = 0;
    fdpass_closer_nexited = 0;
}

static int
fdpass_closer_init(void)
{
    return pthread_atfork(fdpass_closer_before_fork, fdpass_closer_after_fork_parent,
                          fdpass_closer_after_fork_child);
}

/* Start a worker with every signal blocked, so that signals go to the
 * interpreter's threads; 0, or an errno.  With the lock held. */
static int
fdpass_closer_start(void)
{
    pthread_t thread;
    sigset_t all, old;
    int err;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&thread, NULL, fdpass_closer_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return err;
}

/* With the lock held: an idle worker told, or one started, for new work;
 * 0 when neither could be (no thread at all: the caller closes). */
static int
fdpass_closer_wake(void)
{
    if (fdpass_closer_idle > 0) {
        pthread_cond_signal(&fdpass_closer_work);
        return 1;
    }
    if (fdpass_closer_workers < FDPASS_CLOSERS && fdpass_closer_start() == 0) {
        fdpass_closer_workers++;
        return 1;
    }
    return fdpass_closer_workers > 0;
}

/* With the lock held: room for n more entries; 0 when memory is lacking. */
static int
fdpass_closer_reserve(size_t n)
{
    size_t capacity, i;
    fdpass_discarded *grown;
    if (fdpass_closer_length + n <= fdpass_closer_capacity)
        return 1;
    capacity = 2 * (fdpass_closer_length + n) + 64;
    grown = (fdpass_discarded *)malloc(capacity * sizeof(fdpass_discarded));
    if (grown == NULL)
        return 0;
    for (i = 0; i < fdpass_closer_length; i++)
        grown[i] = fdpass_closer_queue[(fdpass_closer_head + i) % fdpass_closer_capacity];
    free(fdpass_closer_queue);
    fdpass_closer_queue = grown;
    fdpass_closer_head = 0;
    fdpass_closer_capacity = capacity;
    return 1;
}

/* Hand n descriptors to the closer; received: the library refuses them (a
 * lingering socket among them is closed abortively).  Should memory or
 * every thread be lacking, they are closed here and now: late, never leaked. */
static void
fdpass_discard(const int *fds, int n, int received)
{
    fdpass_discarded entry;
    size_t tail;
    int i;
    if (n <= 0)
        return;
    if (fdpass_closer_nexited > 0)  /* a racy peek: a missed one is joined later */
        fdpass_closer_join_exited();
    pthread_mutex_lock(&fdpass_closer_lock);
    if (!fdpass_closer_reserve((size_t)n))
        goto close_here;
    for (i = 0; i < n; i++) {
        tail = (fdpass_closer_head + fdpass_closer_length) % fdpass_closer_capacity;
        fdpass_closer_queue[tail].fd = fds[i];
        fdpass_closer_queue[tail].received = received;
        fdpass_closer_length++;
    }
    if (!fdpass_closer_wake()) {
        /* No thread: take back what was just queued, and close it here. */
        fdpass_closer_length -= (size_t)n;
        goto close_here;
    }
    pthread_mutex_unlock(&fdpass_closer_lock);
    return;
close_here:
    pthread_mutex_unlock(&fdpass_closer_lock);
    for (i = 0; i < n; i++) {
        entry.fd = fds[i];
        entry.received = received;
        fdpass_close_discarded(entry);
    }
}

/* Retire the idle workers and wait until they are gone (joined); the busy
 * ones, blocked in a close, stay. */
static void
fdpass_closer_retire_idle(void)
{
    pthread_mutex_lock(&fdpass_closer_lock);
    fdpass_closer_retire++;
    pthread_cond_broadcast(&fdpass_closer_work);
    while (fdpass_closer_length == 0 && fdpass_closer_workers > fdpass_closer_busy)
        pthread_cond_wait(&fdpass_closer_done, &fdpass_closer_lock);
    pthread_mutex_unlock(&fdpass_closer_lock);
    fdpass_closer_join_exited();
}

/* Wait until every discarded descriptor is closed and no closing thread is
 * left, or timeout seconds (< 0: for ever) pass; 1 when so, else 0. */
static int
fdpass_discards_wait(double timeout)
{
    struct timespec deadline;
    int rc = 0, idle;
    fdpass_closer_deadline(&deadline, timeout < 0 ? 0 : timeout);
    pthread_mutex_lock(&fdpass_closer_lock);
    if (fdpass_closer_length > 0)  /* a forked child's leftovers have no thread yet */
        fdpass_closer_wake();
    while ((fdpass_closer_length > 0 || fdpass_closer_busy > 0) && rc != ETIMEDOUT) {
        if (timeout < 0)
            pthread_cond_wait(&fdpass_closer_done, &fdpass_closer_lock);
        else
            rc = pthread_cond_timedwait(&fdpass_closer_done, &fdpass_closer_lock, &deadline);
    }
    idle = fdpass_closer_length == 0 && fdpass_closer_busy == 0;
    pthread_mutex_unlock(&fdpass_closer_lock);
    if (idle)
        fdpass_closer_retire_idle();
    return idle;
}

/* Threads alive, and of them closing now: for the tests and the docs. */
static void
fdpass_closer_counts(int *workers, int *busy, size_t *queued)
{
    pthread_mutex_lock(&fdpass_closer_lock);
    *workers = fdpass_closer_workers;
    *busy = fdpass_closer_busy;
    *queued = fdpass_closer_length;
    pthread_mutex_unlock(&fdpass_closer_lock);
}
