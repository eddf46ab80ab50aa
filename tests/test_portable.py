"""The paths this build takes (FDPASS_PORTABLE=1 or not), and each portable
fallback at work.  Every test runs in both builds: what it checks holds in
each, and in the portable build it is the fallback that makes it hold
(tox -e portable runs the suite against that build)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import shlex
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest

import fdpass
from fdpass import FDChannel, _engine
from fdpass.aio import AsyncFDChannel
from support import MUSL, PACKAGE_ROOT, close_all, peer_pid, run_python, same_file

NATIVE_PATHS = ("MSG_CMSG_CLOEXEC", "MSG_NOSIGNAL", "SO_DOMAIN", "SO_PEERCRED")
PORTABLE_PATHS = ("fcntl(F_SETFD, FD_CLOEXEC) after receipt", "SIGPIPE blocked around sendmsg",
                  "getsockname", "getpeereid")


def test_the_build_says_which_paths_it_takes() -> None:
    paths = (_engine.CLOEXEC_METHOD, _engine.NOSIGPIPE_METHOD, _engine.FAMILY_METHOD,
             _engine.CREDENTIALS_METHOD)
    assert paths == (PORTABLE_PATHS if _engine.PORTABLE else NATIVE_PATHS)
    # python -m fdpass info prints them: test_package.py.


# Close-on-exec: every descriptor a receive hands out, whichever the call.

def inheritable_fds(n: int) -> list[int]:
    """n new descriptors without FD_CLOEXEC, so that only the receiver can set it."""
    fds = [os.dup(0) for _ in range(n)]
    for fd in fds:
        os.set_inheritable(fd, True)
    return fds


def is_cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def receive_each_way(tx: FDChannel, rx: FDChannel, b: socket.socket) -> list[bool]:
    """Every receive call of the object and the functional API, each on a
    message of inheritable descriptors: whether each descriptor handed out
    was close-on-exec."""
    sent = inheritable_fds(3)
    got: list[int] = []
    try:
        tx.send_fd(sent[0])
        got.append(rx.recv_fd())
        tx.send_fds(sent)
        got += rx.recv_fds()
        tx.send_fds(sent[:2], b"two")
        got += rx.recv_message(16)[1]
        tx.send_fd(sent[0])
        got.append(fdpass.recv(b.fileno()))
        tx.send_fd(sent[0])
        with rx.recv_file() as f:
            flags = [is_cloexec(fd) for fd in got] + [is_cloexec(f.fileno())]
    finally:
        close_all(sent + got)
    return flags


def test_every_received_descriptor_is_close_on_exec(channels: tuple[FDChannel, FDChannel],
                                                      sockets: tuple[socket.socket, socket.socket],
                                                      ) -> None:
    tx, rx = channels
    assert receive_each_way(tx, rx, sockets[1]) == [True] * (1 + 3 + 2 + 1 + 1)


def test_a_received_socket_and_an_async_receive_are_close_on_exec() -> None:
    async def main() -> list[int]:
        a, b = AsyncFDChannel.pair()
        sent = inheritable_fds(2)
        async with a, b:
            try:
                await a.send_fds(sent)
                got = await b.recv_fds()
                with socket.socket(socket.AF_UNIX) as s:
                    await a.send_fd(s)
                    received = await b.recv_socket()
                    got.append(received.detach())
            finally:
                close_all(sent)
            return got

    got = asyncio.run(main())
    try:
        assert len(got) == 3 and all(is_cloexec(fd) for fd in got)
    finally:
        close_all(got)


# No SIGPIPE: in a child with SIGPIPE's default action, which kills it.

SIGPIPE_PRELUDE = """
import asyncio, errno, signal, socket, threading, fdpass
from fdpass.aio import AsyncFDChannel
signal.signal(signal.SIGPIPE, signal.SIG_DFL)

def gone(kind=socket.SOCK_STREAM):
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    b.close()
    return a

def mask():
    return signal.pthread_sigmask(signal.SIG_BLOCK, [])

def pending():
    return signal.SIGPIPE in signal.sigpending()

def each_send():
    \"\"\"Every way to send to a gone peer: what it gave.\"\"\"
    seen = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        with fdpass.FDChannel(gone(kind)) as ch:
            for send in (lambda: ch.send_fd(0), lambda: ch.send_fds([0, 1], b"x" * 100000)):
                try:
                    send()
                except BrokenPipeError:
                    seen.append("EPIPE")
        with gone(kind) as s:
            seen.append(fdpass.send(s.fileno(), 0) or errno.errorcode[fdpass.get_errno()])
    async def aio():
        async with AsyncFDChannel(gone()) as ch:
            try:
                await ch.send_fd(0)
            except BrokenPipeError:
                seen.append("EPIPE")
    asyncio.run(aio())
    return seen
