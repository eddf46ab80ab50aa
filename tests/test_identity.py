"""Who is on the other end: peer pidfds (SO_PEERPIDFD), per-message senders
(SCM_CREDENTIALS with SCM_PIDFD) and channels that refuse descriptors
(SO_PASSRIGHTS, or closing them at receipt), against real other processes:
children that setuid() to other users, and one that lies about itself."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fdpass import FDChannel, ProtocolError, Sender
from fdpass._channel import REFUSAL_ENV
from fdpass._engine import PORTABLE
from support import (
    PACKAGE_ROOT, SO_PASSPIDFD, Child, python_child, run_python, same_file, wait_for_discards,
)

SO_PASSRIGHTS = getattr(socket, "SO_PASSRIGHTS", 83)
#: The uids (and as many gids) the datagram test's senders become.
UIDS = (65534, 65533, 4242)

#: The portable build takes the BSDs' and macOS's side, which have none of
#: Linux's identity options: test_the_portable_build_says_it_has_none.
linux_identity = pytest.mark.skipif(PORTABLE, reason=(
    "the portable build has no SO_PEERPIDFD, SO_PASSCRED or SO_PASSRIGHTS, "
    "as BSD and macOS have none"))


def pidfd_pid(pidfd: int) -> int:
    """The pid a pidfd refers to, as the kernel shows it (-1 once reaped)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as info:
        for line in info:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise AssertionError(f"descriptor {pidfd} is no pidfd")


def cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def check_sender(sender: Sender, pid: int, uid: int, gid: int) -> None:
    """sender is pid's, with a pidfd for pid (then closed)."""
    assert (sender.pid, sender.uid, sender.gid) == (pid, uid, gid)
    assert sender.pidfd >= 0, "this kernel has SCM_PIDFD: a pidfd must come"
    try:
        assert cloexec(sender.pidfd)
        assert pidfd_pid(sender.pidfd) == pid
    finally:
        os.close(sender.pidfd)


# A child that connects to a listening socket and holds the connection
# until its stdin closes.  (A socketpair's peer is its maker: this process.)
HOLDER = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""

# A child that sends one message with a pipe's write end over the socket,
# then lives until a byte comes back.
SENDER = """
import os, socket, sys
import fdpass
sock = socket.socket(fileno=int(sys.argv[1]))
ch = fdpass.FDChannel(sock)
r, w = os.pipe()
ch.send_fds([w], f"from {os.getpid()}".encode())
print(os.getpid(), flush=True)
sock.recv(1)
"""


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[FDChannel, subprocess.Popen[str]]]:
    """A channel whose peer is another process, alive until the test ends."""
    path = str(tmp_path / "listener")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        child = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        with child:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            with FDChannel(listener.accept()[0]) as ch:
                yield ch, child


# -- peer_pidfd --------------------------------------------------------------

@linux_identity
def test_peer_pidfd_refers_to_the_peer_and_is_the_callers(
        peer: tuple[FDChannel, subprocess.Popen[str]]) -> None:
    ch, child = peer
    pidfd = ch.peer_pidfd()
    try:
        again = ch.peer_pidfd()
        try:
            assert pidfd != again, "each call gives a new pidfd"
            assert pidfd_pid(pidfd) == child.pid == pidfd_pid(again)
            assert cloexec(pidfd) and cloexec(again)
        finally:
            os.close(again)
        # The pidfd outlives the peer and then names no process: a pid
        # could by then be another process's.
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
        assert pidfd_pid(pidfd) == -1
        assert not ch.closed, "closing a pidfd is the caller's affair"
    finally:
        os.close(pidfd)


@linux_identity
def test_peer_pidfd_without_a_peer_or_a_channel() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, FDChannel(s, closefd=False) as ch:
        with pytest.raises(OSError) as info:
            ch.peer_pidfd()
        assert info.value.errno == errno.ENODATA
        assert "no connected peer" in str(info.value)
    a, b = FDChannel.pair()
    b.close()
    with a, pytest.raises(ValueError, match="closed channel"):
        b.peer_pidfd()


# -- refuse_fds --------------------------------------------------------------

@pytest.fixture(params=["kernel", "at-receipt"])
def refusal(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way a channel refuses descriptors: the kernel's (SO_PASSRIGHTS,
    Linux >= 6.16, which this machine has; the portable build has no such
    option, and falls back) and the fallback's, forced on."""
    if request.param == "at-receipt":
        monkeypatch.setenv(REFUSAL_ENV, "1")
    return "at-receipt" if PORTABLE else str(request.param)


