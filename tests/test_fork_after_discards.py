"""A process that forks after fdpass discarded descriptors is single-threaded
as far as fdpass is concerned: Python 3.12+ warns (DeprecationWarning) of
a fork in a process with more than one thread, and a suite run with
warnings as errors fails on it.  The closer's idle threads exit on their
own, are joined by wait_for_discards, and are retired by a before-fork hook.

Each case runs in a fresh interpreter (this one has pytest's threads),
with that warning an error.  CPython 3.12 and 3.13 count only the threads
the threading module knows of, and the closer's are plain C threads, so
each case also counts the process's threads (/proc/self/task) at the
fork, from a before-fork hook that runs after fdpass's."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from support import run_python

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="the warning of a fork in a multi-threaded process is Python 3.12's")

TESTS = str(Path(__file__).resolve().parent)

PRELUDE = """
import os, socket, sys, time, traceback, warnings
sys.path.insert(0, sys.argv[1])

# Registered before fdpass's, so run after it: the threads at the fork.
threads_at_fork = []
os.register_at_fork(before=lambda: threads_at_fork.append(len(os.listdir("/proc/self/task"))))

import fdpass
from fdpass._engine import CLOSERS, closer_state, discard
from support import Lingering, raw_send
warnings.simplefilter("error", DeprecationWarning)


def discard_a_burst():
    # A peer's extras (received, refused), a channel's socket whose queue
    # holds descriptors (the caller's own), and a burst that needs several
    # closing threads.
    a, b = socket.socketpair()
    r, w = os.pipe()
    with a, fdpass.FDChannel(b, closefd=False) as rx:
        raw_send(a, b"\\0", [r] * 200)
        try:
            rx.recv_fd()
        except fdpass.ProtocolError:
            pass
        raw_send(a, b"\\0", [w])
        discard(b, own=True)
    os.close(r)
    os.close(w)


def forked(child, alone=True):
    # Fork (alone: with no other thread in this process), run child()
    # there, and require it to succeed.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            warnings.simplefilter("error", DeprecationWarning)
            child()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert not alone or threads_at_fork[-1] == 1, f"{threads_at_fork[-1]} threads at fork"


def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
"""


def run_case(code: str) -> None:
    """Run PRELUDE and code in a new interpreter; it must print 'ok' and
    nothing else, on stdout or stderr."""
    done = run_python("-c", PRELUDE + textwrap.dedent(code) + "\nprint('ok')\n", TESTS)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == "ok\n"


def test_a_fork_after_waiting_for_discards() -> None:
    run_case("""
        discard_a_burst()
        assert closer_state()[0] > 0  # a thread was closing
        assert fdpass.wait_for_discards(10)
        assert closer_state() == (0, 0, 0)
        forked(lambda: None)
    """)


def test_a_fork_right_after_a_discard() -> None:
    # No wait: the before-fork hook retires the idle closing threads.  Each
    # round starts with no thread (they exit when idle), so that each
    # discard starts one.
    run_case("""
        for _ in range(10):
            r, w = os.pipe()
            discard(w)
            forked(lambda: None)
            os.close(r)
            time.sleep(0.07)
        discard_a_burst()
        forked(lambda: None)
    """)


def test_a_fork_in_a_child_and_the_childs_leftovers() -> None:
    # Every closing thread is blocked (the caller's own sockets, set to
    # linger, with unsent data) when a discard comes: it waits in the
    # queue, and a fork copies it.  The child has no thread: its copy is
    # closed by its own wait_for_discards, and it may fork in turn with no
    # warning.
    run_case("""
        held = [Lingering(30) for _ in range(CLOSERS)]
        for one in held:
            discard(one.sock, own=True)
        deadline = time.monotonic() + 10
        while closer_state()[:2] != (CLOSERS, CLOSERS):
            assert time.monotonic() < deadline, closer_state()
            time.sleep(0.01)
        r, w = os.pipe()
        discard(w)
        assert closer_state() == (CLOSERS, CLOSERS, 1)

        def child():
            assert is_open(w)  # its copy, queued
            assert closer_state() == (0, 0, 1)
            assert fdpass.wait_for_discards(5)
            assert not is_open(w)
            discard_a_burst()
            assert fdpass.wait_for_discards(5) and closer_state() == (0, 0, 0)
            forked(lambda: None)  # the grandchild: no warning in the child

        with warnings.catch_warnings():  # here the blocked threads are alive
            warnings.simplefilter("ignore", DeprecationWarning)
            forked(child, alone=False)
        for one in held:
            one.close()
        assert fdpass.wait_for_discards(5)
        assert not is_open(w)
        os.close(r)
        forked(lambda: None)
    """)
