"""`python -m fdpass bench restart --quick`: one run, every mechanism side by
side.  fdpass's rows lose nothing (0 refused, 0 reset, 0 unanswered; with
version 2, no long-lived connection ended either), while the plain restart
under the same load does lose connections, so the bench can tell.  A
program hidden from PATH makes its row "not measured", naming the Debian
package.  The load's counting is checked against servers that refuse,
reset, end and answer on purpose."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fdpass import _restart_bench, _restart_server
from support import run_python

KEYS = [m.key for m in _restart_bench.mechanisms()]
TITLES = [m.title for m in _restart_bench.mechanisms()]
ROW = re.compile(r"^(?P<title>.{58}) +(?P<refused>\d+) +(?P<ended>\d+) +(?P<unanswered>\d+)"
                 r" +(?P<p99>\d+\.\d|-) +(?P<lived>\d+|-)$")
NOT_MEASURED = re.compile(r"^(?P<title>.{58}) not measured: (?P<reason>.+)$")


@pytest.fixture(scope="module")
def cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Where the tableflip server is built once for every run of the suite."""
    config_cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    return str(config_cache.mkdir("fdpass-restart-bench") if config_cache
               else tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory,
              cache: str) -> tuple[str, dict[str, Any], float]:
    path = tmp_path_factory.mktemp("restart") / "restart.json"
    started = time.monotonic()
    done = run_python("-m", "fdpass", "bench", "restart", "--quick", "--json", str(path),
                      "--plot", str(path.with_suffix(".png")), env={"XDG_CACHE_HOME": cache})
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert left_running() == [], "the bench left its servers running"
    return done.stdout, json.loads(path.read_text()), seconds


