"""Helpers the tests share: a leak census, a raw, hostile peer, and the
foreign peers the interop tests run."""

from __future__ import annotations

import array
import asyncio
import gc
import io
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import CodeType
from typing import Any, NamedTuple

import pytest

import fdpass
import fdpass._engine
from fdpass._engine import wait_for_discards as wait_for_discards  # for the tests


def needs_defused_queues() -> None:
    """Skip where the build cannot defuse a socket's queue before closing it
    (the portable build, like BSD and macOS, has no SO_PEEK_OFF)."""
    if not fdpass._engine.DEFUSES_QUEUES:
        pytest.skip("this build cannot peek a whole queue (SO_PEEK_OFF is Linux's): "
                    "in-flight lingering sockets close as they are")


def needs_passcred() -> None:
    """Skip where the build has no per-message credentials (portable)."""
    if fdpass._engine.PORTABLE:
        pytest.skip("the portable build has no SO_PASSCRED")

#: Linux's numbers, for Pythons whose socket module lacks the names.
SO_PASSCRED = getattr(socket, "SO_PASSCRED", 16)
SO_PASSPIDFD = getattr(socket, "SO_PASSPIDFD", 76)


def _on_musl() -> bool:
    """Whether this process runs on musl (Alpine; the musllinux wheel's
    suite): the C library the loader mapped says, where Python does not."""
    try:
        with open("/proc/self/maps") as maps:
            return any(re.search(r"(/ld-musl-[^/]+\.so\.1|-linux-musl/libc\.so)$", line.rstrip())
                       for line in maps)
    except FileNotFoundError:
        return False


#: musl's struct cmsghdr has a 32-bit cmsg_len beside padding (glibc's is
#: a size_t), and its sendmsg() refuses a control buffer over 1024 bytes
#: on 64-bit platforms (ENOMEM): the standard library's socket.sendmsg with
#: it, though fdpass makes the system call itself (include/fdpass_compat.h).
MUSL = _on_musl()
MUSL_SENDMSG_CONTROL_MAX = 1024

def peer_pid(pid: int) -> int:
    """What peer_credentials() says of a peer process pid in this build:
    getpeereid (the portable build, BSD, macOS) has no pid, and says -1."""
    return -1 if fdpass._engine.CREDENTIALS_METHOD == "getpeereid" else pid


PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fdpass.__file__)))

# The clone the tests run from (PACKAGE_ROOT is where fdpass was imported
# from: under tox, an installed wheel).
REPOSITORY = Path(__file__).resolve().parent.parent
DOC_PAGES = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)


class Block(NamedTuple):
    """A fenced block of a page, with the line its code starts on."""

    page: Path
    line: int
    language: str
    code: str

    def compiled(self) -> CodeType:
        """Compiled so that a traceback names the page and its own line."""
        return compile("\n" * (self.line - 1) + self.code, str(self.page), "exec")


def doc_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    return [Block(page, text.count("\n", 0, found.start(2)) + 1, found.group(1).strip(),
                  found.group(2)) for found in FENCE.finditer(text)]


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what each refers to."""
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        numbers = [int(name) for name in os.listdir(listing) if int(name) != listing]
    finally:
        os.close(listing)
    found = {}
    for fd in numbers:
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
    return found


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def threads_back_to(count: int, timeout: float = 5.0) -> int:
    """The thread count once it is back to count, or when timeout passed.
    A thread just joined can still be listed in /proc/self/task for a
    moment: a join returns once the kernel has cleared the thread's id,
    before the thread is reaped (seen under the sanitizers)."""
    deadline = time.monotonic() + timeout
    while thread_count() != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return thread_count()


def raw_send(sock: socket.socket, data: bytes, *groups: list[int]) -> None:
    """Send like a hostile peer: any payload, one SCM_RIGHTS message a group."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds)) for fds in groups]
    control = sum(socket.CMSG_SPACE(4 * len(fds)) for fds in groups)
    if MUSL and control > MUSL_SENDMSG_CONTROL_MAX:
        pytest.skip(f"musl's sendmsg() refuses {control} bytes of control data (over "
                    f"{MUSL_SENDMSG_CONTROL_MAX}), so the standard library cannot be this peer")
    try:
        sock.sendmsg([data], ancillary)
    except RuntimeError as error:
        # CPython's sendmsg walks the buffer it builds with CMSG_NXTHDR, which
        # on musl ends it early after an empty message.
        if MUSL and "CMSG_NXTHDR" in str(error):
            pytest.skip(f"the standard library's sendmsg on musl cannot send {groups!r} ({error})")
        raise


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def received_fds(outcome: object) -> list[int]:
    """The descriptors a receive call handed out: an int (-1: none), a list,
    recv_message's (data, fds), or a file or socket object that owns one."""
    if isinstance(outcome, int):
        return [outcome] if outcome >= 0 else []
    if isinstance(outcome, list):
        return outcome
    if isinstance(outcome, tuple):
        return list(outcome[1])
    if isinstance(outcome, (io.IOBase, socket.socket)):
        return [outcome.fileno()]
    raise AssertionError(f"a receive call returned {outcome!r}")


def release(outcome: object) -> None:
    """Close what a receive call handed out."""
    if isinstance(outcome, (io.IOBase, socket.socket)):
        outcome.close()
    else:
        close_all(received_fds(outcome))


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def run_python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run this interpreter on args from the folder fdpass was imported from,
    so that a child imports the same build, never a source tree in the cwd;
    env is added to this process's environment."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=120, cwd=PACKAGE_ROOT,
                          env=None if env is None else {**os.environ, **env})