"""


#: How many sends each_send() makes.
EACH_SEND = 2 * (2 + 1) + 1


def run_sigpipe_child(code: str) -> list[str]:
    result = run_python("-c", SIGPIPE_PRELUDE + f"EACH_SEND = {EACH_SEND}\n"
                        + textwrap.dedent(code))
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout.split()


def test_a_gone_peer_is_a_broken_pipe_whichever_api_sends() -> None:
    out = run_sigpipe_child("""
        before = mask()
        print(*each_send())
        print(mask() == before, pending())
    """)
    assert out == ["EPIPE"] * EACH_SEND + ["True", "False"]


def test_a_sigpipe_pending_before_the_send_is_left_pending() -> None:
    """The caller's own SIGPIPE, raised while it blocked it, is not the
    send's to take; a blocked SIGPIPE stays blocked."""
    out = run_sigpipe_child("""
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
        signal.pthread_kill(threading.get_ident(), signal.SIGPIPE)
        before = mask()
        print(pending(), *each_send(), pending(), mask() == before)
        print(signal.sigtimedwait([signal.SIGPIPE], 0).si_signo == signal.SIGPIPE, pending())
    """)
    assert out == ["True"] + ["EPIPE"] * EACH_SEND + ["True", "True", "True", "False"]


def test_a_sigpipe_the_send_raised_is_taken_even_where_the_caller_blocks_it() -> None:
    out = run_sigpipe_child("""
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE, signal.SIGUSR1])
        before = mask()
        print(*each_send(), pending(), mask() == before)
    """)
    assert out == ["EPIPE"] * EACH_SEND + ["False", "True"]


def test_threads_sending_to_gone_peers_at_once() -> None:
    """The mask is each thread's own: one thread's send neither takes
    another's pending SIGPIPE nor leaves its own to kill the process."""
    out = run_sigpipe_child("""
        holding, done = threading.Event(), threading.Event()
        results = []
        def holder():
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
            signal.pthread_kill(threading.get_ident(), signal.SIGPIPE)
            holding.set()
            done.wait(60)
            results.append(("holder", pending()))
            signal.sigtimedwait([signal.SIGPIPE], 0)
        def sender():
            before = mask()
            seen = []
            for _ in range(50):
                seen += each_send()
            results.append(("sender", seen == ["EPIPE"] * 50 * EACH_SEND and mask() == before))
        h = threading.Thread(target=holder)
        h.start()
        holding.wait(60)
        senders = [threading.Thread(target=sender) for _ in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        done.set()
        h.join()
        print(*sorted(results))
    """)
    assert out == ["('holder',", "True)"] + ["('sender',", "True)"] * 4


# The address family from getsockname: accepted and refused alike.

