"""The soak, short: 20,000 descriptors through one channel pair in each
mode (`python -m fdpass._soak` passes 1,000,000).  Every one arrives, and
this process's descriptors and memory stay flat.  The memory bound is
generous: it catches a leak per message (20,000 messages of even a
kilobyte each is 20 MiB), not a slow allocator."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fdpass import _soak
from fdpass.aio import AsyncFDChannel
from support import run_python

COUNT = 20_000
WARMUP = 2_000
MAX_GROWTH_KIB = 16 * 1024
#: Under AddressSanitizer (tox -e sanitize) freed memory waits in its
#: quarantine: RSS grows by design there, and only descriptors are counted.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


@pytest.mark.parametrize("mode", _soak.MODES)
def test_soak_stays_flat(mode: str) -> None:
    result = _soak.soak(mode, COUNT, WARMUP)
    assert result.sent == result.received == WARMUP + COUNT
    assert result.before.fds == result.middle.fds == result.after.fds
    if not SANITIZED:
        assert result.rss_growth_kib < MAX_GROWTH_KIB, result.line()
        assert result.flat(MAX_GROWTH_KIB)


def test_batches_end_on_each_phase() -> None:
    sizes = list(_soak.message_sizes(1000, 100, 64))
    assert sizes == [64, 36] + [64] * 7 + [52] + [64] * 7 + [52]
    assert sum(sizes) == 1100


def test_another_file_fails_the_check(pipe: tuple[int, int],
                                      stream: tuple[socket.socket, socket.socket]) -> None:
    check = _soak.checker(pipe[0])
    check(pipe[0])
    other = stream[0].fileno()
    with pytest.raises(_soak.SoakError, match=f"received descriptor {other} is not the one sent"):
        check(other)


def failing_sizes(count: int, warmup: int, per: int) -> Iterator[int]:
    yield from [1] * 100
    raise RuntimeError("the sender broke")


@pytest.mark.parametrize("mode", _soak.MODES)
def test_a_failing_sender_fails_the_soak(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender fails after 100 descriptors: the soak says so at once,
    rather than wait for the rest."""
    monkeypatch.setattr(_soak, "message_sizes", failing_sizes)
    send_fd = AsyncFDChannel.send_fd
    sent = 0

    async def failing_send_fd(channel: AsyncFDChannel, f: int) -> None:
        nonlocal sent
        sent += 1
        if sent > 100:
            raise RuntimeError("the sender broke")
        await send_fd(channel, f)

    monkeypatch.setattr(AsyncFDChannel, "send_fd", failing_send_fd)
    with pytest.raises(_soak.SoakError, match="the sender failed") as failed:
        _soak.soak(mode, COUNT, 0)
    assert str(failed.value.__cause__) == "the sender broke"


@pytest.mark.parametrize("mode", _soak.MODES)
def test_a_failing_receiver_stops_the_sender(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The third check fails: the soak raises its error, and the sender,
    blocked on a full socket or not, stops (the test would hang if not)."""
    def checker(fd: int) -> Callable[[int], None]:
        checks = 0

        def check(received: int) -> None:
            nonlocal checks
            checks += 1
            if checks == 3:
                raise _soak.SoakError("the third check failed")
        return check

    monkeypatch.setattr(_soak, "checker", checker)
    with pytest.raises(_soak.SoakError, match="the third check failed"):
        _soak.soak(mode, COUNT, 0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown mode 'stream'"):
        _soak.soak("stream", 10)
    with pytest.raises(ValueError, match="count must be at least 1"):
        _soak.soak("single", 0)


def test_command(tmp_path: Path) -> None:
    path = tmp_path / "soak.json"
    done = run_python("-m", "fdpass._soak", "--count", "2000", "--warmup", "100",
                      "--mode", "batch", "--mode", "asyncio", "--json", str(path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["batch", "asyncio"]
    assert all(line.startswith(f"{mode}: 2,000 descriptors in ") and line.endswith("; flat")
               for mode, line in zip(["batch", "asyncio"], lines))
    document = json.loads(path.read_text())
    assert (document["count"], document["warmup"]) == (2000, 100)
    for r in document["results"]:
        assert r["sent"] == r["received"] == 2100
        assert r["before"]["fds"] == r["middle"]["fds"] == r["after"]["fds"]
        assert r["us_per_fd"] == pytest.approx(
            (r["after"]["at"] - r["before"]["at"]) / 2000 * 1e6)
        assert r["flat"] is True
