"""fdpass.handoff: Offer and take between threads and processes, names
across many messages, the uid check (against a child that setuid()s), a
successor that dies before ready(), timeouts, the socket file, and peers
that speak garbage or another version.  Every test runs under the leak
check; forked children check themselves."""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fdpass
from fdpass import aio, handoff
from support import Child, fill_backlog, peer_pid, python_child, raw_send, same_file

OTHER_UID = 65534
Offered = dict[str, socket.socket]


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory another uid can traverse (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="fdpass-handoff-")
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


@pytest.fixture
def path(shared_dir: str) -> str:
    return os.path.join(shared_dir, "offer.sock")


class Background:
    """fn() in a thread; result() joins it and returns or raises."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._outcome: list[Any] = []
        self._thread = threading.Thread(target=self._run, args=(fn,))
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._outcome.append((True, fn()))
        except BaseException as error:
            self._outcome.append((False, error))

    def result(self) -> Any:
        self._thread.join(30)
        assert self._outcome, "the thread did not finish"
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value


def take_and_close(path: str, ready: bool = True) -> dict[str, tuple[int, int]]:
    """A successor in this process: take, note each socket's identity, say
    ready (or not), close everything."""
    with handoff.take(path, timeout=10) as takeover:
        try:
            identity = {name: _identity(sock) for name, sock in takeover.sockets.items()}
            if ready:
                takeover.ready()
        finally:
            for sock in takeover.sockets.values():
                sock.close()
    return identity


def close_all_sockets(takeover: handoff.Takeover) -> None:
    for sock in takeover.sockets.values():
        sock.close()


def _identity(sock: socket.socket) -> tuple[int, int]:
    st = os.fstat(sock.fileno())
    return st.st_dev, st.st_ino


def wait_until_refused(offer: handoff.Offer, count: int = 1) -> None:
    for _ in range(200):
        with pytest.raises(TimeoutError):
            offer.wait(timeout=0.05)
        if len(offer.refused) >= count:
            return
    raise AssertionError("the successor was not refused")


# -- the round trip -----------------------------------------------------------

def test_take_receives_every_socket_by_name(path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners) as offer:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        waiting = Background(lambda: offer.wait(timeout=10))
        with handoff.take(path, timeout=10) as takeover:
            try:
                assert sorted(takeover.sockets) == ["admin", "http"]
                for name, sock in takeover.sockets.items():
                    assert same_file(sock.fileno(), listeners[name].fileno())
                    assert not os.get_inheritable(sock.fileno())
                    assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
                assert takeover.predecessor.pid == peer_pid(os.getpid())
                takeover.ready()
            finally:
                for sock in takeover.sockets.values():
                    sock.close()
        successor = waiting.result()
        assert successor == fdpass.Credentials(peer_pid(os.getpid()), os.geteuid(), os.getegid())
        assert offer.closed and not os.path.exists(path)
        with pytest.raises(ValueError, match="closed"):
            offer.wait(timeout=0)
    # The old process keeps its sockets: they still accept.
    with socket.create_connection(listeners["http"].getsockname(), timeout=5):
        conn, _ = listeners["http"].accept()
        conn.close()


def test_names_kept_across_more_than_max_fds_sockets(path: str) -> None:
    count = fdpass.MAX_FDS + 7  # two SOCKETS frames
    pairs = [socket.socketpair() for _ in range(count)]
    try:
        offered = {f"sock-{i}-é": a for i, (a, _) in enumerate(pairs)}
        with handoff.Offer(path, offered) as offer:
            waiting = Background(lambda: offer.wait(timeout=20))
            got = take_and_close(path)
            waiting.result()
        assert list(got) == list(offered)  # names, in the offer's order
        for name, sock in offered.items():
            assert got[name] == _identity(sock)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_offer_checks_what_it_offers(path: str, listeners: Offered) -> None:
    with pytest.raises(ValueError, match="at least one"):
        handoff.Offer(path, {})
    with pytest.raises(TypeError):
        handoff.Offer(path, [listeners["http"]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names"):
        handoff.Offer(path, {"": listeners["http"]})
    with pytest.raises(ValueError, match="names"):
        handoff.Offer(path, {"x" * 256: listeners["http"]})
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="not a socket"):
            handoff.Offer(path, {"pipe": r})
    finally:
        os.close(r)
        os.close(w)
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        handoff.Offer(path, {"gone": closed})
    assert not os.path.exists(path)


class NoNumber:
    def fileno(self) -> str:
        return "3"


@pytest.mark.parametrize("value", ["http", None, 2.0, True, b"\x03", NoNumber()],
                         ids=["str", "None", "float", "bool", "bytes", "fileno-str"])
def test_an_offered_value_of_the_wrong_type_is_a_type_error(path: str, value: object) -> None:
    with pytest.raises(TypeError, match="'x' must be a socket, a descriptor or an object "
                                        "with fileno"):
        handoff.Offer(path, {"x": value})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="names are str"):
        handoff.Offer(path, {b"x": 3})  # type: ignore[dict-item]
    assert not os.path.exists(path)


@pytest.mark.parametrize("uid", ["0", 0.0, True, None], ids=["str", "float", "bool", "None"])
def test_the_uid_must_be_an_int(path: str, listeners: Offered, uid: object) -> None:
    """Offer(uid="0") was accepted, then refused the right successor with
    "uid 0 is not uid 0"; None is the default, this process's uid."""
    if uid is None:
        with handoff.Offer(path, listeners, uid=uid) as offer:
            assert offer.uid == os.geteuid()
        return
    with pytest.raises(TypeError, match="uid must be an int or None"):
        handoff.Offer(path, listeners, uid=uid)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uid must be >= 0"):
        handoff.Offer(path, listeners, uid=-1)
    assert not os.path.exists(path)


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan")], ids=["-1", "-0.5", "nan"])
def test_a_negative_timeout_is_a_value_error_before_anything_is_done(
        path: str, listeners: Offered, timeout: float) -> None:
    """As socket.settimeout: ValueError for a negative value, before the
    offer accepts or take() connects (there is no offer at path)."""
    with handoff.Offer(path, listeners) as offer:
        with pytest.raises(ValueError, match="timeout must be None or a number >= 0"):
            offer.wait(timeout)
        with pytest.raises(TypeError, match="timeout must be None or a number, not str"):
            offer.wait("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be None or a number >= 0"):
        handoff.take(path, timeout)
    a, b = fdpass.FDChannel.pair()
    with a, b, pytest.raises(ValueError, match=">= 0"):
        a.settimeout(timeout)


