"""Wire compatibility with HAProxy, both ways, as at a reload: fdpass takes a
real HAProxy's listening sockets over its stats socket (`expose-fd
listeners`, the `_getsocks` command) with the docs'
take_haproxy_listeners, and hands listening sockets to a new `haproxy -x`,
serving `_getsocks` as an old HAProxy does (src/cli.c and src/sock.c in
HAProxy's source define the format)."""

from __future__ import annotations

import ast
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytest

import fdpass
from support import REPOSITORY, doc_blocks, find_peer

pytestmark = pytest.mark.interop

PORTING = REPOSITORY / "docs" / "porting.md"


def docs_recipe(heading: str) -> dict[str, Any]:
    """The definitions (imports, constants, classes, functions) of the
    Python block under heading in docs/porting.md, without its demonstration."""
    text = PORTING.read_text(encoding="utf-8")
    after = text.index(f"\n## {heading}\n")
    block = next(block for block in doc_blocks(PORTING)
                 if block.language == "python" and text.count("\n", 0, after) < block.line)
    tree = ast.parse("\n" * (block.line - 1) + block.code)  # the page's own lines
    tree.body = [node for node in tree.body
                 if isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign,
                                      ast.ClassDef, ast.FunctionDef))]
    namespace: dict[str, Any] = {"__name__": "docs"}
    exec(compile(tree, str(PORTING), "exec"), namespace)
    return namespace


class Listener(NamedTuple):
    sock: socket.socket
    namespace: str
    interface: str


RECIPE = docs_recipe("Take over HAProxy's listeners")
take_haproxy_listeners = cast(Callable[[str], "list[Listener]"],
                              RECIPE["take_haproxy_listeners"])
# HAProxy's MAX_SEND_FD, the most descriptors it sends in one batch (and
# acknowledged) in the 2.6.12 that Debian 12 ships: 253 before.
BATCH = 252

DEFAULTS = """
defaults
    mode http
    timeout client 10s
    timeout connect 10s
    timeout server 10s
"""

ANSWER = "from haproxy"


def frontend(name: str, binds: list[str]) -> str:
    lines = "".join(f"    bind {bind}\n" for bind in binds)
    return (f"frontend {name}\n{lines}"
            f'    http-request return status 200 content-type text/plain string "{ANSWER}"\n')


@pytest.fixture(scope="module")
def haproxy() -> str:
    return find_peer("haproxy", ["-v"], "haproxy")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for UNIX sockets whose paths, with the suffix HAProxy adds
    while binding, fit in sun_path."""
    with tempfile.TemporaryDirectory(prefix="fdp") as tmp:
        yield Path(tmp)


def free_ports(n: int) -> list[int]:
    """n TCP ports on 127.0.0.1 that are free now, below the kernel's
    ephemeral range, so that no connection elsewhere takes one meanwhile
    (HAProxy refuses port 0)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    found: list[int] = []
    for port in range(10000 + os.getpid() % 2000 * 10, low):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise AssertionError("no free ports")


@contextmanager
def running_haproxy(haproxy: str, directory: Path, config: str,
                    *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy in the foreground on config; on leaving, a soft stop
    (SIGUSR1) if it still runs, and reaped. Its output goes to a log that
    failures quote."""
    path = directory / "haproxy.cfg"
    path.write_text(config)
    with open(directory / "haproxy.log", "wb") as log:
        process = subprocess.Popen([haproxy, "-db", "-f", str(path), *args],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGUSR1)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def log_of(directory: Path) -> str:
    return (directory / "haproxy.log").read_text(errors="replace")


def wait_for(path: Path, process: subprocess.Popen[bytes], directory: Path) -> None:
    """Until HAProxy listens at path (it renames the socket into place)."""
    deadline = time.monotonic() + 10
    while not path.exists():
        assert process.poll() is None, f"haproxy exited:\n{log_of(directory)}"
        assert time.monotonic() < deadline, f"no {path}:\n{log_of(directory)}"
        time.sleep(0.01)


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets a process holds."""
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[len("socket:["):-1]))
    return found


