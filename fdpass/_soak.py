"""`python -m fdpass._soak`: many descriptors through one channel pair,
each received and closed in this process, whose open descriptors and
resident memory are read after a warm-up, midway and at the end.  A leak
of one descriptor, or of a few bytes, per message shows as growth.

Modes: single (send_fd, recv_fd), batch (send_fds, recv_fds of 64 at a
time), file (send_fd, recv_file, the file object closed), asyncio
(AsyncFDChannel send_fd, recv_fd, a sender and a receiver task on one
loop).  The sender is a thread of this process (a task, for asyncio) and
sends the read end of a pipe, opened once.  Every 1000th descriptor is
checked to be that pipe (fstat), and after the last one the receiver must
read the end of the stream: exactly as many went through as were sent.
This is no benchmark (`python -m fdpass bench` is): the time is reported
so that a slowdown over the run shows."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass

from fdpass import FDChannel
from fdpass._engine import wait_for_discards
from fdpass.aio import AsyncFDChannel

MODES = ("single", "batch", "file", "asyncio")
#: Descriptors per message in batch mode.
BATCH = 64
#: One received descriptor in this many is checked against the one sent.
CHECK_EVERY = 1000
#: Descriptors passed before the first reading, so that the allocator's and
#: the interpreter's warm-up does not count as growth.
WARMUP = 5000
#: A blocking receive that waits this long (seconds) is a hang.
TIMEOUT = 60.0
#: The RSS growth (KiB) the command still calls flat.
MAX_GROWTH_KIB = 16 * 1024


class SoakError(Exception):
    """The soak saw something wrong: a wrong descriptor, a wrong count."""


@dataclass(frozen=True)
class Sample:
    """One reading of this process."""

    fds: int          # open descriptors, the listing's own not counted
    rss_kib: int      # resident now (VmRSS in /proc/self/status)
    maxrss_kib: int   # the most resident so far (getrusage)
    at: float         # time.perf_counter()


def sample() -> Sample:
    wait_for_discards(TIMEOUT)  # what fdpass discarded is closed: count it as closed
    fds = len(os.listdir("/proc/self/fd")) - 1
    # Not /proc/self/statm: Linux 6.x reads its per-CPU counters without
    # summing them, and it lags VmRSS by up to a few hundred KiB.
    with open("/proc/self/status") as status:
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return Sample(fds, rss_kib, maxrss_kib, time.perf_counter())


@dataclass(frozen=True)
class Result:
    mode: str
    count: int        # descriptors between the first reading and the last
    warmup: int       # descriptors before the first reading
    sent: int         # descriptors the sender sent, warm-up included
    received: int     # descriptors the receiver took, before the end of the stream
    before: Sample
    middle: Sample
    after: Sample

    @property
    def seconds(self) -> float:
        return self.after.at - self.before.at

    @property
    def us_per_fd(self) -> float:
        return self.seconds / self.count * 1e6

    @property
    def rss_growth_kib(self) -> int:
        return self.after.rss_kib - self.before.rss_kib

    def flat(self, max_growth_kib: int = MAX_GROWTH_KIB) -> bool:
        return (self.before.fds == self.middle.fds == self.after.fds
                and self.rss_growth_kib < max_growth_kib)

    def line(self) -> str:
        b, m, a = self.before, self.middle, self.after
        return (f"{self.mode}: {self.count:,} descriptors in {self.seconds:.2f} s "
                f"({self.us_per_fd:.2f} us each); fds {b.fds} -> {m.fds} -> {a.fds}; "
                f"RSS KiB {b.rss_kib} -> {m.rss_kib} -> {a.rss_kib}; "
                f"maxrss {a.maxrss_kib} KiB; {'flat' if self.flat() else 'GREW'}")

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "seconds": self.seconds, "us_per_fd": self.us_per_fd,
                "flat": self.flat()}


def phases(count: int, warmup: int) -> tuple[int, int, int]:
    """How many descriptors go before each reading: before, middle, after."""
    return warmup, count // 2, count - count // 2


def message_sizes(count: int, warmup: int, per: int) -> Iterator[int]:
    """The descriptors in each message the sender sends: per at a time,
    and each phase ends on a message's end, so that the receiver can take
    exactly a phase's descriptors."""
    for n in phases(count, warmup):
        full, rest = divmod(n, per)
        for _ in range(full):
            yield per
        if rest:
            yield rest


