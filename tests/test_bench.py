"""`python -m fdpass bench --quick` runs every implementation and workload
and reports well-formed figures.  No timing is asserted: only that each
figure is a positive number and the ratios agree with the figures."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from fdpass import _bench
from support import run_python

ROW = re.compile(r"^  (?P<name>.+?)\s+(?P<us>\d+\.\d{3})\s+(?P<rate>[\d,]+)"
                 r"\s+(?P<floor>\d+\.\d\dx|-)\s+(?P<stdlib>\d+\.\d\dx|-)$")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    done = run_python("-m", "fdpass", "bench", "--quick", "--json", str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(Path(path).read_text())


def test_every_implementation_and_workload_reported(
    quick_run: tuple[str, dict[str, Any]]
) -> None:
    _, document = quick_run
    measured = {(r["workload"], r["implementation"]) for r in document["results"]}
    for w in _bench.WORKLOADS:
        for impl in _bench.IMPLEMENTATIONS:  # Perl included: the tests require it
            assert ((w.name, impl.name) in measured) == impl.supports(w), (w.name, impl.name)


def test_json_figures_are_consistent(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, document = quick_run
    assert document["quick"] is True
    assert document["repeats"] == 5
    assert {"cpu", "cpus", "system", "python", "fdpass"} <= set(document["machine"])
    floors = {r["workload"]: r for r in document["results"]
              if r["implementation"] == _bench.FLOOR}
    stdlib = {r["workload"]: r for r in document["results"]
              if r["implementation"] == _bench.BASELINE}
    for r in document["results"]:
        assert len(r["samples"]) == 5 and all(s > 0 for s in r["samples"])
        median = sorted(r["samples"])[2]
        assert r["us_per_fd"] == pytest.approx(median / r["descriptors"] * 1e6)
        assert r["fds_per_second"] == pytest.approx(r["descriptors"] / median)
        floor = floors.get(r["workload"])
        assert r["vs_floor"] == (pytest.approx(r["us_per_fd"] / floor["us_per_fd"])
                                 if floor else None)
        assert r["speedup_vs_stdlib"] == pytest.approx(
            stdlib[r["workload"]]["us_per_fd"] / r["us_per_fd"])


def test_table_rows_match_the_json(quick_run: tuple[str, dict[str, Any]]) -> None:
    out, document = quick_run
    rows = [m for m in map(ROW.match, out.splitlines()) if m]
    assert len(rows) == len(document["results"])
    for m, r in zip(rows, document["results"]):
        assert m["name"] == r["implementation"]
        assert float(m["us"]) == pytest.approx(r["us_per_fd"], abs=0.0005)
        assert int(m["rate"].replace(",", "")) == pytest.approx(r["fds_per_second"], abs=1)
    for w in _bench.WORKLOADS:
        assert re.search(rf"^{w.name}: [\d,]+ descriptors, .*; median of 5$", out, re.M)
    # Without --targets, what the figures mean, and not the project's own
    # targets: a "missed" there reads as a broken install.
    assert out.rstrip("\n").endswith(_bench.READING)
    assert "target" not in out and "missed" not in out
    assert len(document["targets"]) == len(_bench.TARGETS)


def test_targets_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    done = run_python("-m", "fdpass", "bench", "--quick", "--repeats", "1", "--targets",
                      "--workload", "stream", "--workload", "batch", "--json", str(path))
    assert done.returncode == 0, done.stderr
    targets = done.stdout.split("the project's targets", 1)[1].splitlines()[1:]
    wanted = [t for t in _bench.TARGETS if t.workload in ("stream", "batch")]
    assert len(targets) == len(wanted) == 4
    assert all(re.match(r"  [\w-]+: .* \(target [<>]= [\d.]+x\): (met|missed)$", t)
               for t in targets)
    assert json.loads(path.read_text())["targets"] == [t.strip() for t in targets]
    assert _bench.READING not in done.stdout


def test_bad_arguments() -> None:
    for args, words in ((["--repeats", "0"], "--repeats must be at least 1"),
                        (["--workload", "nope"], "unknown workload 'nope': choose from "
                         + ", ".join(w.name for w in _bench.WORKLOADS))):
        done = run_python("-m", "fdpass", "bench", *args)
        assert done.returncode == 2
        assert words in done.stderr


def test_help_names_every_workload() -> None:
    done = run_python("-m", "fdpass", "bench", "--help")
    assert done.returncode == 0
    help_text = re.sub(r"-\s+", "-", " ".join(done.stdout.split()))  # argparse wraps at hyphens
    assert all(w.name in help_text for w in _bench.WORKLOADS)


def test_one_workload_only(tmp_path: Path) -> None:
    path = tmp_path / "batch.json"
    done = run_python("-m", "fdpass", "bench", "--quick", "--repeats", "1",
                      "--workload", "batch", "--json", str(path))
    assert done.returncode == 0, done.stderr
    document = json.loads(path.read_text())
    assert {r["workload"] for r in document["results"]} == {"batch"}


class Broken(_bench.Implementation):
    """A receiver that fails at once, leaving the sender blocked."""

    name = "broken"

    def send(self, sock: socket.socket, fd: int, messages: int, w: _bench.Workload) -> None:
        for _ in range(messages):
            sock.sendall(b"x" * 65536)

    def recv(self, sock: socket.socket, messages: int, w: _bench.Workload) -> None:
        raise RuntimeError("this receiver is broken on purpose")


def test_a_failing_worker_is_reported_not_waited_for(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The harness notices a dead worker within moments, kills the other
    one, reaps both and closes everything it opened (the leak fixture)."""
    started = time.monotonic()
    with pytest.raises(_bench.BenchError, match=r"broken / stream: worker failed"):
        _bench.run_once(Broken(), _bench.WORKLOADS[0], 1000)
    assert time.monotonic() - started < 30
    assert "this receiver is broken on purpose" in capfd.readouterr().err