def test_every_kind_of_unix_socket_passes_the_family_check(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bound:
        bound.bind(str(tmp_path / "s"))
        for sock in (unbound, bound):
            with FDChannel(sock, closefd=False) as ch:
                assert ch.type == socket.SOCK_DGRAM
    a, b = socket.socketpair()
    with a, b:
        assert fdpass.send(a.fileno(), 0)
        fd = fdpass.recv(b.fileno())
        assert same_file(fd, 0)
        os.close(fd)


@pytest.mark.parametrize("family,kind", [(socket.AF_INET, socket.SOCK_STREAM),
                                         (socket.AF_INET, socket.SOCK_DGRAM),
                                         (socket.AF_INET6, socket.SOCK_DGRAM)],
                         ids=["tcp", "udp", "udp6"])
def test_the_functional_api_refuses_ip_sockets(family: int, kind: int) -> None:
    with socket.socket(family, kind) as s:
        assert fdpass.send(s.fileno(), 0) is False
        assert fdpass.get_errno() == errno.EAFNOSUPPORT


def test_the_functional_api_refuses_a_pipe_and_a_closed_descriptor() -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        assert fdpass.send(w, 0) is False
        assert fdpass.get_errno() == errno.ENOTSOCK
    finally:
        os.close(w)
    assert fdpass.send(w, 0) is False
    assert fdpass.get_errno() == errno.EBADF


# Credentials: getpeereid's shape (pid -1) in the portable build.

def test_peer_credentials_have_the_builds_shape() -> None:
    a, b = FDChannel.pair()
    with a, b:
        creds = a.peer_credentials()
    assert creds == (peer_pid(os.getpid()), os.geteuid(), os.getegid())
    assert (creds.pid == -1) == (_engine.CREDENTIALS_METHOD == "getpeereid")


# EMSGSIZE: macOS's answer to a descriptor-carrying send on a stream whose
# peer has no room yet.  Linux never gives it there, so a preloaded sendmsg
# gives it, for the number of calls the child sets.

FULL_BUFFER_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <sys/socket.h>

int fake_emsgsize_left = 0;

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    static ssize_t (*real)(int, const struct msghdr *, int);
    int type = 0;
    socklen_t length = sizeof(type);
    if (real == NULL)
        real = (ssize_t (*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
    if (fake_emsgsize_left > 0 && msg->msg_controllen > 0
            && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0
            && type == SOCK_STREAM) {
        fake_emsgsize_left--;
        errno = EMSGSIZE;
        return -1;
    }
    return real(fd, msg, flags);
}
"""

FULL_BUFFER_CHILD = """
import ctypes, errno, os, socket, fdpass
left = ctypes.c_int.in_dll(ctypes.CDLL(None), "fake_emsgsize_left")

def outcome(send):
    try:
        result = send()
    except OSError as exc:
        return type(exc).__name__ + ":" + errno.errorcode[exc.errno]
    return "ok" if result in (None, True) else errno.errorcode[fdpass.get_errno()]

a, b = fdpass.FDChannel.pair()
b.settimeout(5.0)  # a send that did not go fails its receive, not the child's timeout
with a, b:
    for timeout in (None, 5.0):
        a.settimeout(timeout)
        left.value = 3
        print(outcome(lambda: a.send_fd(0)), left.value)
        os.close(b.recv_fd())
    a.settimeout(0.0)
    left.value = 1
    print(outcome(lambda: a.send_fd(0)), left.value)
    left.value = 1
    print(outcome(lambda: fdpass.send(a.fileno(), 0)), left.value)
    left.value = 1
    a.settimeout(None)
    print(outcome(lambda: a.send_fds([0, 1], b"x" * 100)), left.value)
    print(len(b.recv_message(100)[1]) == 2 or "lost")
"""


def test_emsgsize_on_a_stream_waits_as_a_full_buffer(tmp_path: Path) -> None:
    """Blocking and timed sends wait and go; a non-blocking one is
    BlockingIOError (the functional API: EAGAIN), as for any full buffer."""
    if MUSL:
        pytest.skip("on musl the engine makes the sendmsg system call itself "
                    "(include/fdpass_compat.h), which no LD_PRELOAD shim can interpose")
    compiler = sysconfig.get_config_var("CC") or "cc"
    source = tmp_path / "full_buffer.c"
    source.write_text(FULL_BUFFER_SHIM)
    shim = tmp_path / "full_buffer.so"
    built = subprocess.run([*shlex.split(compiler), "-shared", "-fPIC", "-o", str(shim),
                            str(source), "-ldl"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    # After any library already preloaded (ASAN's must stay first).
    preload = " ".join(filter(None, [os.environ.get("LD_PRELOAD"), str(shim)]))
    result = subprocess.run([sys.executable, "-c", FULL_BUFFER_CHILD], capture_output=True,
                            text=True, timeout=60, cwd=PACKAGE_ROOT,
                            env={**os.environ, "LD_PRELOAD": preload})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "0", "ok", "0", "BlockingIOError:EAGAIN", "0",
                                     "EAGAIN", "0", "ok", "0", "True"]


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET],
                         ids=["dgram", "seqpacket"])
@pytest.mark.parametrize("timeout", [None, 0.0, 5.0], ids=["blocking", "non-blocking", "timed"])
def test_emsgsize_on_a_datagram_is_an_error(kind: int, timeout: float | None) -> None:
    """A record too long for the socket stays 'message too long', at once:
    never waited for, never BlockingIOError."""
    a, b = FDChannel.pair(kind)
    with a, b:
        a.settimeout(timeout)
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            a.send_fds([0], b"x" * (1 << 24))
        assert info.value.errno == errno.EMSGSIZE
        assert not isinstance(info.value, BlockingIOError)
        assert time.monotonic() - started < 2
