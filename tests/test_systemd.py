"""fdpass.systemd against real peers: systemd-socket-activate (Debian's
systemd) starts a program that calls listen_fds(), and libsystemd's own
sd_pid_notify_with_fds (through Debian's python3-systemd, run by the
system interpreter) sends the same notifications as notify() to one
socket that the test owns.  No mock of either."""

from __future__ import annotations

import array
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fdpass import systemd
from support import PACKAGE_ROOT, REPOSITORY, doc_blocks

ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
# systemd-socket-activate gives its child a fresh environment: pass on what
# a sanitizer run (tox -e sanitize) needs the child to keep.
KEPT = [f"--setenv={name}" for name in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS",
                                         "PYTHONMALLOC") if name in os.environ]
SYSTEM_PYTHON = "/usr/bin/python3"  # where Debian's python3-systemd is installed

# -- socket activation -------------------------------------------------------

ACTIVATED = r"""
import json, os, socket, subprocess, sys
from fdpass import systemd

report = {"pid": os.getpid(), "inheritable_before": [os.get_inheritable(3), os.get_inheritable(4)]}
# A child of ours inherits LISTEN_PID, which is not its pid: nothing for it.
report["grandchild"] = subprocess.run(
    [sys.executable, "-c", "from fdpass import systemd; print(systemd.listen_fds())"],
    pass_fds=(3, 4), capture_output=True, text=True, timeout=60).stdout.strip()
report["kept"] = systemd.listen_fds(unset_environment=False)
report["env_kept"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
fds = systemd.listen_fds()
report["fds"] = fds
report["env_after"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
report["again"] = systemd.listen_fds()
report["inheritable_after"] = [os.get_inheritable(fd) for _, fd in fds]
socks = {name: socket.socket(fileno=fd) for name, fd in fds}
report["kinds"] = {name: [s.family.name, s.type.name, s.getsockname()] for name, s in socks.items()}
conn, _ = socks["control"].accept()  # the connection that activated us
with conn:
    conn.sendall(b"activated")
print(json.dumps(report), flush=True)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.interop
def test_listen_fds_under_systemd_socket_activate(tmp_path: Path) -> None:
    port, control = free_port(), str(tmp_path / "control.sock")
    command = [ACTIVATE, "-l", f"127.0.0.1:{port}", "-l", control, "--fdname=web:control",
               *KEPT, sys.executable, "-c", ACTIVATED]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=PACKAGE_ROOT) as activator:
        try:
            assert activator.stderr is not None and activator.stdout is not None
            for _ in range(2):  # "Listening on ... as 3." and "... as 4."
                assert "Listening on" in activator.stderr.readline()
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(60)
                client.connect(control)  # activates it
                assert client.recv(100) == b"activated"
            out, err = activator.communicate(timeout=60)
        finally:
            if activator.returncode is None:
                activator.kill()
                activator.communicate()
    assert activator.returncode == 0, err
    report: dict[str, Any] = json.loads(out)
    assert report["fds"] == [["web", 3], ["control", 4]]  # names and order
    assert report["kept"] == report["fds"]
    assert report["env_kept"] == ["LISTEN_FDNAMES", "LISTEN_FDS", "LISTEN_PID"]
    assert report["env_after"] == [] and report["again"] == []  # unset_environment
    assert report["grandchild"] == "[]"  # LISTEN_PID honoured
    assert report["inheritable_before"] == [True, True]
    assert report["inheritable_after"] == [False, False]  # close-on-exec
    assert report["kinds"] == {"web": ["AF_INET", "SOCK_STREAM", ["127.0.0.1", port]],
                               "control": ["AF_UNIX", "SOCK_STREAM", control]}


MALFORMED = r"""
import json, os
from fdpass import systemd

cases = json.loads(os.environ.pop("CASES"))
results = []
for env in cases:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PIDFDID"):
        os.environ.pop(name, None)
    os.environ.update({k: v.replace("{pid}", str(os.getpid())) for k, v in env.items()})
    try:
        outcome = ["ok", systemd.listen_fds()]
    except ValueError as error:
        outcome = ["ValueError", str(error)]
    left = sorted(k for k in os.environ if k.startswith("LISTEN_"))
    results.append([outcome, left])