def left_running() -> list[str]:
    """The command lines of running processes that belong to a bench run
    (each names a file in the run's fdpass-restart-* directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:  # not a process, or gone
            continue
        if b"/fdpass-restart-" in command:
            found.append(command.replace(b"\0", b" ").decode(errors="replace"))
    return found


def rows_by_key(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in document["rows"]}


@pytest.mark.interop  # nginx, HAProxy, tableflip, systemd-socket-activate
def test_one_table_one_row_per_mechanism(quick_run: tuple[str, dict[str, Any], float]) -> None:
    out, document, seconds = quick_run
    assert seconds < 90, seconds
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("restart mechanism"))
    assert re.match(r"restart mechanism +refused +reset/ended +unanswered +p99 ms +old lived ms$",
                    lines[header]), lines[header]
    assert set(lines[header + 1]) == {"-"}
    table = lines[header + 2:header + 2 + len(KEYS)]
    shown = []
    for line in table:
        match = ROW.match(line) or NOT_MEASURED.match(line)
        assert match, line
        shown.append(match["title"].rstrip())
    assert shown == TITLES
    assert [row["key"] for row in document["rows"]] == KEYS
    for line, row in zip(table, document["rows"]):
        match = ROW.match(line)
        assert (match is not None) == row["measured"], (line, row)
        if match:
            assert (int(match["refused"]), int(match["ended"]), int(match["unanswered"])) == (
                row["refused"], row["reset_or_ended"], row["unanswered"])
            assert row["restarts"] == _restart_bench.QUICK.restarts
            assert row["answered"] > 0


@pytest.mark.interop  # nginx, HAProxy, tableflip, systemd-socket-activate
def test_the_plot_is_drawn_where_matplotlib_is(
        quick_run: tuple[str, dict[str, Any], float]) -> None:
    out, document, _ = quick_run
    drawn = [line for line in out.splitlines() if line.startswith(("plot: ", "no plot: "))]
    assert len(drawn) == 1, out
    if importlib.util.find_spec("matplotlib") is None:
        assert drawn[0] == "no plot: matplotlib is not installed (pip install matplotlib)"
    else:
        assert drawn[0].startswith("plot: ") and drawn[0].endswith(".png")
        assert Path(drawn[0][len("plot: "):]).read_bytes().startswith(b"\x89PNG")
    for row in document["rows"]:
        if row["measured"]:
            times = [t for t, _ in row["detail"]["latency_timeline"]]
            assert times == sorted(times) and len(times) > 5, row["key"]
            assert len(row["detail"]["restarts_at_s"]) == row["restarts"]


@pytest.mark.interop  # nginx, HAProxy, tableflip, systemd-socket-activate
def test_every_row_is_measured_or_names_what_is_missing(
        quick_run: tuple[str, dict[str, Any], float]) -> None:
    _, document, _ = quick_run
    for row in document["rows"]:
        if row["key"].startswith("reuseport") and os.geteuid() != 0 and not row["measured"]:
            assert "run it as root" in row["reason"], row  # the other one is measured
            continue
        # CI installs every program (.ci/run): a row not measured there fails.
        assert row["measured"], row


@pytest.mark.interop  # nginx, HAProxy, tableflip, systemd-socket-activate
def test_fdpass_loses_no_connection_and_no_request(
        quick_run: tuple[str, dict[str, Any], float]) -> None:
    rows = rows_by_key(quick_run[1])
    listeners = rows["fdpass-listeners"]
    assert listeners["measured"], listeners
    assert listeners["refused"] == 0, listeners
    assert listeners["detail"]["reset"] == 0, listeners
    assert listeners["detail"]["short_ended_early"] == 0, listeners
    assert listeners["unanswered"] == 0, listeners
    # Version 1 moves listeners only: the long-lived connections end, politely.
    assert listeners["detail"]["long_lived_ended"] > 0, listeners
    # Version 2 moves them too: nothing ends.
    moving = rows["fdpass-move"]
    assert moving["measured"], moving
    assert (moving["refused"], moving["reset_or_ended"], moving["unanswered"]) == (0, 0, 0), \
        moving
    assert moving["detail"]["server_notes"], moving  # "moved N kept 0" at each restart
    assert all(note.startswith("moved ") and note.endswith(" kept 0")
               for note in moving["detail"]["server_notes"]), moving


@pytest.mark.interop  # nginx, HAProxy, tableflip, systemd-socket-activate
def test_the_plain_restart_under_the_same_load_loses_connections(
        quick_run: tuple[str, dict[str, Any], float]) -> None:
    plain = rows_by_key(quick_run[1])["plain"]
    assert plain["measured"], plain
    assert plain["refused"] > 0, plain
    assert plain["reset_or_ended"] > 0, plain


def test_a_program_missing_from_path_is_not_measured(tmp_path: Path) -> None:
    path = tmp_path / "restart.json"
    done = run_python("-m", "fdpass", "bench", "restart", "--quick", "--json", str(path),
                      "--mechanism", "nginx", "--mechanism", "haproxy", "--mechanism", "systemd",
                      env={"PATH": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = rows_by_key(json.loads(path.read_text()))
    assert list(rows) == ["systemd", "haproxy", "nginx"]
    assert rows["nginx"]["reason"] == "no nginx on PATH (Debian package nginx)"
    assert rows["haproxy"]["reason"] == "no haproxy on PATH (Debian package haproxy)"
    assert rows["systemd"]["reason"] == \
        "no systemd-socket-activate on PATH (Debian package systemd)"
    assert not any(row["measured"] for row in rows.values())
    assert ("nginx binary upgrade (USR2, then QUIT)".ljust(58)
            + " not measured: no nginx on PATH (Debian package nginx)") in done.stdout


@pytest.mark.parametrize("arguments", [
    ["restart", "--workload", "stream"],
    ["--mechanism", "plain"],
    ["restart", "--mechanism", "no-such-mechanism"],
])
def test_arguments_that_do_not_go_together(arguments: list[str]) -> None:
    done = run_python("-m", "fdpass", "bench", *arguments)
    assert done.returncode == 2, done.stdout + done.stderr


# -- the load's counting, against servers that misbehave on purpose ---------------

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ng7\n"


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A listener on 127.0.0.1 whose every connection is handled by the
    function given, in a thread; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    threads = []

    def start(handle: Callable[[socket.socket], None]) -> int:
        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    continue
                with conn:
                    conn.settimeout(5)
                    try:
                        handle(conn)
                    except OSError:
                        pass
        thread = threading.Thread(target=accept)
        thread.start()
        threads.append(thread)
        port: int = listener.getsockname()[1]
        return port

    yield start
    stop.set()
    for thread in threads:
        thread.join(10)
    listener.close()


def load(port: int, seconds: float = 0.3) -> _restart_bench.Tally:
    plan = _restart_bench.Plan(restarts=0, pause=0, warmup=0, short_clients=2, long_lived=2,
                               interval=0.005)
    running = _restart_bench.Load(port, plan)
    running.start()
    time.sleep(seconds)
    running.stop()
    return running.tally


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def answer_all(conn: socket.socket) -> None:
    while read_request(conn):
        conn.sendall(ANSWER)


def test_the_load_counts_answers(server: Callable[[Callable[[socket.socket], None]], int]) -> None:
    tally = load(server(answer_all))
    assert tally.answered > 0
    assert (tally.refused, tally.reset, tally.ended_early, tally.long_lived_ended,
            tally.unanswered) == (0, 0, 0, 0, 0), tally


def test_the_load_counts_refusals() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        tally = load(unused.getsockname()[1], 0.1)
    assert tally.refused > 0 and tally.answered == 0, tally
    assert tally.unanswered == 0, tally  # no request was ever sent


def test_the_load_counts_resets(server: Callable[[Callable[[socket.socket], None]], int]) -> None:
    def reset(conn: socket.socket) -> None:
        read_request(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    tally = load(server(reset))
    assert tally.reset > 0 and tally.answered == 0, tally
    assert tally.unanswered == tally.reset, tally


def test_the_load_counts_connections_ended_before_the_answer(
        server: Callable[[Callable[[socket.socket], None]], int]) -> None:
    def end(conn: socket.socket) -> None:
        read_request(conn)  # and close: EOF, no answer

    tally = load(server(end))
    assert tally.ended_early > 0 and tally.long_lived_ended > 0, tally
    assert tally.unanswered == tally.ended_early + tally.long_lived_ended, tally


def test_the_load_counts_long_lived_connections_ended_politely(
        server: Callable[[Callable[[socket.socket], None]], int]) -> None:
    def once(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(ANSWER.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))

    tally = load(server(once))
    assert tally.long_lived_ended > 0 and tally.unanswered == 0, tally
    assert tally.ended_early == 0 and tally.reset == 0, tally


def test_a_connection_resumes_from_its_state() -> None:
    """What the old server moves with a connection: the request read and
    not answered, and the answer not yet sent, byte for byte."""
    a, b = socket.socketpair()
    with a, b:
        moved = _restart_server.Connection(a, b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n")
        resumed = _restart_server.Connection.resumed(a, moved.state())
        assert (resumed.inbuf, resumed.outbuf) == (moved.inbuf, moved.outbuf)
        empty = _restart_server.Connection.resumed(a, _restart_server.Connection(a).state())
        assert (empty.inbuf, empty.outbuf) == (b"", b"")


def test_percentile_and_old_lived() -> None:
    assert _restart_bench.percentile([], 0.99) is None
    assert _restart_bench.percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert _restart_bench.percentile([5.0, 1.0], 0.99) == 5.0
    stopped_first = _restart_bench.Restart(started=0.0, successor_ready=2.0, old_exited=1.0)
    assert stopped_first.old_lived == 0.0 and stopped_first.window_end == 2.0
    overlapped = _restart_bench.Restart(started=0.0, successor_ready=1.0, old_exited=1.5)
    assert overlapped.old_lived == 0.5 and overlapped.window_end == 1.5
