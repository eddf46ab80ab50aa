"""Wire compatibility with Go, both ways: syscall.Sendmsg with
syscall.UnixRights, and syscall.Recvmsg with ParseUnixRights, several
descriptors and a payload per message, over stream and seqpacket sockets.
The peer, tests/peers/peer.go, is built once per session, offline, from the
standard library alone; the binary is kept in pytest's cache directory,
keyed by the source and the Go version, so that the runs under every
interpreter (which share that directory) build it once."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import fdpass
from support import PEERS, check_received_files, close_all, find_peer, run_peer, text_files

pytestmark = pytest.mark.interop

SOURCE = PEERS / "peer.go"


def build_go_peer(go: str, directory: Path) -> Path:
    """The peer's binary in directory: built there unless already built
    from the same source by the same Go."""
    version = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60,
                             check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    binary = directory / f"peer-{key}"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        # No network, no module download, nothing kept outside tmp.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "GOCACHE": f"{tmp}/cache",
               "GOPATH": f"{tmp}/path", "GOPROXY": "off", "GO111MODULE": "off",
               "GOFLAGS": "", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
        building = directory / f".{binary.name}.{os.getpid()}"
        done = subprocess.run([go, "build", "-o", str(building), str(SOURCE)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"go build failed:\n{done.stderr}"
    os.replace(building, binary)  # whole, even when several runs build at once
    return binary


@pytest.fixture(scope="session")
def go_peer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    go = find_peer("go", ["version"], "golang-go")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    directory = cache.mkdir("fdpass-go-peer") if cache else tmp_path_factory.mktemp("go")
    return str(build_go_peer(go, directory))


def run_go(peer: str, mode: str, sock: socket.socket, messages: list[dict[str, object]]) -> None:
    run_peer([peer, mode], sock, json.dumps(messages))


@pytest.fixture(params=["stream", "seqpacket"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    kind = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET}[request.param]
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, b:
        yield a, b


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return text_files(tmp_path, 4, "passed between Python and Go")


def test_go_unix_rights_to_recv_message(
    go_peer: str, pair: tuple[socket.socket, socket.socket], files: list[Path]
) -> None:
    """Two messages, of three descriptors and of one, each with its payload."""
    ours, theirs = pair
    sent = [("three from go", files[:3]), ("one from go", files[3:])]
    run_go(go_peer, "send", theirs,
           [{"payload": payload, "paths": list(map(str, paths))} for payload, paths in sent])
    with fdpass.FDChannel(ours, closefd=False) as ch:
        for payload, paths in sent:
            data, fds = ch.recv_message(4096)
            check_received_files(fds, paths)
            assert data == payload.encode()


def test_send_fds_to_go_parse_unix_rights(
    go_peer: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    """Go insists on each payload and count, and writes into each pipe end,
    in the order sent."""
    ours, theirs = pair
    pipes = [os.pipe() for _ in range(4)]
    try:
        writers = [w for _, w in pipes]
        with fdpass.FDChannel(ours, closefd=False) as ch:
            ch.send_fds(writers[:3], data=b"three from fdpass")
            ch.send_fd(writers[3])
        run_go(go_peer, "recv", theirs, [{"payload": "three from fdpass", "fds": 3},
                                         {"payload": "\0", "fds": 1}])
        assert [os.read(r, 100) for r, _ in pipes] == [b"go wrote 0.0\n", b"go wrote 0.1\n",
                                                        b"go wrote 0.2\n", b"go wrote 1.0\n"]
    finally:
        close_all([fd for pipe in pipes for fd in pipe])


def test_functional_send_to_go(go_peer: str, pair: tuple[socket.socket, socket.socket],
                               pipe: tuple[int, int]) -> None:
    ours, theirs = pair
    r, w = pipe
    assert fdpass.send(ours.fileno(), w), os.strerror(fdpass.get_errno())
    run_go(go_peer, "recv", theirs, [{"payload": "\0", "fds": 1}])
    assert os.read(r, 100) == b"go wrote 0.0\n"
