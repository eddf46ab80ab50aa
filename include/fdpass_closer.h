/* The closer: one background thread that closes the descriptors fdpass
 * discards (a peer's extras, a truncated message's, a failed conversion's).
 * The last close of a descriptor can block for as long as its sender chose
 * (a TCP socket with SO_LINGER and unsent data), so no thread of the
 * caller's, and no event loop, waits for it.  Plain C, no Python: it runs
 * without the GIL and survives interpreter state.
 *
 * Included by _engine.pyx only, so there is one closer per process. */
#pragma once

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t fdpass_closer_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fdpass_closer_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t fdpass_closer_done = PTHREAD_COND_INITIALIZER;
static int *fdpass_closer_queue = NULL;
static size_t fdpass_closer_length = 0, fdpass_closer_capacity = 0;
static int fdpass_closer_started = 0;  /* the thread exists (in this process) */
static int fdpass_closer_closing = 0;  /* it holds one descriptor it is closing */

static void *
fdpass_closer_main(void *unused)
{
    int fd;
    (void)unused;
    pthread_mutex_lock(&fdpass_closer_lock);
    for (;;) {
        while (fdpass_closer_length == 0) {
            fdpass_closer_closing = 0;
            pthread_cond_broadcast(&fdpass_closer_done);
            pthread_cond_wait(&fdpass_closer_work, &fdpass_closer_lock);
        }
        fd = fdpass_closer_queue[--fdpass_closer_length];
        fdpass_closer_closing = 1;
        pthread_mutex_unlock(&fdpass_closer_lock);
        close(fd);  /* never retried on EINTR: the descriptor is gone either way */
        pthread_mutex_lock(&fdpass_closer_lock);
    }
    return NULL;
}

/* A forked child has the queue but not the thread: it starts its own on the
 * next discard.  The lock may have been held at fork: make it anew. */
static void
fdpass_closer_after_fork(void)
{
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t work = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
    fdpass_closer_lock = lock;
    fdpass_closer_work = work;
    fdpass_closer_done = done;
    fdpass_closer_started = 0;
    fdpass_closer_closing = 0;
}

static int
fdpass_closer_init(void)
{
    return pthread_atfork(NULL, NULL, fdpass_closer_after_fork);
}

/* Start the thread with every signal blocked, so that signals go to the
 * interpreter's threads; 0, or an errno. */
static int
fdpass_closer_start(void)
{
    pthread_t thread;
    pthread_attr_t attr;
    sigset_t all, old;
    int err;
    if (pthread_attr_init(&attr) != 0)
        return ENOMEM;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&thread, &attr, fdpass_closer_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return err;
}

/* Hand n descriptors to the closer.  Should memory or a thread be lacking,
 * they are closed here and now: late, never leaked. */
static void
fdpass_discard(const int *fds, int n)
{
    int i, *grown;
    size_t capacity;
    if (n <= 0)
        return;
    pthread_mutex_lock(&fdpass_closer_lock);
    if (fdpass_closer_length + (size_t)n > fdpass_closer_capacity) {
        capacity = 2 * (fdpass_closer_length + (size_t)n) + 64;
        grown = (int *)realloc(fdpass_closer_queue, capacity * sizeof(int));
        if (grown == NULL)
            goto close_here;
        fdpass_closer_queue = grown;
        fdpass_closer_capacity = capacity;
    }
    if (!fdpass_closer_started) {
        if (fdpass_closer_start() != 0)
            goto close_here;
        fdpass_closer_started = 1;
    }
    for (i = 0; i < n; i++)
        fdpass_closer_queue[fdpass_closer_length++] = fds[i];
    pthread_cond_signal(&fdpass_closer_work);
    pthread_mutex_unlock(&fdpass_closer_lock);
    return;
close_here:
    pthread_mutex_unlock(&fdpass_closer_lock);
    for (i = 0; i < n; i++)
        close(fds[i]);
}

/* Wait until every discarded descriptor is closed, or timeout seconds
 * (< 0: for ever) pass; 1 when all are closed, else 0. */
static int
fdpass_discards_wait(double timeout)
{
    struct timespec deadline;
    int idle, rc = 0;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)timeout;
    deadline.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&fdpass_closer_lock);
    if (fdpass_closer_length > 0 && !fdpass_closer_started
            && fdpass_closer_start() == 0)  /* a forked child's leftovers */
        fdpass_closer_started = 1;
    pthread_cond_signal(&fdpass_closer_work);
    while ((fdpass_closer_length > 0 || fdpass_closer_closing) && rc != ETIMEDOUT) {
        if (timeout < 0)
            pthread_cond_wait(&fdpass_closer_done, &fdpass_closer_lock);
        else
            rc = pthread_cond_timedwait(&fdpass_closer_done, &fdpass_closer_lock, &deadline);
    }
    idle = fdpass_closer_length == 0 && !fdpass_closer_closing;
    pthread_mutex_unlock(&fdpass_closer_lock);
    return idle;
}