def test_a_refusing_channel_never_takes_a_descriptor(
        sockets: tuple[socket.socket, socket.socket], refusal: str) -> None:
    a, b = sockets
    r, w = os.pipe()
    try:
        with FDChannel(a, closefd=False) as tx, FDChannel(b, closefd=False, refuse_fds=True) as rx:
            assert b.getsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS) == (refusal != "kernel")
            if refusal == "kernel":
                with pytest.raises(PermissionError, match="refuses them"):
                    tx.send_fds([w], b"with")
            else:
                tx.send_fds([w], b"with")
                rx.settimeout(5)
                with pytest.raises(ProtocolError, match="are closed in the background") as info:
                    rx.recv_message(100)
                assert info.value.errno == errno.EBADMSG
            os.close(w)
            w = -1
            assert wait_for_discards(30)
            # Every copy of the write end is closed: the refused one too.
            assert os.read(r, 1) == b""
            # Data without descriptors still arrives, in order; nothing else
            # was queued.
            a.send(b"data only")
            rx.settimeout(5)
            assert rx.recv_message(100) == (b"data only", [])
            rx.settimeout(0)
            with pytest.raises(BlockingIOError):
                rx.recv_message(100)
            # A refusing channel still sends.
            tx.settimeout(5)
            rx.send_fd(r)
            with tx.recv_file("rb", buffering=0) as got:
                assert same_file(got.fileno(), r)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_descriptor_receives_on_a_refusing_channel_raise_before_receiving(
        sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockets
    with FDChannel(b, closefd=False, refuse_fds=True) as rx:
        a.send(b"x")
        for call in (rx.recv_fd, rx.recv_fds, rx.recv_file, rx.recv_socket):
            with pytest.raises(ValueError, match="refuses descriptors"):
                call()
        rx.settimeout(5)
        assert rx.recv_message(10) == (b"x", []), "nothing was received before"


def test_descriptors_queued_before_refusal_are_closed_at_receipt(
        sockets: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockets
    r, w = os.pipe()
    with FDChannel(a, closefd=False) as tx:
        tx.send_fds([w, w, r], b"early")
        os.close(w)
        with FDChannel(b, closefd=False, refuse_fds=True) as rx:
            rx.settimeout(5)
            with pytest.raises(ProtocolError, match=r"refuses descriptors.*\(3 received\)"):
                rx.recv_message(100)
            assert wait_for_discards(30)
            assert os.read(r, 1) == b""
            a.send(b"next")
            assert rx.recv_message(100) == (b"next", []), "the channel stays usable"
    os.close(r)


# -- passcred and recv_message_from ------------------------------------------

@pytest.mark.skipif(not PORTABLE, reason="the native build has them (the tests above)")
def test_the_portable_build_says_it_has_none() -> None:
    a, b = FDChannel.pair()
    with a, b:
        for call in (a.peer_pidfd, lambda: FDChannel(b.fileno(), closefd=False, passcred=True)):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.ENOPROTOOPT
    out = run_python("-m", "fdpass", "info")
    for line in ("SO_PEERPIDFD: no", "SO_PASSCRED: no", "SCM_PIDFD: no", "SO_PASSRIGHTS: no",
                 "refuse_fds: every arriving descriptor is closed at receipt"):
        assert line in out.stdout


def test_recv_message_from_needs_passcred() -> None:
    a, b = FDChannel.pair()
    b.settimeout(0)  # were it to receive, nothing would come
    with a, b, pytest.raises(ValueError, match="passcred=True"):
        b.recv_message_from(10)


@linux_identity
@pytest.mark.parametrize("kind", [socket.SOCK_SEQPACKET, socket.SOCK_DGRAM],
                         ids=["seqpacket", "dgram"])
def test_a_refused_long_record_takes_its_senders_pidfd_along(kind: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with FDChannel(a) as tx, FDChannel(b, passcred=True) as rx:
        for fds in ([], [0, 1]):
            if fds:
                tx.send_fds(fds, b"x" * 100)
            else:
                a.send(b"x" * 100)
            with pytest.raises(ProtocolError, match="longer than bufsize"):
                rx.recv_message_from(10)  # the leak check sees a pidfd left behind


@linux_identity
def test_a_message_without_credentials_has_no_sender() -> None:
    a, b = socket.socketpair()
    with FDChannel(a) as tx, FDChannel(b, passcred=True) as rx:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)  # behind the channel's back
        b.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 0)
        tx.send_fds([0], b"who?")
        with pytest.raises(ProtocolError, match="no credentials"):
            rx.recv_message_from(100)


# At the descriptor limit with room for the message's two descriptors but
# not for the sender's pidfd: the kernel puts -EMFILE in SCM_PIDFD.
PIDFD_AT_THE_LIMIT = """
import os, resource, socket
import fdpass
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
tx, rx = fdpass.FDChannel(a), fdpass.FDChannel(b, passcred=True)
r, w = os.pipe()
tx.send_fds([r, w], b"two")
os.close(r)
os.close(w)
before = sorted(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.dup(a.fileno()))
except OSError:
    pass
os.close(held.pop())
os.close(held.pop())
try:
    rx.recv_message_from(100)
except fdpass.ProtocolError as error:
    print(error)
fdpass._engine.wait_for_discards(10)
for fd in held:
    os.close(fd)
print(sorted(os.listdir("/proc/self/fd")) == before)
a.send(b"next")
print(rx.recv_message_from(100)[:2])
"""


@linux_identity
def test_a_pidfd_the_kernel_could_not_install_is_no_missing_feature() -> None:
    out = run_python("-c", PIDFD_AT_THE_LIMIT)
    assert out.returncode == 0, out.stderr
    error, none_left, after = out.stdout.splitlines()
    assert "could not install the sender's pidfd (SCM_PIDFD: EMFILE)" in error
    assert "RLIMIT_NOFILE" in error and "2 descriptors are closed in the background" in error
    assert none_left == "True", "the two received were closed"
    assert after == "(b'next', [])", "the channel stays usable"


@linux_identity
def test_recv_message_from_names_another_process(sock_type: int) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, sock_type)
    with ours, FDChannel(ours, closefd=False, passcred=True) as ch:
        with python_child(SENDER, str(theirs.fileno()), pass_fds=(theirs.fileno(),)) as child:
            theirs.close()
            assert child.stdout is not None
            pid = int(child.stdout.readline())
            try:
                ch.settimeout(30)
                data, fds, sender = ch.recv_message_from(100)
                assert data == f"from {pid}".encode()
                assert len(fds) == 1 and cloexec(fds[0])
                os.close(fds[0])
                check_sender(sender, pid, os.getuid(), os.getgid())  # while it lives
            finally:
                ours.send(b"!")  # the child may go, whatever happened
        if sock_type != socket.SOCK_DGRAM:
            # At the end of a stream the kernel attaches zeroed credentials:
            # no message from pid 0.
            with pytest.raises(EOFError):
                ch.recv_message_from(100)


