"""The load proof: while client threads open TCP connections on 127.0.0.1
as fast as they can, each sending a request and reading the answer, the
server is replaced three times through Offer/take (each successor a new
process), and not one connection is refused, reset or unanswered.  The
same load across a plain restart (close, then bind again) sees refusals:
the measurement can fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fdpass import _demo_handoff
from support import run_python

# Four client threads at full speed; each generation serves this long.
THREADS = 4
DWELL = 0.4


def show(label: str, result: _demo_handoff.Result) -> None:
    print(f"{label}: {_demo_handoff.summary(result)} in {result.seconds:.1f} s")


def test_three_handoffs_under_full_load_lose_no_connection(
        capsys: pytest.CaptureFixture[str]) -> None:
    result = _demo_handoff.run(3, threads=THREADS, pause=0.0, dwell=DWELL, out=lambda _: None)
    with capsys.disabled():
        show("\nhandoff x3", result)
    assert result.failures == {}, result
    assert sorted(result.answers) == [0, 1, 2, 3], result  # every generation served
    assert all(count > 0 for count in result.answers.values()), result
    # What the client counted is what each generation says it answered.
    assert result.answers == result.served, result
    assert result.live_failures == {}, result  # long-lived connections moved, state intact
    assert sorted(result.live) == [0, 1, 2, 3], result
    assert result.seconds < 30


def test_a_plain_restart_under_the_same_load_refuses_connections(
        capsys: pytest.CaptureFixture[str]) -> None:
    result = _demo_handoff.run(1, handoff_=False, threads=THREADS, pause=0.0, dwell=DWELL,
                               out=lambda _: None)
    with capsys.disabled():
        show("\nplain restart", result)
    assert result.failures.get("refused", 0) > 0, result
    assert result.live_failures.get("reset or ended", 0) > 0, result  # not moved: ended
    assert sorted(result.answers) == [0, 1], result


def test_demo_handoff_command() -> None:
    done = run_python("-m", "fdpass", "demo", "handoff")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    handoff_line = next(line for line in lines if line.startswith("handoff: "))
    assert handoff_line.endswith("; 0 refused, 0 reset, 0 unanswered"), handoff_line
    assert all(f"generation {g}: " in handoff_line for g in range(4)), handoff_line
    assert sum("took the listeners and long-lived connections over" in line
               for line in lines) == 3
    live_line = lines[lines.index(handoff_line) + 1]
    assert live_line.startswith("  long-lived: 3 connections, "), live_line
    assert live_line.endswith("; 0 reset or ended, 0 unanswered, 0 state"), live_line
    assert all(f"generation {g}: " in live_line for g in range(4)), live_line
    assert any(line.startswith("plain restart: ") for line in lines)
    assert lines[-1] == "the handoff lost no connection: 0 refused"


def test_demo_handoff_with_a_long_tmpdir(tmp_path: Path) -> None:
    """A $TMPDIR longer than about 71 characters made the handoff paths
    too long for AF_UNIX: they are relative to the generations' directory."""
    tmpdir = tmp_path / ("t" * 150)
    tmpdir.mkdir()
    done = run_python("-m", "fdpass", "demo", "handoff", env={"TMPDIR": str(tmpdir)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "the handoff lost no connection: 0 refused"
    assert os.listdir(tmpdir) == []


def test_demo_without_handoff_is_still_the_first_demo() -> None:
    done = run_python("-m", "fdpass", "demo", "--help")
    assert done.returncode == 0 and "handoff" in done.stdout
    assert run_python("-m", "fdpass", "demo", "other").returncode == 2