# -- the socket file ---------------------------------------------------------

def test_a_stale_socket_file_is_replaced(path: str, listeners: Offered) -> None:
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # bound, never listening: nobody answers there
    with handoff.Offer(path, listeners) as offer:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert repr(offer).startswith("<fdpass.handoff.Offer path=")
    assert not os.path.exists(path)


def test_a_live_socket_or_another_file_is_refused(path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners):
        with pytest.raises(OSError) as info:
            handoff.Offer(path, listeners)
        assert info.value.errno == errno.EADDRINUSE
        assert os.path.exists(path)
    with open(path, "w") as regular:
        regular.write("not a socket")
    with pytest.raises(FileExistsError):
        handoff.Offer(path, listeners)
    with open(path) as regular:
        assert regular.read() == "not a socket"


ATTACKER = """
import os, sys, time
path, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
print("swapping", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    for swap in (lambda: os.unlink(path), lambda: os.symlink(target, path)):
        try:
            swap()
        except OSError:
            pass
"""


OFFERS = {"blocking": handoff.Offer, "asyncio": aio.AsyncOffer}
MADE = 2000


@pytest.mark.parametrize("form", sorted(OFFERS))
def test_the_mode_is_never_set_through_a_link_swapped_in(shared_dir: str, listeners: Offered,
                                                         form: str) -> None:
    """A process that may write in the offer's directory swaps a symlink to
    a file of its choosing in at path, again and again, while offers are
    made there: that file keeps its mode (chmod(path) after bind() once
    made it 0600, within a few hundred offers).  AsyncOffer is made and
    closed without a loop, as it may be."""
    path = os.path.join(shared_dir, "offer.sock")
    victim = os.path.join(shared_dir, "victim")
    with open(victim, "w"):
        pass
    os.chmod(victim, 0o644)
    made = tried = 0
    # Offers until MADE were made, however often the attacker's link wins
    # the race (most tries, on a loaded machine): a deadline, not a count
    # of tries, bounds the test.
    deadline = time.monotonic() + 30
    with python_child(ATTACKER, path, victim, "60") as attacker:
        assert attacker.stdout is not None and attacker.stdout.readline() == "swapping\n"
        while attacker.poll() is None and made < MADE and time.monotonic() < deadline:
            tried += 1
            try:
                offer = OFFERS[form](path, listeners)
            except OSError:
                continue  # the link was there first: refused
            made += 1
            offer.close()
            assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644, f"after {made} offers"
        attacker.kill()
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o644
    assert made >= 50, (made, tried)
    assert [name for name in os.listdir(shared_dir) if name.startswith(".fdpass-")] == []