@linux_identity
def test_a_message_queued_before_passcred_has_no_sender(sock_type: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, sock_type)
    with a, b, FDChannel(a, closefd=False) as tx:
        tx.send_fds([0], b"early")
        with FDChannel(b, closefd=False, passcred=True) as rx:
            with pytest.raises(ProtocolError, match="pid 0"):
                rx.recv_message_from(100)
            tx.send_fds([0], b"late")
            data, fds, sender = rx.recv_message_from(100)
            assert data == b"late"
            os.close(fds[0])
            check_sender(sender, os.getpid(), os.getuid(), os.getgid())


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every uid can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="fdpass-identity-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def send_as(path: str, uid: int) -> dict[str, Any]:
    """In a child become uid: send one datagram, with a descriptor, to path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        with FDChannel(sock, closefd=False) as ch, open("/dev/null") as null:
            ch.send_fds([null], f"{uid} {os.getpid()}".encode())
    return {"uid": os.getuid(), "pid": os.getpid()}


@linux_identity
@pytest.mark.skipif(os.geteuid() != 0, reason="setuid() to other users needs root")
def test_one_datagram_socket_attributes_each_message_to_its_sender(shared_dir: Path) -> None:
    path = str(shared_dir / "supervisor.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        os.chmod(path, 0o777)
        with FDChannel(sock, closefd=False, passcred=True) as ch:
            children = [Child(partial(send_as, path, uid), uid) for uid in UIDS]
            ch.settimeout(30)
            seen = {}
            for _ in UIDS:  # before the children are reaped: their pidfds name them
                data, fds, sender = ch.recv_message_from(100)
                for fd in fds:
                    assert cloexec(fd)
                    os.close(fd)
                assert len(fds) == 1
                claimed_uid, claimed_pid = map(int, data.split())
                check_sender(sender, claimed_pid, claimed_uid, claimed_uid)
                seen[sender.pid] = sender.uid
            reports = {child.pid: child.report() for child in children}
    assert seen == {pid: report["uid"] for pid, report in reports.items()}
    assert sorted(seen.values()) == sorted(UIDS)
    for report in reports.values():
        assert report["leaked"] == []


# -- forged credentials ------------------------------------------------------

def claim(path: str, pid: int | None, uid: int, gid: int) -> dict[str, Any]:
    """Send a datagram whose SCM_CREDENTIALS claims (pid, uid, gid); pid
    None is the sender's own."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        creds = struct.pack("iII", os.getpid() if pid is None else pid, uid, gid)
        try:
            sock.sendmsg([b"claim"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])
        except OSError as error:
            return {"errno": error.errno, "pid": os.getpid()}
    return {"errno": 0, "pid": os.getpid()}