def checker(original: int) -> Callable[[int], None]:
    """A check that a received descriptor is the file original is."""
    st = os.fstat(original)
    want = (st.st_dev, st.st_ino)

    def check(fd: int) -> None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != want:
            raise SoakError(f"received descriptor {fd} is not the one sent")
    return check


def close_checked(fd: int, i: int, check: Callable[[int], None]) -> None:
    """Close fd, the ith received one-descriptor message of a phase;
    every CHECK_EVERY, check it first."""
    try:
        if i % CHECK_EVERY == 0:
            check(fd)
    finally:
        os.close(fd)


def take_single(rx: FDChannel, n: int, check: Callable[[int], None]) -> int:
    recv_fd = rx.recv_fd
    for i in range(n):
        close_checked(recv_fd(), i, check)
    return n


def take_batch(rx: FDChannel, n: int, check: Callable[[int], None]) -> int:
    recv_fds, close = rx.recv_fds, os.close
    got = checked = 0
    while got < n:
        fds = recv_fds(BATCH)
        try:
            if got >= checked:
                check(fds[0])
                checked += CHECK_EVERY
        finally:
            for fd in fds:
                close(fd)
        got += len(fds)
    return got


def take_file(rx: FDChannel, n: int, check: Callable[[int], None]) -> int:
    recv_file = rx.recv_file
    for i in range(n):
        f = recv_file()
        try:
            if i % CHECK_EVERY == 0:
                check(f.fileno())
        finally:
            f.close()
    return n


TAKERS: dict[str, Callable[[FDChannel, int, Callable[[int], None]], int]] = {
    "single": take_single, "batch": take_batch, "file": take_file}


def check_end(data: bytes, fds: list[int]) -> None:
    """What a receive after the last descriptor got, when it got anything."""
    for fd in fds:
        os.close(fd)
    raise SoakError(f"a message after the last one sent ({len(data)} bytes, "
                    f"{len(fds)} descriptors)")


def sender_failed(receiving: BaseException, sender: BaseException | None) -> None:
    """The receiver got the end of the stream early because the sender
    failed (and closed its channel): say why."""
    if sender is not None and isinstance(receiving, EOFError):
        raise SoakError("the sender failed") from sender


class Sender(threading.Thread):
    """Sends fd in messages of sizes, then lives on until released (a
    thread's exit touches some 60 KiB, which is no growth of the soak's);
    on failure, closes tx, so that the receiver reads the end of the stream
    rather than wait."""

    def __init__(self, tx: FDChannel, fd: int, sizes: Iterator[int]) -> None:
        super().__init__(name="fdpass-soak-sender", daemon=True)
        self.tx, self.fd, self.sizes = tx, fd, sizes
        self.sent = 0
        self.error: BaseException | None = None
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()
        self.join()

    def run(self) -> None:
        fd, full = self.fd, [self.fd] * BATCH
        send_fd, send_fds = self.tx.send_fd, self.tx.send_fds
        try:
            for size in self.sizes:
                while True:
                    try:
                        if size == 1:
                            send_fd(fd)
                        else:
                            send_fds(full if size == BATCH else full[:size])
                        break
                    except OSError as exc:
                        # Unprivileged, the kernel caps descriptors in flight
                        # at RLIMIT_NOFILE: wait until the receiver takes some.
                        if exc.errno != errno.ETOOMANYREFS:
                            raise
                        time.sleep(0.001)
                self.sent += size
            self.released.wait()
        except BaseException as exc:
            self.error = exc
            self.tx.close()