print(json.dumps(results))
"""

LISTEN_CASES: list[tuple[dict[str, str], list[Any]]] = [
    ({}, ["ok", []]),
    ({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, ["ok", []]),  # another process's
    ({"LISTEN_PID": "{pid}"}, ["ok", []]),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2"}, ["ok", [["unknown", 3], ["unknown", 4]]]),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:"},
     ["ok", [["a", 3], ["", 4]]]),
    ({"LISTEN_PID": "x1", "LISTEN_FDS": "2"}, ["ValueError", "LISTEN_PID='x1' is not a number"]),
    ({"LISTEN_PID": "0", "LISTEN_FDS": "2"}, ["ValueError", "LISTEN_PID='0' is not a process id"]),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "two"},
     ["ValueError", "LISTEN_FDS='two' is not a number"]),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "-1"},
     ["ValueError", "LISTEN_FDS='-1' is not a positive count"]),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b:c"},
     ["ValueError", "LISTEN_FDNAMES has 3 names for LISTEN_FDS=2 descriptors"]),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_PIDFDID": "-5"},
     ["ValueError", "LISTEN_PIDFDID='-5' is not a pidfd inode number"]),
    # Not our pidfd's inode (pidfs, Linux 6.9+): the pid was recycled.
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_PIDFDID": "1"}, ["ok", []]),
]


def test_listen_fds_values_and_malformed_ones() -> None:
    """Each case in a child whose fds 3 and 4 are a socketpair; every case
    leaves no LISTEN_ variable behind."""
    a, b = socket.socketpair()
    with a, b:
        spare = [os.dup(a.fileno()), os.dup(b.fileno())]
        env = dict(os.environ, CASES=json.dumps([case for case, _ in LISTEN_CASES]))
        code = ("import os; " + "; ".join(f"os.dup2({fd}, {n}, inheritable=True)"
                                          for n, fd in zip((3, 4), spare)) + "\n" + MALFORMED)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, cwd=PACKAGE_ROOT, env=env, pass_fds=spare)
        for fd in spare:
            os.close(fd)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for (case, expected), (outcome, left) in zip(LISTEN_CASES, results):
        assert outcome == expected, case
        assert left == [], case


def test_listen_fds_without_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert systemd.listen_fds() == []
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds(unset_environment=False) == []
    assert os.environ["LISTEN_FDS"] == "1"
    assert systemd.listen_fds() == [] and "LISTEN_PID" not in os.environ


# -- notify against libsystemd -----------------------------------------------

Datagram = tuple[bytes, list[tuple[int, int]], list[tuple[int, int, int]]]


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket the test owns, as a service manager's, and its
    NOTIFY_SOCKET value; it receives the senders' credentials."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if request.param == "path":
                address = value = os.path.join(tmp, "notify")
            else:
                name = f"fdpass-test-{uuid.uuid4().hex}"
                address, value = "\0" + name, "@" + name
            sock.bind(address)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.settimeout(60)
            yield sock, value
        finally:
            sock.close()


def receive(sock: socket.socket) -> Datagram:
    """One datagram, read with the standard library: payload, the identity
    of each descriptor (then closed), and the credentials the kernel saw."""
    data, ancillary, flags, _ = sock.recvmsg(4096, socket.CMSG_SPACE(64 * 4) + 256)
    assert not flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC)
    identities, credentials = [], []
    for level, kind, payload in ancillary:
        assert level == socket.SOL_SOCKET
        if kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
            for fd in fds:
                st = os.fstat(fd)
                identities.append((st.st_dev, st.st_ino))
                os.close(fd)
        else:
            assert kind == socket.SCM_CREDENTIALS
            pid, uid, gid = array.array("i", payload[:12])
            credentials.append((pid, uid, gid))
    return data, identities, credentials


LIBSYSTEMD = r"""
import os, sys
from systemd import daemon
fds = [os.open(path, os.O_RDONLY) for path in sys.argv[2:]]
ok = daemon.notify(sys.argv[1], fds=fds)  # sd_pid_notify_with_fds
print(ok, os.getpid())
"""

FDPASS = r"""
import os, sys
from fdpass import systemd
fds = [os.open(path, os.O_RDONLY) for path in sys.argv[2:]]
print(systemd.notify(sys.argv[1], fds), os.getpid())
"""

STATES = [
    ("READY=1", 0),
    ("READY=1\nSTATUS=serving on 2 sockets\nMAINPID=1", 0),
    ("FDSTORE=1\nFDNAME=http", 2),
]


@pytest.mark.interop
@pytest.mark.parametrize(("state", "count"), STATES, ids=["ready", "status", "fdstore"])
def test_notify_sends_what_libsystemd_sends(notify_socket: tuple[socket.socket, str],
                                            state: str, count: int, tmp_path: Path) -> None:
    sock, value = notify_socket
    files = [tmp_path / f"passed-{i}" for i in range(count)]
    for path in files:
        path.write_text(path.name)
    env = dict(os.environ, NOTIFY_SOCKET=value)
    datagrams = []
    for interpreter, code in ((SYSTEM_PYTHON, LIBSYSTEMD), (sys.executable, FDPASS)):
        done = subprocess.run([interpreter, "-c", code, state, *map(str, files)], env=env,
                              capture_output=True, text=True, timeout=60, cwd=PACKAGE_ROOT)
        assert done.returncode == 0, done.stderr
        ok, pid = done.stdout.split()
        assert ok == "True"
        data, identities, credentials = receive(sock)
        assert credentials and all(c[0] == int(pid) for c in credentials)  # the kernel's
        datagrams.append((data, identities, len(credentials)))
    libsystemd, ours = datagrams
    assert ours == libsystemd
    assert ours[0] == state.encode()  # no trailing NUL
    expected = [(os.stat(p).st_dev, os.stat(p).st_ino) for p in files]
    assert ours[1] == expected  # the same files, in order


def test_notify_in_this_process(notify_socket: tuple[socket.socket, str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    sock, value = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    r, w = os.pipe()
    try:
        assert systemd.store_fds("pipe end", [r])
        data, identities, _ = receive(sock)
        assert data == b"FDSTORE=1\nFDNAME=pipe end"
        assert identities == [(os.fstat(r).st_dev, os.fstat(r).st_ino)]
    finally:
        os.close(r)
        os.close(w)
    assert systemd.notify("STOPPING=1")
    assert receive(sock)[:2] == (b"STOPPING=1", [])


def test_notify_without_a_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.store_fds("x", [0]) is False


@pytest.mark.parametrize("value", ["", "relative/path", "@", "vsock:2:1234"])
def test_notify_refuses_a_malformed_notify_socket(monkeypatch: pytest.MonkeyPatch,
                                                  value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        systemd.notify("READY=1")


def test_notify_to_nobody_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    with pytest.raises(FileNotFoundError):
        systemd.notify("READY=1")
    with pytest.raises(ValueError, match="non-empty state"):
        systemd.notify("", [0])


@pytest.mark.parametrize("name", ["", "a:b", "x" * 256, "caf\u00e9", "tab\there", "nl\n"])
def test_store_fds_checks_the_name_as_systemd_does(name: str) -> None:
    with pytest.raises(ValueError, match="descriptor name"):
        systemd.store_fds(name, [0])


def test_store_fds_needs_a_descriptor() -> None:
    with pytest.raises(ValueError, match="at least one"):
        systemd.store_fds("http", [])


def test_store_fds_accepts_what_systemd_accepts(notify_socket: tuple[socket.socket, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    sock, value = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    for name in ("h", "x" * 255, "with space", "~!@#$%^&*()"):
        assert systemd.store_fds(name, [0])
        assert receive(sock)[0] == f"FDSTORE=1\nFDNAME={name}".encode()


def test_the_interpreters_the_interop_tests_use() -> None:
    assert os.access(ACTIVATE, os.X_OK), "systemd-socket-activate (Debian's systemd) is missing"
    done = subprocess.run([SYSTEM_PYTHON, "-c", "import systemd.daemon"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, "Debian's python3-systemd is missing: " + done.stderr


# -- the docs' descriptor-store recipe, against the real peers --------------

RECIPE = next(block.code for block in doc_blocks(REPOSITORY / "docs" / "systemd.md")
              if "systemd.store_fds(" in block.code)


@pytest.mark.interop
def test_the_docs_recipe_stores_its_listener_and_finds_it_after_a_restart(
        notify_socket: tuple[socket.socket, str]) -> None:
    sock, value = notify_socket
    # First start: nothing passed; it binds, and stores the listener.
    first = subprocess.run([sys.executable, "-c", RECIPE], capture_output=True, text=True,
                           timeout=60, cwd=PACKAGE_ROOT, env=dict(os.environ, NOTIFY_SOCKET=value))
    assert (first.returncode, first.stdout) == (0, "serving on AF_INET\n"), first.stderr
    stored, ancillary, flags, _ = sock.recvmsg(4096, 256)
    assert not flags & socket.MSG_CTRUNC
    assert stored == b"FDSTORE=1\nFDNAME=http"
    fds = [fd for level, kind, data in ancillary if kind == socket.SCM_RIGHTS
           for fd in array.array("i", data)]
    assert len(fds) == 1
    with socket.socket(fileno=fds[0]) as listener:
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    assert receive(sock)[0] == b"READY=1"
    # Restart: the listener comes back by name (here from systemd-socket-activate).
    port = free_port()
    command = [ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=http", *KEPT, "-E",
               f"NOTIFY_SOCKET={value}", sys.executable, "-c", RECIPE]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=PACKAGE_ROOT) as activator:
        try:
            assert activator.stderr is not None
            assert "Listening on" in activator.stderr.readline()
            socket.create_connection(("127.0.0.1", port), timeout=60).close()  # activates it
            out, err = activator.communicate(timeout=60)
        finally:
            if activator.returncode is None:
                activator.kill()
                activator.communicate()
    assert (activator.returncode, out) == (0, "serving on AF_INET\n"), err
    assert receive(sock)[:2] == (b"READY=1", [])  # nothing stored again