def fill_backlog(path: str) -> list[socket.socket]:
    """Connect to the listener at path until its backlog is full (the next
    connect would wait); the connections, the caller's to close."""
    queued: list[socket.socket] = []
    while True:
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)
        try:
            client.connect(path)
        except BlockingIOError:
            client.close()
            return queued
        queued.append(client)


def python_child(code: str, *args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    """Start this interpreter on code (as run_python), its stdout a pipe,
    with pass_fds open in it; use it in a with block, which closes the
    pipe and reaps the child."""
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            text=True, cwd=PACKAGE_ROOT, pass_fds=pass_fds)


#: Seconds the last close of a lingering socket (conftest's fixture) takes.
LINGER = 3


class Lingering:
    """A TCP socket on the loopback whose last close blocks for `seconds`
    (SO_LINGER with unsent data, the peer reading nothing): what a hostile
    peer attaches to stall whoever discards it.  `sock` is the lingering
    end; close() closes everything not handed away."""

    def __init__(self, seconds: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.sock.connect(self.listener.getsockname())
        self.peer, _ = self.listener.accept()
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.send(b"x" * 65536)
        except BlockingIOError:
            pass
        self.sock.setblocking(True)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, seconds))

    def reset_seen(self, timeout: float) -> bool:
        """Whether the lingering end was closed abortively: its peer, reading
        what was sent, meets a reset (an orderly close would end in EOF)."""
        self.peer.settimeout(timeout)
        try:
            while self.peer.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.peer.settimeout(None)
        return False

    def close(self) -> None:
        self.sock.close()
        self.peer.close()
        self.listener.close()


def attach_lingering(peer: socket.socket, held: Lingering, data: bytes,
                     *groups: list[int]) -> None:
    """Send groups of descriptors with the lingering socket last, then drop
    this copy of it: the receiver's copy is the last, its close the slow one."""
    raw_send(peer, data, *groups[:-1], [*groups[-1], held.sock.fileno()])
    held.sock.close()


class Ticker:
    """While on (a with block), a thread that wakes every `period` seconds:
    `longest` is the longest it went without running, which is how long
    any thread of this process was kept from running (the GIL held across
    a close that blocks, say)."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fdpass-test-ticker")

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.period):
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now
        self.longest = max(self.longest, time.monotonic() - last)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


class LoopTicker:
    """Ticker's twin for an event loop: a task that sleeps `period` seconds
    at a time while on (an async with block); `longest` is the longest the
    loop went without running it."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now

    async def __aenter__(self) -> LoopTicker:
        self._task = asyncio.ensure_future(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        await asyncio.sleep(self.period)  # a stall just before the end shows
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


PEERS = Path(__file__).resolve().parent / "peers"


def find_peer(program: str, check: list[str], package: str) -> str:
    """The path of a foreign peer's program, checked by running it with check.
    Fails the test (never skips it) when it is missing, naming the Debian
    package, so that CI cannot pass on a missing peer."""
    found = shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""),
                                                        "/usr/sbin", "/sbin"]))
    done = subprocess.run([found, *check], capture_output=True, text=True,
                          timeout=60) if found else None
    if done is None or done.returncode != 0:
        pytest.fail(f"{program} is needed: apt-get install {package} "
                    f"({done.stderr.strip() if done else f'no {program} on PATH'})")
    assert found is not None
    return found


def run_peer(command: list[str], sock: socket.socket, *args: str) -> str:
    """Run a peer with the socket's descriptor number as its first argument
    (after command); its stdout, once it has succeeded."""
    done = subprocess.run([*command, str(sock.fileno()), *args], pass_fds=[sock.fileno()],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def text_files(directory: Path, count: int, text: str) -> list[Path]:
    """count files in directory, each holding text and its own number."""
    paths = [directory / f"file{i}" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_text(f"{text}, file {i}\n")
    return paths


def check_received_files(fds: list[int], paths: list[Path]) -> None:
    """The received descriptors, which this closes, are the files at paths,
    in order: the same inode and the same content."""
    with ExitStack() as stack:
        received = [stack.enter_context(open(fd)) for fd in fds]
        originals = [stack.enter_context(open(path)) for path in paths]
        assert len(received) == len(originals)
        assert [same_file(a.fileno(), b.fileno()) for a, b in zip(received, originals)] \
            == [True] * len(paths)
        assert [f.read() for f in received] == [path.read_text() for path in paths]


def fd_numbers(limit: int) -> set[int]:
    """Open descriptors below limit, by fstat: after setuid() a process may
    no longer read its own /proc/self/fd."""
    found = set()
    for fd in range(limit):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.add(fd)
    return found


class Child:
    """A forked child that becomes uid (if given), runs work, and reports
    its result and the descriptors it left open.  Fork before starting
    threads: the parent serves it after."""

    def __init__(self, work: Callable[[], dict[str, Any]], uid: int | None = None) -> None:
        r, w = os.pipe()
        with warnings.catch_warnings():  # pytest's faulthandler watchdog is a thread
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child
            report: dict[str, Any]
            try:
                os.close(r)
                if uid is not None:
                    os.setgid(uid)
                    os.setuid(uid)
                before = fd_numbers(1024)
                report = work()
                gc.collect()
                report["leaked"] = sorted(fd_numbers(1024) - before)
            except BaseException as error:
                report = {"crashed": repr(error)}
            try:
                os.write(w, json.dumps(report).encode())
            finally:
                os._exit(0)
        os.close(w)
        self.pid = pid
        self._pipe = r

    def report(self) -> dict[str, Any]:
        data = b""
        try:
            while select.select([self._pipe], [], [], 30)[0]:
                chunk = os.read(self._pipe, 65536)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(self._pipe)
            _, status = os.waitpid(self.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        report: dict[str, Any] = json.loads(data)
        return report
