"""`python -m fdpass bench restart`: one small server replaced several times
under the same load by every restart mechanism this machine has, side by
side, in one run.

The server answers a small subset of HTTP/1.1 (fdpass/_restart_server.py),
which nginx, HAProxy and Go's net/http serve themselves: every row is a
server being replaced, none a proxy in front of one.  The load, on
127.0.0.1 only, is a bounded pool of clients opening short connections as
fast as they can (connect, one request, the answer, close) and long-lived
connections sending a request every few milliseconds; a long-lived
connection that the server ends counts as ended early, and the client opens
another.  Each answer names the generation that gave it, so a successor is
"ready" when it first answers.  Run as root, the whole bench runs in a
network namespace of its own (`unshare --net`), where
net.ipv4.tcp_migrate_req can be set without touching the host's."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import hashlib
import importlib
import json
import math
import os
import queue
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any


PACKAGE = Path(__file__).resolve().parent
#: Set in the environment of the bench re-run in its own network namespace.
NETNS_VARIABLE = "FDPASS_RESTART_BENCH_NETNS"
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
#: Seconds a client waits to connect, and then for an answer.
CONNECT_TIMEOUT = 5.0
ANSWER_TIMEOUT = 5.0
#: Seconds any one step of a restart may take before the row fails.
STEP_TIMEOUT = 20.0
#: The most connections the load opens in one row, whatever the time.
MAX_CONNECTIONS = 2_000_000


@dataclass(frozen=True)
class Plan:
    """How hard and how long each mechanism is loaded."""
    restarts: int
    pause: float          # seconds of steady load after each restart
    warmup: float
    short_clients: int    # each opens connections one after another
    long_lived: int       # connections, each a request every `interval`
    interval: float


FULL = Plan(restarts=5, pause=1.5, warmup=1.0, short_clients=32, long_lived=32,
            interval=0.005)
QUICK = Plan(restarts=3, pause=0.4, warmup=0.3, short_clients=16, long_lived=8,
             interval=0.005)


# -- the load ------------------------------------------------------------------

@dataclass
class Tally:
    """What the clients saw."""
    answered: int = 0
    refused: int = 0            # ECONNREFUSED, or no connection within the timeout
    reset: int = 0              # ECONNRESET or EPIPE on an open connection
    ended_early: int = 0        # EOF before an answer, on a short connection
    long_lived_ended: int = 0   # a long-lived connection the server ended
    unanswered: int = 0         # a request sent and never answered
    timeouts: int = 0           # of the unanswered: no answer within the timeout
    other_errors: Counter[str] = field(default_factory=Counter)
    connections: int = 0        # attempted


class Load:
    """The clients, on an asyncio loop in a thread of their own: they start
    with start() and stop, finishing what they are doing, with stop()."""

    def __init__(self, port: int, plan: Plan) -> None:
        self.port = port
        self.plan = plan
        self.tally = Tally()
        #: (start, seconds) of every answered request, by the monotonic clock.
        self.samples: list[tuple[float, float]] = []
        #: When each generation's tag was first answered.
        self.first_answer: dict[str, float] = {}
        self.started = 0.0  # when start() was called
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._failed: BaseException | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(CONNECT_TIMEOUT + ANSWER_TIMEOUT + 5)
        if self._thread.is_alive():
            raise RuntimeError("the load did not stop")
        if self._failed is not None:
            raise RuntimeError(f"the load failed: {self._failed!r}") from self._failed

    def answered_since(self, tag: str) -> float | None:
        return self.first_answer.get(tag)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported by stop()
            self._failed = error

    async def _main(self) -> None:
        clients = [self._short() for _ in range(self.plan.short_clients)]
        clients += [self._long_lived() for _ in range(self.plan.long_lived)]
        await asyncio.gather(*clients)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        self.tally.connections += 1
        if self.tally.connections > MAX_CONNECTIONS:
            raise RuntimeError(f"more than {MAX_CONNECTIONS} connections in one row")
        try:
            return await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), CONNECT_TIMEOUT)
        except (ConnectionRefusedError, asyncio.TimeoutError):
            self.tally.refused += 1
        except ConnectionResetError:
            self.tally.reset += 1
        except OSError as error:
            self.tally.other_errors[f"connect: {error.strerror or error!r}"] += 1
        await asyncio.sleep(0.001)  # no hot loop while nobody listens
        return None

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        started: float, long_lived: bool) -> bool:
        """One request and its answer; False when the connection is over
        (the failure counted)."""
        try:
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT)
            length, closing = _parse_head(head)
            body = await asyncio.wait_for(reader.readexactly(length), ANSWER_TIMEOUT)
        except (ConnectionResetError, BrokenPipeError):
            self.tally.reset += 1
        except asyncio.IncompleteReadError:
            if long_lived:
                self.tally.long_lived_ended += 1
            else:
                self.tally.ended_early += 1
        except asyncio.TimeoutError:
            self.tally.timeouts += 1
        except OSError as error:
            self.tally.other_errors[f"exchange: {error.strerror or error!r}"] += 1
        else:
            now = time.monotonic()
            self.samples.append((started, now - started))
            self.first_answer.setdefault(body.strip().decode("ascii", "replace"), now)
            self.tally.answered += 1
            if closing and long_lived:
                self.tally.long_lived_ended += 1  # politely, but ended all the same
            return not closing
        self.tally.unanswered += 1
        return False

    async def _short(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            connected = await self._connect()
            if connected is None:
                continue
            reader, writer = connected
            await self._exchange(reader, writer, started, long_lived=False)
            writer.close()

    async def _long_lived(self) -> None:
        while not self._stopping:
            connected = await self._connect()
            if connected is None:
                continue
            reader, writer = connected
            try:
                while not self._stopping:
                    if reader.at_eof() or reader.exception() is not None:
                        # Ended while idle: a careful client sees it before reusing.
                        if isinstance(reader.exception(), ConnectionResetError):
                            self.tally.reset += 1
                        else:
                            self.tally.long_lived_ended += 1
                        break
                    if not await self._exchange(reader, writer, time.monotonic(),
                                                long_lived=True):
                        break
                    await asyncio.sleep(self.plan.interval)
            finally:
                writer.close()


def _parse_head(head: bytes) -> tuple[int, bool]:
    """An answer's Content-Length, and whether it says Connection: close."""
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200 "):
        raise OSError(0, f"answered {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    return int(headers.get("content-length", "0")), headers.get("connection") == "close"


# -- processes -------------------------------------------------------------------

def program(name: str) -> str | None:
    """name's path on PATH (only there: a test hides a program by PATH)."""
    return shutil.which(name)


class ExitWatch:
    """The moment a process (any, not only a child) exits, seen through its
    pidfd by a thread; a child that is not ours to wait for (one the
    subreaper inherited) is reaped too."""

    def __init__(self, pid: int, reap: bool) -> None:
        self.pid = pid
        self.exited: float | None = None
        self._done = threading.Event()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None
            self.exited = time.monotonic()
            self._done.set()
            return
        threading.Thread(target=self._watch, args=(reap,), daemon=True).start()

    def _watch(self, reap: bool) -> None:
        assert self._pidfd is not None
        try:
            select.select([self._pidfd], [], [])
            self.exited = time.monotonic()
            if reap:
                try:
                    os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass  # not ours after all
        finally:
            os.close(self._pidfd)
            self._done.set()

    def wait(self, timeout: float) -> float | None:
        self._done.wait(timeout)
        return self.exited


class Processes:
    """The processes of one row: each started with its stdout read line by
    line into one queue (the successors that inherit it write there too),
    every one of them ended by close()."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.lines: queue.Queue[str] = queue.Queue()
        self.notes: list[str] = []  # what the servers said besides "ready"
        self.children: list[subprocess.Popen[bytes]] = []
        self.pids: set[int] = set()  # every pid seen, children or not
        self._readers: list[threading.Thread] = []

    def start(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(PACKAGE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]))
        log = open(self.workdir / "stderr.log", "ab")
        try:
            child = subprocess.Popen(list(command), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=log, cwd=self.workdir,
                                     env=environment)
        finally:
            log.close()
        self.children.append(child)
        self.pids.add(child.pid)
        assert child.stdout is not None
        reader = threading.Thread(target=self._read, args=(child.stdout,), daemon=True)
        reader.start()
        self._readers.append(reader)
        return child

    def python(self, *arguments: str) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-m", "fdpass._restart_server", *arguments])

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for line in stream:
                self.lines.put(line.decode("utf-8", "replace").strip())

    def ready(self) -> int:
        """The pid of the next server to say "ready PID"."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise TimeoutError("no server said it was ready") from None
            words = line.split()
            if words[:1] == ["ready"] and len(words) == 2:
                pid = int(words[1])
                self.pids.add(pid)
                return pid
            self.notes.append(line)

    def serving(self, pid: int) -> int:
        """pid serves now: it is ended with the row, whoever started it."""
        self.pids.add(pid)
        return pid

    def said(self) -> str:
        """The end of what the servers wrote to stderr, for a failure."""
        try:
            text = (self.workdir / "stderr.log").read_text(errors="replace").strip()
        except FileNotFoundError:
            return ""
        return f"; the servers said: ...{text[-400:]}" if text else ""

    def watch(self, pid: int) -> ExitWatch:
        return ExitWatch(pid, reap=all(child.pid != pid for child in self.children))

    def close(self) -> None:
        """End every process of the row and their children (nginx's
        workers): politely, then not."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [pid for pid in _with_descendants(self.pids) if _alive(pid)]
            for pid in alive:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while any(_alive(pid) for pid in alive) and time.monotonic() < deadline:
                time.sleep(0.02)
        for child in self.children:
            child.wait(5)
        for reader in self._readers:
            reader.join(5)
        _reap_orphans()
        while not self.lines.empty():
            line = self.lines.get()
            if not line.startswith("ready "):
                self.notes.append(line)


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _with_descendants(pids: set[int]) -> set[int]:
    found = set(pids)
    todo = list(pids)
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    for child in map(int, children.read().split()):
                        if child not in found:
                            found.add(child)
                            todo.append(child)
            except FileNotFoundError:
                pass
    return found


def _reap_orphans() -> None:
    """Reap what the subreaper inherited and nobody waited for."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _stop_on_sigterm() -> None:
    """SIGTERM, or the death of the process that ran this bench in its
    namespace, ends the run through its cleanups: no server outlives it."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    if os.environ.get(NETNS_VARIABLE) == "1" and sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _subreaper() -> None:
    """Become the reaper of what the servers leave behind (nginx's daemon,
    tableflip's successors), so every process is seen to exit and reaped."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def probe(port: int, timeout: float = STEP_TIMEOUT) -> str:
    """The tag of the generation that answers one request, trying until
    one does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
                client.sendall(REQUEST)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = client.recv(4096)
                    if not chunk:
                        raise ConnectionResetError("no answer")
                    answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                length, _ = _parse_head(head + b"\r\n\r\n")
                while len(body) < length:
                    chunk = client.recv(4096)
                    if not chunk:
                        raise ConnectionResetError("no answer")
                    body += chunk
                return body.strip().decode("ascii", "replace")
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answers on port {port}") from None
            time.sleep(0.02)


# -- the mechanisms ----------------------------------------------------------------

class NotMeasured(Exception):
    """Why a row cannot be measured here."""


class Mechanism:
    """One way of restarting: start() brings generation 0 up; restart()
    replaces the serving process and returns once the replacement is under
    way, whose tag the successor will answer with; the bench watches the
    old process's pid until it exits."""

    key = ""
    title = ""
    #: (program, Debian package) that the row needs.
    needs: Sequence[tuple[str, str]] = ()

    def check(self, setting: Setting) -> None:
        """Raise NotMeasured saying why this row cannot run here."""
        for name, package in self.needs:
            if program(name) is None:
                raise NotMeasured(f"no {name} on PATH (Debian package {package})")

    def start(self, procs: Processes, tag_file: Path) -> int:
        """Generation 0: its serving process's pid."""
        raise NotImplementedError

    def restart(self, procs: Processes, tag_file: Path, generation: int, old: int,
                load: Load) -> int:
        """Replace old by generation; the new serving pid."""
        raise NotImplementedError

    def prepare(self, setting: Setting) -> None:
        """Set what the row needs, before it starts."""

    def finish(self, setting: Setting) -> None:
        """Undo prepare()."""


class Plain(Mechanism):
    key, title = "plain", "plain restart (close, then bind again)"

    def start(self, procs: Processes, tag_file: Path) -> int:
        procs.python("serve", str(tag_file), "--bind", str(procs.port))
        return procs.ready()

    def restart(self, procs: Processes, tag_file: Path, generation: int, old: int,
                load: Load) -> int:
        watch = procs.watch(old)
        os.kill(old, signal.SIGTERM)
        if watch.wait(STEP_TIMEOUT) is None:
            raise TimeoutError("the old server did not stop")
        return self.start(procs, tag_file)


class ReusePort(Mechanism):
    """The successor binds beside the old process with SO_REUSEPORT; then
    the old one closes its listener, and the connections still queued on
    it are reset unless net.ipv4.tcp_migrate_req moves them."""

    def __init__(self, migrate: int) -> None:
        self.migrate = migrate
        self.key = f"reuseport-migrate-{'on' if migrate else 'off'}"
        self.title = f"SO_REUSEPORT overlap, tcp_migrate_req={migrate}"
        self._was: str | None = None

    def check(self, setting: Setting) -> None:
        if not MIGRATE_REQ.exists():
            if self.migrate:
                raise NotMeasured("this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+)")
            return
        if not setting.own_netns and MIGRATE_REQ.read_text().strip() != str(self.migrate):
            raise NotMeasured(
                f"the host has net.ipv4.tcp_migrate_req={MIGRATE_REQ.read_text().strip()} "
                "and the bench changes no host setting: run it as root, and it sets "
                "its own in a network namespace of its own (unshare, Debian util-linux)")

    def prepare(self, setting: Setting) -> None:
        if setting.own_netns and MIGRATE_REQ.exists():
            self._was = MIGRATE_REQ.read_text().strip()
            MIGRATE_REQ.write_text(f"{self.migrate}\n")

    def finish(self, setting: Setting) -> None:
        if self._was is not None:
            MIGRATE_REQ.write_text(f"{self._was}\n")

    def start(self, procs: Processes, tag_file: Path) -> int:
        procs.python("serve", str(tag_file), "--bind", str(procs.port), "--reuseport")
        return procs.ready()

    def restart(self, procs: Processes, tag_file: Path, generation: int, old: int,
                load: Load) -> int:
        new = self.start(procs, tag_file)
        os.kill(old, signal.SIGTERM)
        return new



#: systemd-socket-activate gives its child a fresh environment: what an
#: interpreter run under a sanitizer (tox -e sanitize) or from a chosen
#: path needs its children to keep.
KEPT_ENVIRONMENT = [f"--setenv={name}" for name in (
    "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "PYTHONMALLOC", "PYTHONPATH")
    if name in os.environ]

class Systemd(Mechanism):
    """systemd-socket-activate opens the listener and execs a supervisor
    that holds it, as PID 1 does, and restarts the service under it on
    SIGHUP: stop, then start, as `systemctl restart` does.  Meanwhile
    connections wait in the listener's queue."""

    key, title = "systemd", "systemd-style inheritance (socket activation)"
    needs = (("systemd-socket-activate", "systemd"),)

    def start(self, procs: Processes, tag_file: Path) -> int:
        self.supervisor = procs.start([
            program("systemd-socket-activate") or "", "-l", f"127.0.0.1:{procs.port}",
            "--fdname=http", *KEPT_ENVIRONMENT, "--", sys.executable, "-m",
            "fdpass._restart_server", "supervise", str(tag_file)])
        probe(procs.port)  # the activator waits for a first connection
        return procs.ready()

    def restart(self, procs: Processes, tag_file: Path, generation: int, old: int,
                load: Load) -> int:
        os.kill(self.supervisor.pid, signal.SIGHUP)
        return procs.ready()


class Fdpass(Mechanism):
    """Each generation offers its listener at a path of its own; the
    successor takes it, says ready, and the old process stops accepting,
    answers what it accepted and exits; with move, it first moves its open
    connections, with what it read of them, to the successor."""

    def __init__(self, move: bool) -> None:
        self.move = move
        self.key = "fdpass-move" if move else "fdpass-listeners"
        self.title = ("fdpass.handoff moving live connections too (version 2)" if move
                      else "fdpass.handoff moving listeners (version 1)")

    def _flags(self) -> list[str]:
        return ["--move"] if self.move else []

    def start(self, procs: Processes, tag_file: Path) -> int:
        procs.python("serve", str(tag_file), "--bind", str(procs.port),
                     "--offer", "offer-0", *self._flags())
        return procs.ready()

    def restart(self, procs: Processes, tag_file: Path, generation: int, old: int,
                load: Load) -> int:
        procs.python("serve", str(tag_file), "--take", f"offer-{generation - 1}",
                     "--offer", f"offer-{generation}", *self._flags())
        return procs.ready()


class HAProxy(Mechanism):
    """A new haproxy takes the old one's listeners over its stats socket
    (`-x`, `expose-fd listeners`) and tells it to finish (`-sf`)."""

    key, title = "haproxy", "HAProxy seamless reload (-x, expose-fd listeners)"
    needs = (("haproxy", "haproxy"),)

    def _config(self, procs: Processes, tag_file: Path) -> Path:
        config = procs.workdir / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=procs.port,
                                                tag=tag_file.read_text().strip()))
        return config

    def start(self, procs: Processes, tag_file: Path) -> int:
        config = self._config(procs, tag_file)
        return procs.start([program("haproxy") or "", "-db", "-f", str(config)]).pid

    def restart(self, procs: Processes, tag_file: Path, generation: int, old: int,
                load: Load) -> int:
        config = self._config(procs, tag_file)
        return procs.start([program("haproxy") or "", "-db", "-f", str(config),
                            "-x", "stats.sock", "-sf", str(old)]).pid


HAPROXY_CONFIG = """\
global
    stats socket unix@stats.sock mode 600 level admin expose-fd listeners
    nbthread 1
    hard-stop-after 20s
defaults
    mode http
    timeout client 60s
    timeout connect 10s
    timeout server 10s
    timeout http-keep-alive 60s
frontend bench
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain lf-string "{tag}\\n"
"""


class Nginx(Mechanism):
    """nginx's binary upgrade: USR2 makes the master start a new master
    (the same binary, the listeners inherited); once the new one answers,
    QUIT stops the old master gracefully.  nginx serves the protocol
    itself (`return 200`), one worker, as each Python row serves it."""

    key, title = "nginx", "nginx binary upgrade (USR2, then QUIT)"
    needs = (("nginx", "nginx"),)

    def _config(self, procs: Processes, tag_file: Path) -> Path:
        prefix = procs.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        config = prefix / "nginx.conf"
        user = "user root root;\n" if os.geteuid() == 0 else ""
        config.write_text(NGINX_CONFIG.format(user=user, prefix=prefix, port=procs.port,
                                              tag=tag_file.read_text().strip()))
        return config

    def _pid(self, procs: Processes, not_pid: int = 0) -> int:
        path = procs.workdir / "nginx" / "nginx.pid"
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                pid = int(path.read_text().strip())
            except (FileNotFoundError, ValueError):
                pid = 0
            if pid and pid != not_pid:
                return pid
            time.sleep(0.01)
        raise TimeoutError("nginx wrote no pid file")

    def start(self, procs: Processes, tag_file: Path) -> int:
        config = self._config(procs, tag_file)
        nginx = procs.start([program("nginx") or "", "-p", str(config.parent), "-c",
                             str(config), "-e", str(config.parent / "error.log")])
        if nginx.wait(STEP_TIMEOUT) != 0:  # it has made itself a daemon
            raise RuntimeError("nginx did not start: see its error.log")
        return self._pid(procs)

    def restart(self, procs: Processes, tag_file: Path, generation: int, old: int,
                load: Load) -> int:
        self._config(procs, tag_file)
        os.kill(old, signal.SIGUSR2)
        new = self._pid(procs, not_pid=old)
        wait_for(lambda: load.answered_since(tag_file.read_text().strip()) is not None,
                 "the new nginx answered nothing")
        os.kill(old, signal.SIGQUIT)
        return new


NGINX_CONFIG = """\
{user}daemon on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_shutdown_timeout 20s;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port} backlog=511;
        location / {{ default_type text/plain; return 200 "{tag}\\n"; }}
    }}
}}
"""


class Tableflip(Mechanism):
    """Go's github.com/cloudflare/tableflip: on SIGHUP the process starts
    its successor with the listener inherited, waits for its Ready(), and
    then shuts its net/http server down (idle connections closed, the
    requests in progress finished)."""

    key, title = "tableflip", "Go tableflip (Upgrade, Ready, Shutdown)"
    needs = (("go", "golang-go"),)
    SOURCE = PACKAGE / "_restart_tableflip.go"
    GOPATH = Path("/usr/share/gocode")

    def check(self, setting: Setting) -> None:
        super().check(setting)
        if not (self.GOPATH / "src/github.com/cloudflare/tableflip").is_dir():
            raise NotMeasured(f"no tableflip in {self.GOPATH} "
                              "(Debian package golang-github-cloudflare-tableflip-dev)")
        self.binary = build_tableflip(program("go") or "", self.SOURCE, self.GOPATH)

    def start(self, procs: Processes, tag_file: Path) -> int:
        self.first = procs.start([str(self.binary), f"127.0.0.1:{procs.port}",
                                  str(tag_file)])
        return procs.ready()

    def restart(self, procs: Processes, tag_file: Path, generation: int, old: int,
                load: Load) -> int:
        os.kill(old, signal.SIGHUP)
        return procs.ready()


def cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fdpass"


def build_tableflip(go: str, source: Path, gopath: Path) -> Path:
    """The tableflip server, built offline from Debian's Go sources (no
    module download) once per source and Go version, kept in the cache."""
    version = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60,
                             check=True).stdout
    library = b"".join(path.read_bytes() for path in sorted(
        (gopath / "src/github.com/cloudflare/tableflip").glob("*.go")))
    key = hashlib.sha256(source.read_bytes() + library + version.encode()).hexdigest()[:16]
    directory = cache_directory()
    binary = directory / f"restart-tableflip-{key}"
    if binary.exists():
        return binary
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        environment = {"PATH": os.environ.get("PATH", ""), "HOME": tmp,
                       "GOCACHE": f"{tmp}/cache", "GOPATH": str(gopath), "GOPROXY": "off",
                       "GO111MODULE": "off", "GOFLAGS": "", "CGO_ENABLED": "0",
                       "GOTOOLCHAIN": "local"}
        building = directory / f".{binary.name}.{os.getpid()}"
        # go build skips files whose names start with "_": a copy, named main.go.
        shutil.copyfile(source, f"{tmp}/main.go")
        done = subprocess.run([go, "build", "-o", str(building), f"{tmp}/main.go"],
                              env=environment, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise NotMeasured(f"go build of the tableflip server failed: {done.stderr.strip()}")
    os.replace(building, binary)  # whole, even when several runs build at once
    return binary


def mechanisms() -> list[Mechanism]:
    return [Plain(), ReusePort(0), ReusePort(1), Systemd(), HAProxy(), Nginx(), Tableflip(),
            Fdpass(move=False), Fdpass(move=True)]


# -- one row ---------------------------------------------------------------------

@dataclass
class Setting:
    own_netns: bool


@dataclass
class Restart:
    started: float
    successor_ready: float
    old_exited: float

    @property
    def window_end(self) -> float:
        return max(self.successor_ready, self.old_exited)

    @property
    def old_lived(self) -> float:
        """Seconds the old process lived once its successor answered."""
        return max(self.old_exited - self.successor_ready, 0.0)


@dataclass
class Row:
    key: str
    mechanism: str
    measured: bool
    reason: str = ""
    refused: int = 0
    reset_or_ended: int = 0
    unanswered: int = 0
    p99_ms: float | None = None
    old_lived_ms: float | None = None
    restarts: int = 0
    answered: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def wait_for(condition: Callable[[], bool], failure: str,
             timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(failure)
        time.sleep(0.002)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def measure(mechanism: Mechanism, plan: Plan, setting: Setting, out: IO[str]) -> Row:
    try:
        mechanism.check(setting)
    except NotMeasured as why:
        return Row(mechanism.key, mechanism.title, measured=False, reason=str(why))
    with tempfile.TemporaryDirectory(prefix="fdpass-restart-") as tmp:
        procs = Processes(Path(tmp), free_port())
        try:
            with ExitStack() as stack:  # undone in reverse: the load, the setting, the servers
                stack.callback(procs.close)
                mechanism.prepare(setting)
                stack.callback(mechanism.finish, setting)
                load, restarts = replace(mechanism, procs, plan, stack, out)
        except (OSError, RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}{procs.said()}") from error
    return row_of(mechanism, load, restarts, procs.notes)


def replace(mechanism: Mechanism, procs: Processes, plan: Plan, stack: ExitStack,
            out: IO[str]) -> tuple[Load, list[Restart]]:
    """Generation 0 under the load, then each restart in turn."""
    tag_file = procs.workdir / "tag"
    tag_file.write_text("g0\n")
    serving = procs.serving(mechanism.start(procs, tag_file))
    if probe(procs.port) != "g0":
        raise RuntimeError("generation 0 does not answer as g0")
    load = Load(procs.port, plan)
    load.start()
    stack.callback(load.stop)
    time.sleep(plan.warmup)
    restarts = []
    for generation in range(1, plan.restarts + 1):
        tag = f"g{generation}"
        tag_file.write_text(tag + "\n")
        watch = procs.watch(serving)
        started = time.monotonic()
        serving = procs.serving(mechanism.restart(procs, tag_file, generation, serving, load))
        wait_for(lambda: load.answered_since(tag) is not None,
                 f"generation {generation} answered nothing")
        exited = watch.wait(STEP_TIMEOUT)
        if exited is None:
            raise TimeoutError(f"the server before generation {generation} did not exit")
        ready = load.answered_since(tag)
        assert ready is not None
        restarts.append(Restart(started, ready, exited))
        print(f"  {mechanism.key}: restart {generation} of {plan.restarts}", file=out)
        time.sleep(plan.pause)
    return load, restarts


def row_of(mechanism: Mechanism, load: Load, restarts: list[Restart],
           notes: list[str]) -> Row:
    tally = load.tally
    in_window = [seconds for started, seconds in load.samples
                 if any(r.started <= started <= r.window_end for r in restarts)]
    p99 = percentile(in_window, 0.99)
    return Row(
        mechanism.key, mechanism.title, measured=True,
        refused=tally.refused,
        reset_or_ended=tally.reset + tally.ended_early + tally.long_lived_ended,
        unanswered=tally.unanswered,
        p99_ms=None if p99 is None else p99 * 1000,
        old_lived_ms=max(r.old_lived for r in restarts) * 1000,
        restarts=len(restarts), answered=tally.answered,
        detail={"reset": tally.reset, "short_ended_early": tally.ended_early,
                "long_lived_ended": tally.long_lived_ended, "timeouts": tally.timeouts,
                "other_errors": dict(tally.other_errors),
                "requests_in_windows": len(in_window),
                "p99_ms_overall": _ms(percentile([s for _, s in load.samples], 0.99)),
                "old_lived_ms": [round(r.old_lived * 1000, 1) for r in restarts],
                "window_ms": [round((r.window_end - r.started) * 1000, 1) for r in restarts],
                "server_notes": [note for note in notes if note],
                "restarts_at_s": [round(r.started - load.started, 3) for r in restarts],
                "latency_timeline": timeline(load)})


#: The width of a time step in the latency timeline, in seconds.
TIMELINE_STEP = 0.1


def timeline(load: Load) -> list[list[float]]:
    """[seconds since the load started, p99 ms of the requests started in
    that step] for every step in which requests were answered."""
    steps: dict[int, list[float]] = {}
    for started, seconds in load.samples:
        steps.setdefault(int((started - load.started) / TIMELINE_STEP), []).append(seconds)
    return [[round(step * TIMELINE_STEP, 1), round((percentile(values, 0.99) or 0) * 1000, 2)]
            for step, values in sorted(steps.items())]


def plot(rows: Sequence[Row], path: str) -> str:
    """Draw each measured row's latency timeline into path (matplotlib, if
    installed: never needed otherwise); what was done, in words."""
    try:
        pyplot: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    figure, axes = pyplot.subplots(figsize=(11, 5.5))
    for row in rows:
        if row.measured:
            points = row.detail["latency_timeline"]
            axes.plot([t for t, _ in points], [ms for _, ms in points], label=row.mechanism,
                      linewidth=1)
    for at in _restart_times(rows):
        axes.axvline(at, color="grey", linestyle=":", linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("seconds since the load started (dotted: the restarts, on average)")
    axes.set_ylabel(f"p99 latency per {TIMELINE_STEP * 1000:.0f} ms, ms")
    axes.set_title("python -m fdpass bench restart: latency through the restarts")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return f"plot: {path}"


def _restart_times(rows: Sequence[Row]) -> list[float]:
    measured = [row.detail["restarts_at_s"] for row in rows if row.measured]
    return [sum(times) / len(times) for times in zip(*measured)] if measured else []


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# -- the run ---------------------------------------------------------------------

def table(rows: Sequence[Row]) -> str:
    header = (f"{'restart mechanism':<58} {'refused':>7} {'reset/ended':>11} "
              f"{'unanswered':>10} {'p99 ms':>8} {'old lived ms':>12}")
    lines = [header, "-" * len(header)]
    for row in rows:
        if not row.measured:
            lines.append(f"{row.mechanism:<58} not measured: {row.reason}")
            continue
        p99 = "-" if row.p99_ms is None else f"{row.p99_ms:.1f}"
        lived = "-" if row.old_lived_ms is None else f"{row.old_lived_ms:.0f}"
        lines.append(f"{row.mechanism:<58} {row.refused:>7} {row.reset_or_ended:>11} "
                     f"{row.unanswered:>10} {p99:>8} {lived:>12}")
    return "\n".join(lines)


def own_network_namespace() -> bool:
    """In the namespace this bench made for itself: bring loopback up."""
    if os.environ.get(NETNS_VARIABLE) != "1":
        return False
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))
    return True


def in_own_namespace(argv: Sequence[str]) -> int | None:
    """As root, run this bench again in a network namespace of its own and
    return its exit status; None when it cannot (or does already)."""
    if os.environ.get(NETNS_VARIABLE) or os.geteuid() != 0:
        return None
    unshare = program("unshare")
    if unshare is None or subprocess.run([unshare, "--net", "true"], capture_output=True,
                                         timeout=60).returncode != 0:
        return None
    environment = dict(os.environ, **{NETNS_VARIABLE: "1"})
    return subprocess.run([unshare, "--net", "--", sys.executable, "-m", "fdpass", "bench",
                           "restart", *argv], env=environment).returncode


def run(quick: bool = False, json_path: str | None = None,
        only: Sequence[str] = (), plot_path: str | None = None) -> int:
    argv = [*(["--quick"] if quick else []), *(["--json", json_path] if json_path else []),
            *[arg for key in only for arg in ("--mechanism", key)],
            *(["--plot", plot_path] if plot_path else [])]
    status = in_own_namespace(argv)
    if status is not None:
        return status
    _stop_on_sigterm()
    from fdpass._bench import machine  # the same facts as the other bench

    plan = QUICK if quick else FULL
    setting = Setting(own_netns=own_network_namespace())
    _subreaper()
    info = machine()
    print(f"fdpass {info['fdpass']} restart bench on {info['cpu']} ({info['cpus']} CPUs), "
          f"{info['system']}, {info['python']}")
    network = ("a network namespace of its own" if setting.own_netns
               else "the host's network (not root: no namespace of its own)")
    print(f"{'quick run' if quick else 'full run'}: {plan.restarts} restarts per mechanism, "
          f"{plan.short_clients} clients opening short connections, {plan.long_lived} "
          f"long-lived connections (a request every {plan.interval * 1000:g} ms), "
          f"on 127.0.0.1 in {network}")
    rows = []
    for mechanism in mechanisms():
        if only and mechanism.key not in only:
            continue
        print(f"{mechanism.title} ...", file=sys.stderr)
        try:
            rows.append(measure(mechanism, plan, setting, sys.stderr))
        except (OSError, RuntimeError, TimeoutError) as error:
            rows.append(Row(mechanism.key, mechanism.title, measured=False,
                            reason=f"failed: {error}"))
    print()
    print(table(rows))
    print()
    print("refused: connections refused (or not accepted within "
          f"{CONNECT_TIMEOUT:g} s); reset/ended: connections reset, or ended by the server "
          "before their answer or (long-lived) before the client closed them; unanswered: "
          "requests sent and never answered; p99: of the requests started during the "
          "restarts; old lived: the longest an old process ran on after its successor "
          "first answered")
    if plot_path:
        print(plot(rows, plot_path))
    if json_path:
        document = {"machine": info, "quick": quick, "plan": asdict(plan),
                    "own_network_namespace": setting.own_netns,
                    "rows": [asdict(row) for row in rows]}
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    failed = [row for row in rows if not row.measured and row.reason.startswith("failed")]
    return 1 if failed else 0