def bound_device(sock: socket.socket) -> str:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode()


def stats_socket(path: Path) -> str:
    return f"global\n    stats socket {path} level admin expose-fd listeners\n"


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    """Where a test puts what it took, closed at the end."""
    taken: list[Listener] = []
    yield taken
    for listener in taken:
        listener.sock.close()


def test_take_haproxy_listeners_and_serve_after_it_stops(
    haproxy: str, tmp_path: Path, short_dir: Path, listeners: list[Listener]
) -> None:
    """Every listener comes over with its metadata: its address, its
    interface (as the socket itself says), the very socket HAProxy holds;
    once HAProxy has stopped, one of them accepts a connection here."""
    stats = short_dir / "haproxy.sock"
    web, bound, other = free_ports(3)
    config = (stats_socket(stats) + DEFAULTS
              + frontend("web", [f"127.0.0.1:{web}", f"127.0.0.1:{bound} interface lo"])
              + frontend("other", [f"127.0.0.1:{other}"]))
    with running_haproxy(haproxy, tmp_path, config) as process:
        wait_for(stats, process, tmp_path)
        listeners += take_haproxy_listeners(str(stats))
        assert {os.fstat(listener.sock.fileno()).st_ino for listener in listeners} \
            <= socket_inodes(process.pid)
    assert process.returncode == 0, log_of(tmp_path)
    tcp = {listener.sock.getsockname()[1]: listener for listener in listeners
           if listener.sock.family == socket.AF_INET}
    assert sorted(tcp) == sorted([web, bound, other])
    assert {port: (listener.namespace, listener.interface, bound_device(listener.sock))
            for port, listener in tcp.items()} \
        == {web: ("", "", ""), bound: ("", "lo", "lo"), other: ("", "", "")}
    unix = [listener.sock for listener in listeners if listener.sock.family == socket.AF_UNIX]
    assert [s.getsockname().startswith(f"{stats}.") for s in unix] == [True]
    assert all(listener.sock.type == socket.SOCK_STREAM for listener in listeners)
    served = tcp[other].sock
    served.settimeout(10)
    with socket.create_connection(("127.0.0.1", other), timeout=10) as client:
        conn, _ = served.accept()
        with conn:
            client.sendall(b"ping")
            conn.sendall(conn.recv(4) + b" pong")
            assert client.recv(100) == b"ping pong"


def test_take_haproxy_listeners_in_acknowledged_batches(
    haproxy: str, tmp_path: Path, short_dir: Path, listeners: list[Listener]
) -> None:
    """More listeners than one batch holds: HAProxy sends the second batch
    only once the first is acknowledged, and it says how many it sent."""
    stats = short_dir / "haproxy.sock"
    paths = [short_dir / f"l{i}" for i in range(BATCH + 47)]
    config = (stats_socket(stats) + DEFAULTS
              + frontend("many", [f"unix@{path}" for path in paths]))
    with running_haproxy(haproxy, tmp_path, config) as process:
        wait_for(stats, process, tmp_path)
        listeners += take_haproxy_listeners(str(stats))
    assert process.returncode == 0, log_of(tmp_path)
    assert "transfer" not in log_of(tmp_path)  # "Failed to transfer sockets", ...
    # HAProxy binds each at a temporary name, then renames it into place.
    names = sorted(listener.sock.getsockname().rsplit(".", 2)[0] for listener in listeners)
    assert names == sorted(map(str, [*paths, stats]))


def offer_listeners(server: socket.socket, offered: list[Listener]) -> None:
    """Serve one `haproxy -x` as the old HAProxy's stats socket does: the
    count, then batches of descriptors with their metadata, each full batch
    acknowledged; then its acknowledgements, until it hangs up."""
    conn, _ = server.accept()
    with conn, fdpass.FDChannel(conn, closefd=False) as ch:
        conn.settimeout(10)
        request = b""
        while not request.endswith(b"\n"):
            chunk = conn.recv(100)
            assert chunk, f"haproxy hung up after {request!r}"
            request += chunk
        assert request == b"_getsocks\n"
        conn.sendall(struct.pack("=i", len(offered)))
        for start in range(0, len(offered), BATCH):
            batch = offered[start:start + BATCH]
            ch.send_fds([listener.sock for listener in batch], data=b"".join(
                bytes([len(listener.namespace)]) + listener.namespace.encode()
                + bytes([len(listener.interface)]) + listener.interface.encode() + bytes(4)
                for listener in batch))
            if len(batch) == BATCH:
                assert conn.recv(4), "no acknowledgement"
        while conn.recv(100):
            pass


