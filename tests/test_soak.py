"""The soak, short: 20,000 descriptors through one channel pair in each
mode (`python -m fdpass._soak` passes 1,000,000).  Every one arrives, and
this process's descriptors and memory stay flat.  The memory bound is
generous: it catches a leak per message (20,000 messages of even a
kilobyte each is 20 MiB), not a slow allocator."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from fdpass import _soak
from support import run_python

COUNT = 20_000
WARMUP = 2_000
MAX_GROWTH_KIB = 16 * 1024


@pytest.mark.parametrize("mode", _soak.MODES)
def test_soak_stays_flat(mode: str) -> None:
    result = _soak.soak(mode, COUNT, WARMUP)
    assert result.sent == result.received == WARMUP + COUNT
    assert result.before.fds == result.middle.fds == result.after.fds
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