@linux_identity
@pytest.mark.skipif(os.geteuid() != 0, reason="setuid() to another user needs root")
def test_an_unprivileged_sender_cannot_claim_another_identity(shared_dir: Path) -> None:
    """The kernel checks SCM_CREDENTIALS: a process without CAP_SYS_ADMIN and
    CAP_SETUID may claim only itself.  Root may claim anyone (the kernel
    trusts it), and Sender reports the claim: what Sender proves is "this
    process, or root"."""
    path = str(shared_dir / "claims.sock")
    nobody = UIDS[0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        os.chmod(path, 0o777)
        with FDChannel(sock, closefd=False, passcred=True) as ch:
            ch.settimeout(0)
            for pid, uid in ((1, nobody), (None, 0), (1, 0)):  # None: its own pid
                report = Child(partial(claim, path, pid, uid, nobody), nobody).report()
                assert report["errno"] == errno.EPERM, f"claiming pid {pid} uid {uid}"
            with pytest.raises(BlockingIOError):
                ch.recv_message_from(100)  # none of the lies arrived
            honest = Child(partial(claim, path, None, nobody, nobody), nobody)
            ch.settimeout(30)
            data, fds, sender = ch.recv_message_from(100)
            assert data == b"claim" and fds == []
            check_sender(sender, honest.pid, nobody, nobody)
            assert honest.report() == {"errno": 0, "pid": honest.pid, "leaked": []}
            root = Child(partial(claim, path, 1, 0, 0))
            _, _, sender = ch.recv_message_from(100)
            assert root.report()["errno"] == 0
            assert (sender.pid, sender.uid, sender.gid) == (1, 0, 0), "root's claim stands"
            assert sender.pidfd >= 0 and pidfd_pid(sender.pidfd) == 1
            os.close(sender.pidfd)


# -- info --------------------------------------------------------------------

@linux_identity
def test_info_says_what_the_kernel_supports_and_how_refusal_works() -> None:
    out = run_python("-m", "fdpass", "info")
    assert out.returncode == 0, out.stderr
    for line in ("SO_PEERPIDFD: yes", "SCM_PIDFD: yes", "SO_PASSRIGHTS: yes",
                 "refuse_fds: the kernel refuses descriptors"):
        assert line in out.stdout
    forced = subprocess.run([sys.executable, "-m", "fdpass", "info"], capture_output=True,
                            text=True, timeout=120, cwd=PACKAGE_ROOT,
                            env={**os.environ, REFUSAL_ENV: "1"})
    assert forced.returncode == 0, forced.stderr
    assert f"SO_PASSRIGHTS: not used: {REFUSAL_ENV} is set" in forced.stdout
    assert "refuse_fds: every arriving descriptor is closed at receipt" in forced.stdout


def test_info_says_no_for_what_a_kernel_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from fdpass import _features

    monkeypatch.setattr(_features, "identity_support",
                        lambda: _features.IdentitySupport(False, False, False, False))
    lines = _features.describe()
    for name in ("SO_PEERPIDFD", "SO_PASSCRED", "SCM_PIDFD", "SO_PASSRIGHTS"):
        assert any(line.startswith(f"{name}: no") for line in lines), name
    assert any(line.startswith("refuse_fds: every arriving descriptor is closed at receipt")
               for line in lines)


def test_info_probes_match_what_the_channels_do() -> None:
    from fdpass._features import identity_support

    assert identity_support() == (not PORTABLE,) * 4


# -- fdpass.aio --------------------------------------------------------------

@linux_identity
def test_async_channels_know_their_peers_and_refuse() -> None:
    import asyncio

    from fdpass.aio import AsyncFDChannel

    async def main() -> None:
        a, b = socket.socketpair()
        async with AsyncFDChannel(a) as tx, AsyncFDChannel(b, refuse_fds=True,
                                                          passcred=True) as rx:
            pidfd = rx.peer_pidfd()
            assert pidfd_pid(pidfd) == os.getpid()
            os.close(pidfd)
            with pytest.raises(PermissionError):
                await tx.send_fd(0)
            with pytest.raises(ValueError, match="refuses descriptors"):
                await asyncio.wait_for(rx.recv_fd(), 5)
            waiting = asyncio.ensure_future(rx.recv_message_from(10))
            await asyncio.sleep(0.01)
            a.send(b"hi")
            data, fds, sender = await asyncio.wait_for(waiting, 30)
            assert (data, fds) == (b"hi", [])
            check_sender(sender, os.getpid(), os.getuid(), os.getgid())

    asyncio.run(main())