def ask(client: socket.socket, process: subprocess.Popen[bytes], directory: Path) -> None:
    """HAProxy answers a request on the connected client as its frontends
    do; a failure, with its log, as soon as HAProxy has exited instead
    (our listener would queue the connection all the same)."""
    deadline = time.monotonic() + 10
    answer = b""
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    client.settimeout(0.1)
    while chunk := try_recv(client, process, directory, deadline):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(ANSWER.encode()), \
        f"{answer!r}\n{log_of(directory)}"


def try_recv(client: socket.socket, process: subprocess.Popen[bytes], directory: Path,
             deadline: float) -> bytes:
    while True:
        try:
            return client.recv(4096)
        except socket.timeout:
            assert process.poll() is None, f"haproxy exited:\n{log_of(directory)}"
            assert time.monotonic() < deadline, f"no answer:\n{log_of(directory)}"


@contextmanager
def handing_over(haproxy: str, tmp_path: Path, short_dir: Path, config: str,
                 listeners: list[Listener]) -> Iterator[subprocess.Popen[bytes]]:
    """A new HAProxy started with -x on a socket of ours, to which fdpass
    has handed listeners; it must end well, and have held them all."""
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(short_dir / "old.sock"))
        server.listen()
        server.settimeout(10)
        with running_haproxy(haproxy, tmp_path, config, "-x", str(short_dir / "old.sock")) \
                as process:
            offer_listeners(server, listeners)
            yield process
            ours = {os.fstat(listener.sock.fileno()).st_ino for listener in listeners}
            assert ours <= socket_inodes(process.pid), log_of(tmp_path)
    assert process.returncode == 0, log_of(tmp_path)


def test_haproxy_takes_listeners_from_fdpass(
    haproxy: str, tmp_path: Path, short_dir: Path, listeners: list[Listener]
) -> None:
    """A new HAProxy, started with -x on a socket of ours, serves on the
    very sockets fdpass sent it (one bound to an interface, which HAProxy
    reuses only when the metadata names it) rather than binding its own."""
    plain = socket.create_server(("127.0.0.1", 0))
    listeners.append(Listener(plain, "", ""))
    on_lo = socket.socket()
    listeners.append(Listener(on_lo, "", "lo"))
    on_lo.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    on_lo.bind(("127.0.0.1", 0))
    on_lo.listen()
    ports = [plain.getsockname()[1], on_lo.getsockname()[1]]
    config = DEFAULTS + frontend("web", [f"127.0.0.1:{ports[0]}",
                                         f"127.0.0.1:{ports[1]} interface lo"])
    with handing_over(haproxy, tmp_path, short_dir, config, listeners) as process:
        for port in ports:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                ask(client, process, tmp_path)


def test_haproxy_takes_listeners_from_fdpass_in_batches(
    haproxy: str, tmp_path: Path, short_dir: Path, listeners: list[Listener]
) -> None:
    """More than a batch: fdpass sends the second once haproxy -x has
    acknowledged the first, and HAProxy serves on every socket."""
    paths = [short_dir / f"l{i}" for i in range(BATCH + 48)]
    for path in paths:
        listeners.append(Listener(socket.socket(socket.AF_UNIX), "", ""))
        listeners[-1].sock.bind(str(path))
        listeners[-1].sock.listen()
    config = DEFAULTS + frontend("many", [f"unix@{path}" for path in paths])
    with handing_over(haproxy, tmp_path, short_dir, config, listeners) as process:
        for path in (paths[0], paths[-1]):
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(10)
                client.connect(str(path))
                ask(client, process, tmp_path)