@pytest.mark.parametrize("form", sorted(OFFERS))
def test_an_offer_at_a_path_longer_than_sockaddr_un_holds(tmp_path: Path, listeners: Offered,
                                                           form: str) -> None:
    """The socket is bound in a private directory, through /proc/self/fd
    where there is one, so path itself may be longer than AF_UNIX allows."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd here: bind() takes the path itself")
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    path = str(deep / "offer.sock")
    offer = OFFERS[form](path, listeners)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    finally:
        offer.close()
    assert os.listdir(deep) == []


def test_close_leaves_a_path_that_is_no_longer_its_own(path: str, listeners: Offered) -> None:
    offer = handoff.Offer(path, listeners)
    os.unlink(path)
    with open(path, "w"):
        pass
    offer.close()
    offer.close()
    assert os.path.isfile(path)


# -- the uid check -----------------------------------------------------------

def test_a_successor_of_another_uid_is_refused(path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners) as offer:
        os.chmod(path, 0o666)  # let it connect, so that the credentials check decides

        def as_other_uid() -> dict[str, Any]:
            try:
                handoff.take(path, timeout=10)
            except PermissionError as error:
                return {"refused": str(error)}
            return {"refused": None}

        child = Child(as_other_uid, uid=OTHER_UID)
        wait_until_refused(offer)
        report = child.report()
        assert report["refused"] and f"uid {OTHER_UID}" in report["refused"], report
        assert report["leaked"] == []
        who, reason = offer.refused[0]
        assert (who.pid, who.uid) == (peer_pid(child.pid), OTHER_UID)
        assert reason == f"uid {OTHER_UID} is not uid {os.geteuid()}"
        # The offer goes on, and its own uid takes over.
        successor = Background(lambda: take_and_close(path))
        assert offer.wait(timeout=10).uid == os.geteuid()
        successor.result()


def test_the_other_uid_takes_over_when_the_offer_names_it(path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners, uid=OTHER_UID) as offer:
        os.chown(path, OTHER_UID, -1)  # the 0600 socket, its to connect to

        def as_other_uid() -> dict[str, Any]:
            with handoff.take(path, timeout=10) as takeover:
                names = sorted(takeover.sockets)
                takeover.ready()
                for sock in takeover.sockets.values():
                    sock.close()
            return {"names": names}

        child = Child(as_other_uid, uid=OTHER_UID)
        successor = offer.wait(timeout=20)
        assert child.report() == {"names": ["admin", "http"], "leaked": []}
        assert (successor.pid, successor.uid) == (peer_pid(child.pid), OTHER_UID)


def test_a_root_successor_is_refused_by_an_offer_for_another_uid(
        path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners, uid=OTHER_UID) as offer:
        refusing = Background(lambda: wait_until_refused(offer))
        with pytest.raises(PermissionError, match=f"uid {os.geteuid()} is not uid {OTHER_UID}"):
            handoff.take(path, timeout=10)
        refusing.result()
        assert offer.refused[0][0].pid == peer_pid(os.getpid())


# -- successors that do not finish -------------------------------------------

def test_a_successor_that_dies_before_ready_is_followed_by_one_that_succeeds(
        path: str, listeners: Offered) -> None:
    def dies_before_ready() -> dict[str, Any]:
        takeover = handoff.take(path, timeout=10)
        return {"names": sorted(takeover.sockets)}  # and exits, holding them

    with handoff.Offer(path, listeners) as offer:
        dead = Child(dies_before_ready)
        successor = Background(lambda: (dead.report(), take_and_close(path)))
        assert offer.wait(timeout=20).pid == peer_pid(os.getpid()) != dead.pid
        report, got = successor.result()
        assert report["names"] == ["admin", "http"]
    assert got == {name: _identity(sock) for name, sock in listeners.items()}


def test_close_without_ready_lets_the_offer_carry_on(path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners) as offer:
        waiting = Background(lambda: offer.wait(timeout=20))
        take_and_close(path, ready=False)
        take_and_close(path, ready=False)
        take_and_close(path)
        waiting.result()
        assert offer.refused == []


def test_wait_times_out_and_goes_on_with_a_half_way_successor(
        path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners) as offer:
        with pytest.raises(TimeoutError):
            offer.wait(timeout=0.05)  # nobody came
        taken = threading.Event()
        go = threading.Event()

        def successor() -> None:
            with handoff.take(path, timeout=10) as takeover:
                taken.set()
                go.wait(10)
                takeover.ready()
                for sock in takeover.sockets.values():
                    sock.close()

        thread = Background(successor)
        while not taken.is_set():  # each wait() takes it a step further
            with pytest.raises(TimeoutError):
                offer.wait(timeout=0.05)
        with pytest.raises(TimeoutError):
            offer.wait(timeout=0.05)  # it has the sockets, and is not ready yet
        go.set()
        assert offer.wait(timeout=10).pid == peer_pid(os.getpid())
        thread.result()


def taken_half_way(path: str, offer: handoff.Offer) -> handoff.Takeover:
    """A successor in this process that has the sockets and is not ready."""
    taking = Background(lambda: handoff.take(path, timeout=10))
    while True:
        try:
            offer.wait(timeout=0.05)
        except TimeoutError:
            if taking._outcome:
                break
    takeover: handoff.Takeover = taking.result()
    return takeover


def test_ready_fails_when_the_offer_closes_first(path: str, listeners: Offered) -> None:
    offer = handoff.Offer(path, listeners)
    takeover = taken_half_way(path, offer)
    offer.close()  # the old process changed its mind
    with pytest.raises(ConnectionAbortedError, match="without confirming"):
        takeover.ready()
    for sock in takeover.sockets.values():
        sock.close()
    with pytest.raises(ValueError, match="closed"):
        takeover.ready()


def test_drop_peer_turns_a_half_way_successor_away_and_the_offer_goes_on(
        path: str, listeners: Offered) -> None:
    """As docs/restarts.md says of the public drop_peer()."""
    with handoff.Offer(path, listeners) as offer:
        takeover = taken_half_way(path, offer)
        offer.drop_peer()
        with pytest.raises(ConnectionError):
            takeover.ready()
        close_all_sockets(takeover)
        takeover.close()
        assert not offer.closed
        follower = Background(lambda: take_and_close(path))
        assert offer.wait(timeout=10).pid == peer_pid(os.getpid())
        assert follower.result().keys() == listeners.keys()


def test_take_times_out_on_an_offer_nobody_serves(path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners):  # and never wait()s
        with pytest.raises(TimeoutError):
            handoff.take(path, timeout=0.1)
    with pytest.raises(FileNotFoundError):
        handoff.take(path, timeout=0.1)


def test_take_waits_while_the_backlog_is_full(path: str, listeners: Offered) -> None:
    """A full listen backlog made take() fail at once (BlockingIOError)
    despite its timeout: it waits, as a blocking connect does."""
    with handoff.Offer(path, listeners) as offer:
        queued = fill_backlog(path)
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                handoff.take(path, timeout=0.3)
            assert time.monotonic() - started >= 0.25
            taking = Background(lambda: take_and_close(path))
            time.sleep(0.2)
            assert not taking._outcome  # it waits
        finally:
            for client in queued:
                client.close()  # each goes away before its hello: the offer goes on
        assert offer.wait(timeout=20).pid == peer_pid(os.getpid())
        assert sorted(taking.result()) == ["admin", "http"]


@pytest.mark.parametrize("timeout", [0, 0.001])
def test_a_server_polling_its_offer_hands_over(path: str, listeners: Offered,
                                               timeout: float) -> None:
    """wait(0) never made progress: each wait(0) (or a short wait) goes
    as far as it can without waiting, and one of them returns."""
    with handoff.Offer(path, listeners) as offer:
        successor = Background(lambda: take_and_close(path))
        deadline = time.monotonic() + 10
        polls = 0
        while True:
            polls += 1
            try:
                who = offer.wait(timeout)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, f"no progress in {polls} polls"
                time.sleep(0.002)  # the server serves meanwhile
        assert who.pid == peer_pid(os.getpid())
        assert offer.closed
        assert sorted(successor.result()) == ["admin", "http"]


# -- peers that speak garbage or another version ------------------------------

def raw_header(kind: bytes, length: int, version: int = 1,
               magic: bytes = handoff.MAGIC) -> bytes:
    return struct.pack(">4sBcI", magic, version, kind, length)


def recv_all(sock: socket.socket) -> tuple[bytes, int]:
    """Everything until the end of the stream (or a reset: the offer closes
    on unread garbage), and how many descriptors came."""
    data, count = b"", 0
    while True:
        try:
            chunk, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
        except ConnectionResetError:
            return data, count
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds = struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) // 4 * 4])
                count += len(fds)
                for fd in fds:
                    os.close(fd)
        if not chunk:
            return data, count
        data += chunk


@pytest.mark.parametrize(("hello", "answer"), [
    (b"GET / HTTP/1.0\r\n\r\n", b""),
    (raw_header(b"H", 0, version=2), raw_header(b"X", 0)[:6]),
    (raw_header(b"R", 0), raw_header(b"X", 0)[:6]),
    (raw_header(b"H", 3) + b"abc", raw_header(b"X", 0)[:6]),
], ids=["http", "version-2", "ready-first", "hello-with-a-body"])
def test_a_successor_speaking_garbage_or_another_version_is_refused(
        path: str, listeners: Offered, hello: bytes, answer: bytes) -> None:
    with handoff.Offer(path, listeners) as offer:
        waiting = Background(lambda: offer.wait(timeout=20))
        with socket.socket(socket.AF_UNIX) as peer:
            peer.settimeout(10)
            peer.connect(path)
            peer.sendall(hello)
            data, descriptors = recv_all(peer)
        assert descriptors == 0  # refused before any descriptor is sent
        assert data.startswith(answer)
        take_and_close(path)  # the same wait() serves the next one
        waiting.result()
        assert len(offer.refused) == 1
        assert offer.refused[0][0].pid == peer_pid(os.getpid())


def test_a_successor_sending_descriptors_is_refused(path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners) as offer:
        waiting = Background(lambda: offer.wait(timeout=20))
        with socket.socket(socket.AF_UNIX) as peer, open(os.devnull) as null:
            peer.settimeout(10)
            peer.connect(path)
            raw_send(peer, raw_header(b"H", 0), [null.fileno(), null.fileno()])
            assert recv_all(peer)[1] == 0
        take_and_close(path)
        waiting.result()
        assert offer.refused[0][1] == "expected HELLO, got a b'H' frame (0 bytes, 2 descriptors)"


class FakeOffer:
    """A listener at path that answers a successor with script(conn)."""

    def __init__(self, path: str, script: Callable[[socket.socket], None]) -> None:
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(path)
        self._listener.listen()
        self._done = Background(lambda: self._serve(script))

    def _serve(self, script: Callable[[socket.socket], None]) -> None:
        conn, _ = self._listener.accept()
        with conn:
            conn.settimeout(10)
            conn.recv(100)  # the HELLO
            script(conn)

    def close(self) -> None:
        try:
            self._done.result()
        finally:
            self._listener.close()


def names_body(total: int, first: int, *names: str) -> bytes:
    return struct.pack(">II", total, first) + b"".join(
        struct.pack(">H", len(name.encode())) + name.encode() for name in names)


def raw_frame(kind: bytes, body: bytes, version: int = 1) -> bytes:
    return raw_header(kind, len(body), version) + body


@pytest.mark.parametrize(("frames", "error"), [
    ([(b"HTTP/1.1 400 Bad Request\r\n\r\n", 0)], "does not speak fdpass handoff"),
    ([(raw_frame(b"S", names_body(1, 0, "a"), version=3), 1)], "version 3"),
    ([(raw_frame(b"S", names_body(1, 0, "a")), 2)], "1 names and 2 descriptors"),
    ([(raw_frame(b"S", names_body(2, 0, "a")), 1),
      (raw_frame(b"S", names_body(3, 1, "b")), 1)], "announcing 3 sockets after 2"),
    ([(raw_frame(b"S", names_body(1, 0) + b"\x00"), 1)], "bad name"),
    ([(raw_frame(b"S", names_body(1, 0) + b"\x00\x01\xff"), 1)], "bad name"),
    ([(raw_frame(b"Q", b""), 0)], "expected a SOCKETS frame"),
    ([(raw_header(b"S", 1 << 21), 0)], "a handoff frame of"),
    ([(raw_header(b"S", 13) + names_body(1, 0, "a")[:5], 1)], "closed in a frame's body"),
    ([(raw_frame(b"X", b"\x03protocol"), 0)], "refused the handoff: protocol"),
], ids=["http", "version-3", "count", "total", "name-length", "utf-8", "kind", "huge",
        "truncated", "refused"])
def test_take_from_an_offer_speaking_garbage_raises_and_leaks_nothing(
        path: str, frames: list[tuple[bytes, int]], error: str) -> None:
    def script(conn: socket.socket) -> None:
        with open(os.devnull) as null:
            for data, descriptors in frames:
                if descriptors:
                    raw_send(conn, data, [null.fileno()] * descriptors)
                else:
                    conn.sendall(data)

    fake = FakeOffer(path, script)
    try:
        with pytest.raises(fdpass.ProtocolError, match=error):
            handoff.take(path, timeout=10)
    finally:
        fake.close()


def test_take_refuses_a_descriptor_that_is_no_socket(path: str) -> None:
    def script(conn: socket.socket) -> None:
        with open(os.devnull) as null, socket.socket() as tcp:
            raw_send(conn, raw_frame(b"S", names_body(2, 0, "a", "b")),
                     [tcp.fileno(), null.fileno()])

    fake = FakeOffer(path, script)
    try:
        with pytest.raises(fdpass.ProtocolError, match="'b', which is no socket"):
            handoff.take(path, timeout=10)
    finally:
        fake.close()


def test_take_from_an_offer_that_closes_at_once(path: str) -> None:
    fake = FakeOffer(path, lambda conn: None)
    try:
        with pytest.raises(ConnectionAbortedError, match="0 of"):
            handoff.take(path, timeout=10)
    finally:
        fake.close()


def test_a_socket_closed_after_the_offer_is_not_sent(path: str) -> None:
    kept, closing = socket.socket(), socket.socket()
    with kept, handoff.Offer(path, {"kept": kept, "closing": closing}) as offer:
        closing.close()
        with open(os.devnull) as reuses_the_number:  # may take the closed one's number
            taking = Background(lambda: handoff.take(path, timeout=2))
            with pytest.raises(ValueError, match="'closing' is closed"):
                offer.wait(timeout=10)
            with pytest.raises(ConnectionError):  # aborted, or reset on its HELLO
                taking.result()
            assert reuses_the_number.fileno() >= 0


@pytest.mark.parametrize("half_way", [False, True], ids=["accepting", "half-way"])
def test_close_from_another_thread_wakes_wait(path: str, listeners: Offered,
                                              half_way: bool) -> None:
    offer = handoff.Offer(path, listeners)
    takeover = None
    if half_way:  # a successor has the sockets, and is not ready
        taking = Background(lambda: handoff.take(path, timeout=10))
        while not taking._outcome:
            with pytest.raises(TimeoutError):
                offer.wait(timeout=0.05)
        takeover = taking.result()
    waiting = Background(lambda: offer.wait(timeout=30))
    time.sleep(0.2)  # let it block
    offer.close()
    with pytest.raises(ValueError, match="closed"):
        waiting.result()
    assert not os.path.exists(path)
    if takeover is not None:
        with pytest.raises(ConnectionError):
            takeover.ready()
        close_all_sockets(takeover)


def test_sockets_go_in_as_few_frames_as_max_fds_allows(path: str) -> None:
    """A raw successor counts the SOCKETS frames: MAX_FDS + 7 sockets in two."""
    count = fdpass.MAX_FDS + 7
    offered = {f"s{i}": socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for i in range(count)}
    frames: list[int] = []  # descriptors per frame

    def exact(sock: socket.socket, size: int) -> tuple[bytes, list[int]]:
        data = b""
        fds: list[int] = []
        while len(data) < size:
            chunk, ancillary, _, _ = sock.recvmsg(size - len(data), socket.CMSG_SPACE(4 * 300))
            assert chunk
            data += chunk
            for _, _, payload in ancillary:
                fds.extend(struct.unpack(f"{len(payload) // 4}i", payload))
        return data, fds

    try:
        with handoff.Offer(path, offered) as offer:
            waiting = Background(lambda: offer.wait(timeout=20))
            with socket.socket(socket.AF_UNIX) as peer:
                peer.settimeout(10)
                peer.connect(path)
                peer.sendall(raw_header(b"H", 0))
                while sum(frames) < count:
                    header, fds = exact(peer, 10)
                    assert header[:6] == raw_header(b"S", 0)[:6]
                    body, more = exact(peer, struct.unpack(">I", header[6:])[0])
                    frames.append(len(fds + more))
                    for fd in fds + more:
                        os.close(fd)
                peer.sendall(raw_header(b"R", 0))
                assert exact(peer, 10)[0] == raw_header(b"D", 0)
            assert waiting.result().pid == peer_pid(os.getpid())
    finally:
        for sock in offered.values():
            sock.close()
    assert frames == [fdpass.MAX_FDS, 7]
