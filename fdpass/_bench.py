"""`python -m fdpass bench`: every implementation this machine has, over the
same workloads, in one run, so that the ratios between rows mean something.

Each measurement is two worker processes over a fresh AF_UNIX socketpair:
a sender and a receiver, made by fork (Python rows) or started as `perl`
(the IO::FDPass row).  Both say when they are ready; the clock runs from
the go signal to the sender until the receiver reports that it has taken
(and closed) every descriptor."""

from __future__ import annotations

import array
import asyncio
import importlib.util
import io
import json
import multiprocessing.reduction
import os
import platform
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import fdpass
from fdpass import _benchfloor, _engine

#: A worker that has not finished after this many seconds is killed.
WORKER_DEADLINE = 300.0


@dataclass(frozen=True)
class Workload:
    name: str
    descriptors: int         # per repeat, at full size
    per_message: int = 1
    reply: bool = False      # ping-pong: one byte back after each message
    pinned: bool = False     # both workers on one CPU
    convert: str = ""        # "file" or "socket": the receiver makes an object
    burst: int = 0           # messages queued, then drained, then one byte back

    @property
    def reply_every(self) -> int:
        """After how many messages the receiver writes one byte back (0: never)."""
        return self.burst or int(self.reply)

    @property
    def what(self) -> str:
        if self.burst:
            kind = f"bursts of {self.burst} one-descriptor messages, one byte back after each"
        elif self.reply:
            kind = "one descriptor, one byte back"
        elif self.convert:
            kind = f"one descriptor per message, received as a {self.convert} object"
        else:
            kind = f"{self.per_message} descriptor{'s' * (self.per_message > 1)} per message"
        return kind + ("; both processes on one CPU" if self.pinned else "")


WORKLOADS = [
    Workload("stream", 100_000),
    Workload("stream-pinned", 100_000, pinned=True),
    Workload("batch", 409_600, per_message=64),
    Workload("ping-pong", 20_000, reply=True),
    Workload("ping-pong-pinned", 20_000, reply=True, pinned=True),
    Workload("convert-file", 20_000, convert="file"),
    Workload("convert-socket", 20_000, convert="socket"),
    Workload("burst", 102_400, burst=64),
]


class Implementation:
    """One way of passing descriptors: a sender loop and a receiver loop."""

    name = ""

    def available(self) -> str:
        """Why it cannot run here, or "" when it can."""
        return ""

    def supports(self, w: Workload) -> bool:
        return not w.convert and not w.burst

    def start(self, role: str, w: Workload, messages: int, fds: dict[str, int]) -> int:
        """Fork a worker; its pid.  fds holds sock, ready, go (sender) or
        done (receiver), and for the sender, passed (what it sends)."""
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the caller
            status = 1
            try:
                self.work(role, w, messages, fds)
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        return pid

    def work(self, role: str, w: Workload, messages: int, fds: dict[str, int]) -> None:
        os.write(fds["ready"], b"r")
        with socket.socket(fileno=os.dup(fds["sock"])) as sock:
            if role == "send":
                os.read(fds["go"], 1)
                self.send(sock, fds["passed"], messages, w)
            else:
                self.recv(sock, messages, w)
                os.write(fds["done"], b"d")

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        raise NotImplementedError

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        raise NotImplementedError


class Floor(Implementation):
    name = "C floor (sendmsg/recvmsg loop)"

    def supports(self, w: Workload) -> bool:
        return not w.convert

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        _benchfloor.send(sock.fileno(), fd, messages, w.per_message, w.reply_every)

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        _benchfloor.recv(sock.fileno(), messages, w.per_message, w.reply_every)