#: What a run gives: the three readings, descriptors sent, descriptors received.
Run = tuple[list[Sample], int, int]


def soak_blocking(mode: str, count: int, warmup: int, fd: int) -> Run:
    take, check = TAKERS[mode], checker(fd)
    tx, rx = FDChannel.pair()
    with tx, rx:
        rx.settimeout(TIMEOUT)
        sender = Sender(tx, fd, message_sizes(count, warmup, BATCH if mode == "batch" else 1))
        sender.start()
        try:
            samples, received = [], 0
            for n in phases(count, warmup):
                received += take(rx, n, check)
                samples.append(sample())
            sender.release()
            if sender.error is not None:
                raise SoakError("the sender failed") from sender.error
            tx.close()
            try:
                check_end(*rx.recv_message(1))
            except EOFError:
                pass
        except BaseException as exc:
            rx.close()  # a sender still sending fails at once (BrokenPipeError)
            sender.release()
            sender_failed(exc, sender.error)
            raise
    return samples, sender.sent, received


async def send_async(tx: AsyncFDChannel, fd: int, total: int) -> int:
    try:
        for _ in range(total):
            await tx.send_fd(fd)
    except BaseException:
        tx.close()
        raise
    return total


async def take_async(recv_fd: Callable[[], Awaitable[int]], n: int,
                     check: Callable[[int], None]) -> int:
    for i in range(n):
        close_checked(await recv_fd(), i, check)
    return n


async def soak_asyncio(count: int, warmup: int, fd: int) -> Run:
    check = checker(fd)
    tx, rx = AsyncFDChannel.pair()
    async with tx, rx:
        sender = asyncio.ensure_future(send_async(tx, fd, warmup + count))
        try:
            samples, received = [], 0
            for n in phases(count, warmup):
                received += await take_async(rx.recv_fd, n, check)
                samples.append(sample())
            sent = await sender
            tx.close()
            try:
                check_end(*await rx.recv_message(1))
            except EOFError:
                pass
        except BaseException as exc:
            sender.cancel()
            failed = (await asyncio.gather(sender, return_exceptions=True))[0]
            sender_failed(exc, failed if isinstance(failed, Exception) else None)
            raise
    return samples, sent, received


def soak(mode: str, count: int, warmup: int = WARMUP) -> Result:
    """Pass warmup + count descriptors in mode, reading this process after
    the warm-up, midway through count and at the end."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    if count < 1 or warmup < 0:
        raise ValueError("count must be at least 1 and warmup at least 0")
    r, w = os.pipe()
    try:
        if mode == "asyncio":
            samples, sent, received = asyncio.run(soak_asyncio(count, warmup, r))
        else:
            samples, sent, received = soak_blocking(mode, count, warmup, r)
    finally:
        os.close(r)
        os.close(w)
    if not sent == received == warmup + count:
        raise SoakError(f"{sent} descriptors sent, {received} received, "
                        f"{warmup + count} meant to")
    return Result(mode, count, warmup, sent, received, *samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fdpass._soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, metavar="N",
                        help="descriptors per mode, after the warm-up (default 1,000,000)")
    parser.add_argument("--warmup", type=int, default=WARMUP, metavar="N",
                        help=f"descriptors before the first reading (default {WARMUP:,})")
    parser.add_argument("--mode", action="append", choices=MODES, default=[],
                        help="run this mode (may be repeated; default: all four, in turn, "
                             "in this process)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    if args.count < 1 or args.warmup < 0:
        parser.error("--count must be at least 1 and --warmup at least 0")
    results = []
    for mode in args.mode or MODES:
        results.append(soak(mode, args.count, args.warmup))
        print(results[-1].line(), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"count": args.count, "warmup": args.warmup,
                       "results": [r.as_dict() for r in results]}, out, indent=2)
    return 0 if all(r.flat() for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