class FloorMmsg(Implementation):
    """The burst's other floor: one sendmmsg a burst, recvmmsg until it is
    drained, in C."""

    name = "C recvmmsg/sendmmsg"

    def available(self) -> str:
        return "" if _benchfloor.HAVE_MMSG else "no recvmmsg/sendmmsg in this build"

    def supports(self, w: Workload) -> bool:
        return bool(w.burst) and _engine.BATCH_METHOD == "recvmmsg/sendmmsg"

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        _benchfloor.send_bursts(sock.fileno(), fd, messages // w.burst, w.burst)

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        _benchfloor.recv_bursts(sock.fileno(), messages // w.burst, w.burst)


class Channel(Implementation):
    name = "fdpass.FDChannel"

    def supports(self, w: Workload) -> bool:
        return True

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        ch = fdpass.FDChannel(sock)  # the default: closefd (never closed here)
        s, read = sock.fileno(), os.read
        if w.burst:
            send_many, burst = ch.send_many, [(b"\0", (fd,))] * w.burst
            for _ in range(messages // w.burst):
                send_many(burst)
                read(s, 1)
        elif w.reply:
            send_fd = ch.send_fd
            for _ in range(messages):
                send_fd(fd)
                read(s, 1)
        elif w.per_message == 1:
            send_fd = ch.send_fd
            for _ in range(messages):
                send_fd(fd)
        else:
            send_fds, fds = ch.send_fds, [fd] * w.per_message
            for _ in range(messages):
                send_fds(fds)

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        ch = fdpass.FDChannel(sock)  # the default: closefd (never closed here)
        s, close, write = sock.fileno(), os.close, os.write
        if w.convert:
            convert = ch.recv_file if w.convert == "file" else ch.recv_socket
            for _ in range(messages):
                convert().close()
        elif w.burst:
            recv_many, size = ch.recv_many, w.burst
            for _ in range(messages // size):
                got = 0
                while got < size:
                    batch = recv_many(size - got)
                    got += len(batch)
                    for _, fds in batch:
                        for fd in fds:
                            close(fd)
                write(s, b"k")
        elif w.reply:
            recv_fd = ch.recv_fd
            for _ in range(messages):
                close(recv_fd())
                write(s, b"k")
        elif w.per_message == 1:
            recv_fd = ch.recv_fd
            for _ in range(messages):
                close(recv_fd())
        else:
            recv_fds, per = ch.recv_fds, w.per_message
            for _ in range(messages):
                for fd in recv_fds(per):
                    close(fd)


class ByHand(Implementation):
    """The converters' floor: receive the number, then open it as an
    application without fdpass's converters would."""

    name = "FDChannel.recv_fd, then open"

    def supports(self, w: Workload) -> bool:
        return bool(w.convert)

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        send_fd = fdpass.FDChannel(sock).send_fd
        for _ in range(messages):
            send_fd(fd)

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        recv_fd, make = fdpass.FDChannel(sock).recv_fd, PLAIN_CONVERSION[w.convert]
        for _ in range(messages):
            make(recv_fd()).close()


class Functional(Implementation):
    name = "fdpass.send / fdpass.recv"

    def supports(self, w: Workload) -> bool:
        return w.per_message == 1 and not w.burst

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        s, send, read = sock.fileno(), fdpass.send, os.read
        for _ in range(messages):
            if not send(s, fd):
                raise OSError(fdpass.get_errno(), "fdpass.send failed")
            if w.reply:
                read(s, 1)

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        s, recv, close, write = sock.fileno(), fdpass.recv, os.close, os.write
        if w.convert:
            make = PLAIN_CONVERSION[w.convert]
            for _ in range(messages):
                make(checked(recv(s))).close()
            return
        for _ in range(messages):
            close(checked(recv(s)))
            if w.reply:
                write(s, b"k")


def checked(fd: int) -> int:
    if fd < 0:
        raise OSError(fdpass.get_errno(), "fdpass.recv failed")
    return fd


def open_binary(fd: int) -> io.BufferedReader:
    return open(fd, "rb")


def socket_of(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)


#: What a receiver without fdpass's converters does with a received number.
PLAIN_CONVERSION: dict[str, Callable[[int], io.BufferedReader | socket.socket]] = {
    "file": open_binary, "socket": socket_of}


class Stdlib(Implementation):
    name = "socket.send_fds / recv_fds"

    def supports(self, w: Workload) -> bool:
        return True

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        send_fds, read, s = socket.send_fds, os.read, sock.fileno()
        data, fds, every = [b"\0"], [fd] * w.per_message, w.reply_every
        for i in range(1, messages + 1):
            send_fds(sock, data, fds)
            if every and i % every == 0:
                read(s, 1)

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        recv_fds, close, write, s = socket.recv_fds, os.close, os.write, sock.fileno()
        per, every = w.per_message, w.reply_every
        make = PLAIN_CONVERSION.get(w.convert)
        for i in range(1, messages + 1):
            fds = recv_fds(sock, 1, per)[1]
            if make is not None:
                make(fds[0]).close()
                continue
            for fd in fds:
                close(fd)
            if every and i % every == 0:
                write(s, b"k")


class Raw(Implementation):
    name = "socket.sendmsg / recvmsg (raw)"

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        sendmsg, read, s = sock.sendmsg, os.read, sock.fileno()
        data = [b"\0"]
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                      array.array("i", [fd] * w.per_message).tobytes())]
        for _ in range(messages):
            sendmsg(data, ancillary)
            if w.reply:
                read(s, 1)

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        recvmsg, close, write, s = sock.recvmsg, os.close, os.write, sock.fileno()
        space = socket.CMSG_SPACE(w.per_message * array.array("i").itemsize)
        flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
        for _ in range(messages):
            for fd in array.array("i", recvmsg(1, space, flags)[1][0][2]):
                close(fd)
            if w.reply:
                write(s, b"k")


class Multiprocessing(Implementation):
    name = "multiprocessing.reduction"

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        sendfds, read, s = multiprocessing.reduction.sendfds, os.read, sock.fileno()
        fds = [fd] * w.per_message
        for _ in range(messages):
            sendfds(sock, fds)
            if w.reply:
                read(s, 1)

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        recvfds, close, write, s = multiprocessing.reduction.recvfds, os.close, os.write, sock.fileno()
        per = w.per_message
        for _ in range(messages):
            for fd in recvfds(sock, per):
                close(fd)
            if w.reply:
                write(s, b"k")


class AsyncChannel(Implementation):
    """fdpass.aio, each worker running an event loop of its own."""

    name = "AsyncFDChannel (asyncio)"

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def run(self, main: Coroutine[Any, Any, None]) -> None:
        loop = self.new_loop()
        try:
            loop.run_until_complete(main)
        finally:
            loop.close()

    def send(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        self.run(self.sender(sock, fd, messages, w))

    def recv(self, sock: socket.socket, messages: int, w: Workload) -> None:
        self.run(self.receiver(sock, messages, w))

    async def sender(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        from fdpass.aio import AsyncFDChannel

        async with AsyncFDChannel(sock) as ch:
            if w.per_message > 1:
                fds = [fd] * w.per_message
                for _ in range(messages):
                    await ch.send_fds(fds)
                return
            for _ in range(messages):
                await ch.send_fd(fd)
                if w.reply:
                    await ch.recv_message(1)

    async def receiver(self, sock: socket.socket, messages: int, w: Workload) -> None:
        from fdpass.aio import AsyncFDChannel

        close, per = os.close, w.per_message
        async with AsyncFDChannel(sock) as ch:
            if per > 1:
                for _ in range(messages):
                    for fd in await ch.recv_fds(per):
                        close(fd)
                return
            for _ in range(messages):
                close(await ch.recv_fd())
                if w.reply:
                    sock.send(b"k")  # one byte into an empty buffer: never blocks


class AsyncChannelUvloop(AsyncChannel):
    name = "AsyncFDChannel (uvloop)"

    def available(self) -> str:
        return "" if importlib.util.find_spec("uvloop") else "uvloop is not installed"

    def new_loop(self) -> asyncio.AbstractEventLoop:
        import uvloop

        return uvloop.new_event_loop()


class AsyncFloor(AsyncChannel):
    """The asyncio rows' floor: the loop's own one-byte ping-pong
    (sock_sendall, sock_recv), no descriptor at all."""

    name = "asyncio sock_recv/sendall (no fds)"

    def supports(self, w: Workload) -> bool:
        return w.reply

    async def sender(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        for _ in range(messages):
            await loop.sock_sendall(sock, b"\0")
            await loop.sock_recv(sock, 1)

    async def receiver(self, sock: socket.socket, messages: int, w: Workload) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        for _ in range(messages):
            await loop.sock_recv(sock, 1)
            await loop.sock_sendall(sock, b"k")


class AsyncFloorUvloop(AsyncFloor, AsyncChannelUvloop):
    name = "uvloop sock_recv/sendall (no fds)"


class Anyio(AsyncChannel):
    """anyio's UNIX socket stream on the asyncio backend."""

    name = "anyio send_fds/receive_fds"

    def available(self) -> str:
        if not importlib.util.find_spec("anyio"):
            return "anyio is not installed"
        import anyio.abc

        if not hasattr(anyio.abc.UNIXSocketStream, "from_socket"):
            return "anyio is older than 4.7 (no UNIXSocketStream.from_socket)"
        return ""

    async def sender(self, sock: socket.socket, fd: int, messages: int, w: Workload) -> None:
        import anyio.abc

        async with await anyio.abc.UNIXSocketStream.from_socket(sock) as stream:
            fds = [fd] * w.per_message
            for _ in range(messages):
                await stream.send_fds(b"\0", fds)
                if w.reply:
                    await stream.receive(1)

    async def receiver(self, sock: socket.socket, messages: int, w: Workload) -> None:
        import anyio.abc

        close, per = os.close, w.per_message
        async with await anyio.abc.UNIXSocketStream.from_socket(sock) as stream:
            for _ in range(messages):
                for fd in (await stream.receive_fds(1, per))[1]:
                    close(fd)
                if w.reply:
                    await stream.send(b"k")


PERL_WORKER = r"""
use strict;
use IO::FDPass;
use POSIX ();
my ($role, $sock, $ready, $signal, $passed, $messages, $reply, $convert) = @ARGV;
my $byte;
POSIX::write($ready, "r", 1) == 1 or die "ready: $!";
if ($role eq "send") {
    POSIX::read($signal, $byte, 1) == 1 or die "go: $!";
    for (1 .. $messages) {
        IO::FDPass::send($sock, $passed) or die "send: $!";
        if ($reply) { POSIX::read($sock, $byte, 1) == 1 or die "read: $!" }
    }
} else {
    for (1 .. $messages) {
        my $fd = IO::FDPass::recv($sock);
        $fd >= 0 or die "recv: $!";
        if ($convert) { open my $fh, "<&=", $fd or die "open: $!"; close $fh }
        else { POSIX::close($fd) }
        if ($reply) { POSIX::write($sock, "k", 1) == 1 or die "write: $!" }
    }
    POSIX::write($signal, "d", 1) == 1 or die "done: $!";
}
"""


class Perl(Implementation):
    name = "Perl IO::FDPass"

    def available(self) -> str:
        perl = shutil.which("perl")
        if perl is None:
            return "no perl on PATH"
        check = subprocess.run([perl, "-MIO::FDPass", "-e", "1"], capture_output=True)
        return "" if check.returncode == 0 else "perl has no IO::FDPass"

    def supports(self, w: Workload) -> bool:
        return w.per_message == 1 and w.convert in ("", "file") and not w.burst

    def work(self, role: str, w: Workload, messages: int, fds: dict[str, int]) -> None:
        signal = fds["go"] if role == "send" else fds["done"]
        passed = fds.get("passed", -1)
        for fd in (fds["sock"], fds["ready"], signal, passed):
            if fd >= 0:
                os.set_inheritable(fd, True)
        os.execvp("perl", ["perl", "-e", PERL_WORKER, *(str(v) for v in (
            role, fds["sock"], fds["ready"], signal, passed, messages,
            int(w.reply), int(bool(w.convert))))])


IMPLEMENTATIONS: list[Implementation] = [
    Floor(), FloorMmsg(), Channel(), ByHand(), Functional(), Stdlib(), Raw(), Multiprocessing(),
    Perl(), AsyncFloor(), AsyncChannel(), AsyncFloorUvloop(), AsyncChannelUvloop(), Anyio(),
]
BASELINE = Stdlib.name
FLOOR = Floor.name


class BenchError(Exception):
    """A worker failed or did not finish."""


@contextmanager
def passed_descriptor(w: Workload) -> Iterator[int]:
    """What the sender passes: a read-only file for convert-file, a socket
    for convert-socket, else /dev/null."""
    with ExitStack() as stack:
        if w.convert == "socket":
            a, b = socket.socketpair()
            stack.enter_context(a)
            stack.enter_context(b)
            yield a.fileno()
        elif w.convert == "file":
            # Read-only, so that recv_file()'s mode (from the access flags)
            # and the by-hand row's open(fd, "rb") make the same object.
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            path = os.path.join(directory, "passed")
            open(path, "xb").close()
            yield stack.enter_context(open(path, "rb")).fileno()
        else:
            yield stack.enter_context(open(os.devnull, "rb")).fileno()


@contextmanager
def pinned(w: Workload) -> Iterator[None]:
    """Workers inherit the CPU affinity they are started with."""
    if not w.pinned:
        yield
        return
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)


class Workers:
    """The two worker processes of one measurement, watched so that one
    that dies is noticed at once rather than at the deadline."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.pids: list[int] = []
        self.statuses: dict[int, int] = {}

    def poll(self, block: bool = False) -> None:
        for pid in self.pids:
            if pid not in self.statuses:
                done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
                if done:
                    self.statuses[pid] = os.waitstatus_to_exitcode(status)

    def check(self) -> None:
        failed = {pid: s for pid, s in self.statuses.items() if s != 0}
        if failed:
            raise BenchError(f"{self.label}: worker failed (pid: exit status {failed})")

    def expect_byte(self, fd: int) -> None:
        """Wait for a worker's one-byte report on fd."""
        deadline = time.monotonic() + WORKER_DEADLINE
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                if os.read(fd, 1):
                    return
                break
            self.poll()
            self.check()
        raise BenchError(f"{self.label}: no report from the workers within "
                         f"{WORKER_DEADLINE:.0f} s")

    def finish(self, kill: bool) -> None:
        if kill:
            for pid in self.pids:
                if pid not in self.statuses:
                    os.kill(pid, 9)
        self.poll(block=True)


def run_once(impl: Implementation, w: Workload, messages: int) -> float:
    """Seconds from go to the receiver's last descriptor, in fresh workers."""
    workers = Workers(f"{impl.name} / {w.name}")
    with ExitStack() as stack:
        def pipe() -> tuple[int, int]:
            r, w_ = os.pipe()
            stack.callback(os.close, r)
            stack.callback(os.close, w_)
            return r, w_

        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stack.enter_context(a)
        stack.enter_context(b)
        ready_r, ready_w = pipe()
        go_r, go_w = pipe()
        done_r, done_w = pipe()
        passed = stack.enter_context(passed_descriptor(w))
        ok = False
        try:
            with pinned(w):
                workers.pids.append(impl.start(
                    "recv", w, messages, {"sock": b.fileno(), "ready": ready_w, "done": done_w}))
                workers.pids.append(impl.start("send", w, messages, {
                    "sock": a.fileno(), "ready": ready_w, "go": go_r, "passed": passed}))
            for _ in workers.pids:
                workers.expect_byte(ready_r)
            start = time.perf_counter()
            os.write(go_w, b"g")
            workers.expect_byte(done_r)
            elapsed = time.perf_counter() - start
            ok = True
        finally:
            workers.finish(kill=not ok)
    workers.check()
    return elapsed


@dataclass
class Result:
    workload: str
    implementation: str
    descriptors: int
    samples: list[float]                  # seconds per repeat
    us_per_fd: float = 0.0
    fds_per_second: float = 0.0
    vs_floor: float | None = None         # time / the C floor's time
    speedup_vs_stdlib: float | None = None  # socket.send_fds' time / this time


def measure(w: Workload, impls: Sequence[Implementation], scale: float, repeats: int,
            progress: TextIO) -> list[Result]:
    unit = w.per_message * max(w.burst, 1)  # whole messages, and whole bursts
    descriptors = max(unit, int(w.descriptors * scale) // unit * unit)
    messages = descriptors // w.per_message
    runnable = [impl for impl in impls if impl.supports(w)]
    samples: dict[str, list[float]] = {impl.name: [] for impl in runnable}
    for _ in range(repeats):  # round-robin, so that drift in the machine's load hits every row
        for impl in runnable:
            samples[impl.name].append(run_once(impl, w, messages))
        print(".", end="", file=progress, flush=True)
    results = []
    for impl in runnable:
        median = statistics.median(samples[impl.name])
        results.append(Result(w.name, impl.name, descriptors, samples[impl.name],
                              us_per_fd=median / descriptors * 1e6,
                              fds_per_second=descriptors / median))
    by_name = {r.implementation: r for r in results}
    for r in results:
        if FLOOR in by_name:
            r.vs_floor = r.us_per_fd / by_name[FLOOR].us_per_fd
        if BASELINE in by_name:
            r.speedup_vs_stdlib = by_name[BASELINE].us_per_fd / r.us_per_fd
    return results


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "fdpass": fdpass.__version__,
    }


@dataclass(frozen=True)
class Target:
    """name's time against reference's in one workload: at most `bound`
    times it, or with `speedup`, at least `bound` times faster."""
    workload: str
    name: str
    reference: str
    bound: float
    speedup: bool = False

    def line(self, found: dict[tuple[str, str], Result]) -> str | None:
        mine, theirs = found.get((self.workload, self.name)), found.get((self.workload, self.reference))
        if mine is None or theirs is None:
            return None
        if self.speedup:
            ratio = theirs.us_per_fd / mine.us_per_fd
            met = ratio >= self.bound
            words = f"{ratio:.3f}x faster than {self.reference} (target >= {self.bound}x)"
        else:
            ratio = mine.us_per_fd / theirs.us_per_fd
            met = ratio <= self.bound
            words = f"at {ratio:.3f}x {self.reference} (target <= {self.bound}x)"
        return f"{self.workload}: {self.name} {words}: {'met' if met else 'missed'}"


#: The targets fdpass is held to, read in both stream workloads (unpinned
#: and pinned to one CPU).
TARGETS = [
    target
    for stream in ("stream", "stream-pinned")
    for target in (Target(stream, Channel.name, FLOOR, 1.15),
                   Target(stream, Channel.name, BASELINE, 1.6, speedup=True),
                   Target(stream, Functional.name, Channel.name, 1.1))
] + [Target("batch", Channel.name, FLOOR, 1.15),
      Target("ping-pong-pinned", Channel.name, FLOOR, 1.10),
      Target("ping-pong-pinned", Channel.name, Perl.name, 1.0),
      Target("convert-file", Channel.name, ByHand.name, 1.05),
      Target("convert-socket", Channel.name, ByHand.name, 1.05),
      *(Target(pp, channel.name, floor.name, 1.15)
        for pp in ("ping-pong", "ping-pong-pinned")
        for channel, floor in ((AsyncChannel, AsyncFloor), (AsyncChannelUvloop, AsyncFloorUvloop))),
      Target("burst", Channel.name, FLOOR, 1.3, speedup=True)]


def target_lines(results: Sequence[Result]) -> list[str]:
    found = {(r.workload, r.implementation): r for r in results}
    return [line for line in (t.line(found) for t in TARGETS) if line]


def table(results: Sequence[Result], workloads: Sequence[Workload], repeats: int) -> str:
    out = []
    for w in workloads:
        rows = [r for r in results if r.workload == w.name]
        if not rows:
            continue
        out.append(f"{w.name}: {rows[0].descriptors:,} descriptors, {w.what}; "
                   f"median of {repeats}")
        out.append(f"  {'implementation':<36} {'us/fd':>8} {'fd/s':>11} {'vs floor':>9} "
                   f"{'vs stdlib':>10}")
        for r in rows:
            floor = f"{r.vs_floor:.2f}x" if r.vs_floor is not None else "-"
            stdlib = f"{r.speedup_vs_stdlib:.2f}x" if r.speedup_vs_stdlib is not None else "-"
            out.append(f"  {r.implementation:<36} {r.us_per_fd:>8.3f} "
                       f"{r.fds_per_second:>11,.0f} {floor:>9} {stdlib:>10}")
        out.append("")
    return "\n".join(out)


#: What the figures say, for a user who ran the bench to see whether fdpass
#: works here (the project's own targets are for its developers: --targets).
READING = """\
Reading the figures: compare rows within this run, never across runs or
machines; a loaded machine moves every row. A quick run is a smoke run: it
shows that each implementation works here, and its figures are rough. fdpass's
rows near the C floor (1.0x) mean that it adds little to what the kernel costs."""


def run(quick: bool = False, json_path: str | None = None, repeats: int = 5,
        only: Sequence[str] = (), targets: bool = False) -> int:
    scale = 0.02 if quick else 1.0
    workloads = [w for w in WORKLOADS if not only or w.name in only]
    why_not = {impl.name: impl.available() for impl in IMPLEMENTATIONS}
    impls = [impl for impl in IMPLEMENTATIONS if not why_not[impl.name]]
    missing = [f"{name}: {why}" for name, why in why_not.items() if why]
    info = machine()
    print(f"fdpass {info['fdpass']} bench on {info['cpu']} ({info['cpus']} CPUs), "
          f"{info['system']}, {info['python']}")
    print(f"{'quick smoke run' if quick else 'full run'}: "
          f"{len(impls)} implementations x {len(workloads)} workloads x {repeats} repeats",
          file=sys.stderr)
    results: list[Result] = []
    for w in workloads:
        results += measure(w, impls, scale, repeats, sys.stderr)
    print(file=sys.stderr)
    print("us/fd and fd/s: median wall time per descriptor, sender start to receiver done;")
    print("vs floor: time relative to the C loop (lower is better); "
          "vs stdlib: speed-up over socket.send_fds/recv_fds\n")
    print(table(results, workloads, repeats))
    for line in missing:
        print(f"not measured: {line}")
    lines = target_lines(results)
    if targets and lines:
        print("the project's targets (for its developers; a quick run is too short to judge them):")
        for line in lines:
            print(f"  {line}")
    elif not targets:
        print(READING)
    if json_path:
        document = {"machine": info, "quick": quick, "repeats": repeats,
                    "workloads": [asdict(w) for w in workloads],
                    "results": [asdict(r) for r in results], "targets": lines}
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    return 0
