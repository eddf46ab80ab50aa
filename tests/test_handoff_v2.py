"""fdpass.handoff, protocol version 2: moving live connections with their
state.  Long-lived connections across three replacements of real
processes, a successor killed in the middle of a move, a move that times
out, version 1 peers both ways, and hostile frames from either side.
Every test runs under the leak check; the server processes report their
own descriptors."""

from __future__ import annotations

import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import fdpass
from fdpass import handoff
from fdpass.handoff import MAX_STATE, Item
from support import PACKAGE_ROOT, raw_send, same_file
from test_handoff import (  # noqa: F401  (fixtures)
    Background, FakeOffer, Offered, path, shared_dir)

LIVE_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "live_server.py")
CLIENTS = 4


# -- long-lived connections across real processes -----------------------------

class Client:
    """A long-lived connection, in a thread: a request every 3 ms, each
    answered "generation count", count the requests answered before on
    this connection (the state that moves with it)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.generations: list[int] = []
        self.errors: list[BaseException] = []
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        with self.sock.makefile("rb") as reader:
            try:
                while not self._stop.is_set():
                    self.sock.sendall(b"%d\n" % self.answered)
                    line = reader.readline()
                    if not line:
                        raise EOFError("the server ended the connection")
                    generation, count = map(int, line.split())
                    assert count == self.answered, line  # the state moved intact
                    if self.generations[-1:] != [generation]:
                        self.generations.append(generation)
                    self.answered += 1
                    time.sleep(0.003)
            except BaseException as error:
                self.errors.append(error)

    def answered_more(self, seconds: float) -> bool:
        before = self.answered
        time.sleep(seconds)
        return self.answered > before

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.sock.close()


class Generation:
    """A live_server.py process and the lines it prints."""

    def __init__(self, path: str, generation: int, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, LIVE_SERVER, path, str(generation), *args], cwd=PACKAGE_ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def expect(self, word: str, timeout: float = 20) -> str:
        line = self._lines.get(timeout=timeout)
        assert line.split()[0] == word, line
        return line[len(word):].strip()

    def stop(self) -> None:
        """Close its stdin (it exits), and check it left nothing open."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.expect("exit") == "[]"
        assert self.proc.wait(10) == 0

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def generations() -> Iterator[Callable[..., Generation]]:
    started: list[Generation] = []

    def start(path: str, generation: int, *args: str) -> Generation:
        started.append(Generation(path, generation, *args))
        return started[-1]

    yield start
    for generation in started:
        generation.end()


def replace(old: Generation, new: Generation, number: int, moved: str) -> None:
    """new takes over from old, which moves its connections and exits at once."""
    new.expect("serving")
    assert old.expect("moved") == moved
    moved_at = time.monotonic()
    assert old.expect("exit") == "[]"
    assert old.proc.wait(10) == 0
    assert time.monotonic() - moved_at < 2, "the old process lingered after its move"


def test_long_lived_connections_survive_three_replacements(
        path: str, generations: Callable[..., Generation]) -> None:
    servers = [generations(path, 0)]
    port = int(servers[0].expect("port"))
    servers[0].expect("serving")
    clients = [Client(port) for _ in range(CLIENTS)]
    try:
        for number in (1, 2, 3):
            assert all(client.answered_more(0.1) for client in clients)
            servers.append(generations(path, number))
            replace(servers[-2], servers[-1], number, f"{CLIENTS} 0")
        assert all(client.answered_more(0.1) for client in clients)
    finally:
        for client in clients:
            client.close()
    servers[-1].stop()
    for client in clients:
        assert not client.errors  # no reset, no EOF, no unanswered request
        assert client.generations == [0, 1, 2, 3]  # and the count went on: state intact


def test_a_successor_killed_mid_move_leaves_the_rest_with_the_old_process(
        path: str, generations: Callable[..., Generation]) -> None:
    old = generations(path, 0)
    port = int(old.expect("port"))
    old.expect("serving")
    clients = [Client(port) for _ in range(CLIENTS)]
    try:
        assert all(client.answered_more(0.1) for client in clients)
        killed = generations(path, 1, "1")  # dies after one item: the rest came, unacknowledged
        assert old.expect("moved") == f"1 {CLIENTS - 1}"
        assert killed.proc.wait(10) == -9
        time.sleep(0.2)
        survivors = [client for client in clients if not client.errors]
        assert len(survivors) == CLIENTS - 1  # the one taken went with the process that took it
        assert all(client.answered_more(0.2) for client in survivors)  # still served
        assert all(client.generations == [0] for client in survivors)
        new = generations(path, 2)  # and moved on later, the old process offering again
        replace(old, new, 2, f"{CLIENTS - 1} 0")
        assert all(client.answered_more(0.1) for client in survivors)
    finally:
        for client in clients:
            client.close()
    new.stop()
    assert all(not client.errors and client.generations == [0, 2] for client in survivors)


# -- in one process: what moves, what is closed, order, timeouts --------------

def handed_over(path: str, listeners: Offered) -> tuple[handoff.Offer, handoff.Takeover]:
    """An offer whose wait() has returned, and its successor, ready."""
    offer = handoff.Offer(path, listeners)
    waiting = Background(lambda: offer.wait(timeout=20))
    takeover = handoff.take(path, timeout=20)
    takeover.ready()
    waiting.result()
    for sock in takeover.sockets.values():
        sock.close()
    return offer, takeover


def test_items_move_with_their_state_and_the_old_copies_close(
        path: str, listeners: Offered) -> None:
    offer, takeover = handed_over(path, listeners)
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    r, w = os.pipe()
    first: list[Item[Any]] = [Item("ws", [a], b"x" * MAX_STATE),
                              Item("db", [b.fileno(), r, w], b"")]
    identities = [os.fstat(fd).st_ino for fd in (a.fileno(), b.fileno(), r, w)]
    with offer, takeover, a_peer, b_peer:
        moving = Background(lambda: offer.move(first, timeout=20))
        got = [next(takeover.items(timeout=20)) for _ in first]
        assert moving.result() == (first, [])
        assert [(item.name, item.state) for item in got] == [("ws", b"x" * MAX_STATE),
                                                             ("db", b"")]
        assert [os.fstat(fd).st_ino for item in got for fd in item.fds] == identities
        assert a.fileno() == -1  # closed as close() closes it
        assert fdpass.wait_for_discards(10)
        for fd in (b.fileno(), r, w):
            with pytest.raises(OSError):
                os.fstat(fd)
        b.detach()  # its number, closed by the move
        a_got = socket.socket(fileno=got[0].fds[0])
        with a_got:
            a_peer.sendall(b"still open")
            assert a_got.recv(100) == b"still open"
        for fd in got[1].fds:
            os.close(fd)
        c, c_peer = socket.socketpair()
        with c_peer:
            second = Background(lambda: offer.move([Item("later", [c])], timeout=20))
            (later,) = [next(takeover.items(timeout=20))]
            assert later.name == "later" and second.result().kept == []
            os.close(later.fds[0])
        offer.close()
        assert list(takeover.items(timeout=20)) == []  # the old process closed its offer


def test_items_timeout_bounds_each_wait_and_the_next_call_goes_on(
        path: str, listeners: Offered) -> None:
    offer, takeover = handed_over(path, listeners)
    a, a_peer = socket.socketpair()
    with offer, takeover, a_peer:
        with pytest.raises(TimeoutError):
            next(takeover.items(timeout=0.05))
        moving = Background(lambda: offer.move([Item("a", [a])], timeout=20))
        got = next(takeover.items(timeout=20))
        assert moving.result().taken[0].name == "a"
        os.close(got.fds[0])


def test_a_timed_out_move_keeps_everything_and_a_late_ack_never_counts(
        path: str, listeners: Offered) -> None:
    offer, takeover = handed_over(path, listeners)
    a, a_peer = socket.socketpair()
    with offer, takeover, a, a_peer:
        items = [Item("a", [a], b"state")]
        started = time.monotonic()
        assert offer.move(items, timeout=0.2) == ([], items)
        assert time.monotonic() - started < 5
        # The ITEM waits in the successor's socket; its ACK comes too late.
        assert list(takeover.items(timeout=20)) == []
        assert a.fileno() >= 0
        assert offer.move(items, timeout=20) == ([], items)  # the moves have ended


def test_close_from_another_thread_ends_a_move_keeping_the_rest(
        path: str, listeners: Offered) -> None:
    offer, takeover = handed_over(path, listeners)
    a, a_peer = socket.socketpair()
    with offer, takeover, a, a_peer:
        items = [Item("a", [a])]
        moving = Background(lambda: offer.move(items, timeout=20))
        time.sleep(0.2)  # the ITEM is sent; its ACK never comes
        closed = time.monotonic()
        offer.close()
        assert moving.result() == ([], items)
        assert time.monotonic() - closed < 5  # woken, not timed out
        assert a.fileno() >= 0


def test_move_before_wait_or_after_close_touches_nothing(
        path: str, listeners: Offered) -> None:
    a, a_peer = socket.socketpair()
    with a, a_peer:
        items = [Item("a", [a])]
        with handoff.Offer(path, listeners) as offer:
            with pytest.raises(ValueError, match="after wait"):
                offer.move(items)
        with pytest.raises(ValueError, match="before close"):
            offer.move(items)
        offer, takeover = handed_over(path, listeners)
        with takeover:
            offer.close()
            with pytest.raises(ValueError):
                offer.move(items)
        assert a.fileno() >= 0


def test_items_before_ready_is_a_value_error(path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners) as offer:
        waiting = Background(lambda: offer.wait(timeout=20))
        with handoff.take(path, timeout=20) as takeover:
            with pytest.raises(ValueError, match="after ready"):
                takeover.items()
            for sock in takeover.sockets.values():
                sock.close()
            takeover.ready()
        waiting.result()


@pytest.mark.parametrize(("args", "error"), [
    (("a", []), ValueError),
    (("a", list(range(3, 3 + fdpass.MAX_FDS + 1))), ValueError),
    (("a", [0], b"x" * (MAX_STATE + 1)), ValueError),
    (("a", [0], "text"), TypeError),
    (("", [0]), ValueError),
    (("x" * 256, [0]), ValueError),
    ((b"a", [0]), TypeError),
    (("a", [True]), TypeError),
    (("a", [-1]), ValueError),
    (("a", [1.0]), TypeError),
    (("a", "01"), TypeError),
])
def test_item_checks(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        Item(*args)


def test_an_item_of_a_closed_socket_is_a_value_error() -> None:
    sock = socket.socket()
    sock.close()
    with pytest.raises(ValueError, match="closed"):
        Item("a", [sock])


def test_a_descriptor_in_two_items_is_refused_before_anything_moves(
        path: str, listeners: Offered) -> None:
    offer, takeover = handed_over(path, listeners)
    a, a_peer = socket.socketpair()
    with offer, takeover, a, a_peer:
        with pytest.raises(ValueError, match="twice"):
            offer.move([Item("a", [a]), Item("b", [a.fileno()])])
        with pytest.raises(TypeError):
            offer.move(["a"])  # type: ignore[list-item]


# -- raw peers: version 1, other versions, hostile frames ---------------------

def frame(kind: bytes, body: bytes = b"", version: int = 2) -> bytes:
    return struct.pack(">4sBcI", b"FDHO", version, kind, len(body)) + body


def number(n: int) -> bytes:
    return struct.pack(">I", n)


def item_body(n: int, name: bytes = b"a", state: bytes = b"") -> bytes:
    return struct.pack(">IH", n, len(name)) + name + state


def read_frame(sock: socket.socket) -> tuple[int, bytes, bytes, list[int]]:
    """One frame, as a raw peer reads it: (version, kind, body, descriptors)."""
    def exactly(size: int, fds: list[int]) -> bytes:
        data = b""
        while len(data) < size:
            chunk, ancillary, _, _ = sock.recvmsg(size - len(data), socket.CMSG_SPACE(253 * 4))
            for _, _, payload in ancillary:
                fds.extend(struct.unpack(f"{len(payload) // 4}i", payload))
            assert chunk, "the peer closed"
            data += chunk
        return data

    fds: list[int] = []
    magic, version, kind, length = struct.unpack(">4sBcI", exactly(10, fds))
    assert magic == b"FDHO"
    return version, kind, exactly(length, fds) if length else b"", fds


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def raw_successor(path: str, hello: bytes) -> tuple[socket.socket, int]:
    """Connect, say hello, take the SOCKETS (closing them), say READY, read
    DONE: the connection and the version of the offer's frames."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(hello)
    version, kind, _, fds = read_frame(sock)
    assert kind == b"S", kind
    close_fds(fds)
    sock.sendall(frame(b"R", version=version))
    assert read_frame(sock)[:2] == (version, b"D")
    return sock, version


def test_a_bare_version_1_hello_is_served_as_version_1_and_nothing_moves(
        path: str, listeners: Offered) -> None:
    a, a_peer = socket.socketpair()
    with handoff.Offer(path, listeners) as offer, a, a_peer:
        waiting = Background(lambda: offer.wait(timeout=20))
        sock, version = raw_successor(path, frame(b"H", version=1))
        with sock:
            assert version == 1
            waiting.result()
            items = [Item("a", [a])]
            started = time.monotonic()
            assert offer.move(items, timeout=20) == ([], items)  # promptly
            assert time.monotonic() - started < 1
            assert sock.recv(100) == b""  # a version-1 successor is let go after DONE


@pytest.mark.parametrize(("versions", "spoken"), [((1, 2), 2), ((1, 9), 2), ((2, 2), 2),
                                                   ((1, 1), 1)])
def test_the_highest_common_version_is_spoken(path: str, listeners: Offered,
                                              versions: tuple[int, int], spoken: int) -> None:
    with handoff.Offer(path, listeners) as offer:
        waiting = Background(lambda: offer.wait(timeout=20))
        sock, version = raw_successor(
            path, frame(b"H", struct.pack(">BB", *versions), version=max(versions[1], 2)))
        with sock:
            assert version == spoken
            waiting.result()


def test_a_successor_of_later_versions_only_is_refused(path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners) as offer:
        waiting = Background(lambda: offer.wait(timeout=20))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(frame(b"H", b"\x03\x04", version=4))
            version, kind, body, fds = read_frame(sock)
            assert (version, kind, body[:1], fds) == (1, b"X", b"\x02", [])
            assert b"versions 3 to 4" in body
        for _ in range(100):
            if offer.refused:
                break
            time.sleep(0.01)
        assert "versions 3 to 4" in offer.refused[0][1]
        offer.close()
        with pytest.raises(ValueError):
            waiting.result()


class Version1Offer:
    """An offer as fdpass 1.x made it: a version-2 HELLO is refused (code
    2, version), a bare version-1 HELLO served."""

    def __init__(self, path: str, sock: socket.socket) -> None:
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(path)
        self._listener.listen()
        self._listener.settimeout(10)
        self.hellos: list[bytes] = []
        self._done = Background(lambda: self._serve(sock))

    def _serve(self, sock: socket.socket) -> None:
        for _ in range(2):  # the version-2 HELLO, then the bare one
            conn, _ = self._listener.accept()
            with conn:
                conn.settimeout(10)
                version, kind, body, fds = read_frame(conn)
                self.hellos.append(frame(kind, body, version))
                if version != 1:
                    conn.sendall(frame(b"X", b"\x02the handoff peer speaks protocol version 2; "
                                             b"this fdpass speaks version 1", version=1))
                    continue
                names = struct.pack(">IIH", 1, 0, 3) + b"tcp"
                raw_send(conn, frame(b"S", names, version=1), [sock.fileno()])
                assert read_frame(conn)[:3] == (1, b"R", b"")
                conn.sendall(frame(b"D", version=1))
                return

    def close(self) -> None:
        try:
            self._done.result()
        finally:
            self._listener.close()


def test_a_version_2_successor_falls_back_to_a_version_1_offer(
        path: str, listeners: Offered) -> None:
    old = Version1Offer(path, listeners["http"])
    try:
        with handoff.take(path, timeout=20) as takeover:
            assert takeover.version == 1
            with takeover.sockets["tcp"] as tcp:
                assert same_file(tcp.fileno(), listeners["http"].fileno())
            takeover.ready()
            assert list(takeover.items(timeout=20)) == []  # nothing moves from version 1
    finally:
        old.close()
    assert [hello[4] for hello in old.hellos] == [2, 1]
    assert old.hellos[1] == frame(b"H", version=1)  # a bare version-1 HELLO, as 1.x sends


@pytest.mark.parametrize(("answer", "taken", "error"), [
    (lambda sock: sock.sendall(frame(b"A", number(7))), 0, "expected the ACK of item #0"),
    (lambda sock: sock.sendall(frame(b"A", number(0)) + frame(b"A", number(0))), 1,
     "expected the ACK of item #1"),
    (lambda sock: raw_send(sock, frame(b"A", number(0)), [sock.fileno()]), 0,
     "1 descriptors"),
    (lambda sock: sock.sendall(b"GET / HTTP/1.0\r\n\r\n"), 0, "does not speak"),
    (lambda sock: sock.sendall(frame(b"A", number(0), version=3)), 0, "version 3"),
    (lambda sock: sock.sendall(frame(b"R")), 0, "got a b'R' frame"),
    (lambda sock: sock.sendall(frame(b"A", b"\x00")), 0, "expected the ACK of item #0"),
], ids=["unknown-item", "duplicate", "descriptors", "garbage", "version", "kind", "short"])
def test_bad_acknowledgements_keep_what_was_not_taken(
        path: str, listeners: Offered, answer: Callable[[socket.socket], None], taken: int,
        error: str) -> None:
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    with handoff.Offer(path, listeners) as offer, a, a_peer, b, b_peer:
        waiting = Background(lambda: offer.wait(timeout=20))
        sock, _ = raw_successor(path, frame(b"H", b"\x01\x02"))
        with sock:
            waiting.result()
            items = [Item("a", [a]), Item("b", [b])]
            moving = Background(lambda: offer.move(items, timeout=20))
            for n in (0, 1):
                version, kind, body, fds = read_frame(sock)
                close_fds(fds)
                assert (kind, body[:4]) == (b"I", number(n))
            answer(sock)
            moved = moving.result()
        assert moved == (items[:taken], items[taken:])
        assert [item.fds[0].fileno() == -1 for item in items] == [True] * taken + [False] * (
            2 - taken)
        assert error in offer.refused[-1][1]


def handshake(script: Callable[[socket.socket], None]) -> Callable[[socket.socket], None]:
    """A version-2 offer by hand, for FakeOffer: after the successor's
    HELLO, one socket, then READY and DONE, then script(conn)."""
    def serve(conn: socket.socket) -> None:
        raw_send(conn, frame(b"S", struct.pack(">IIH", 1, 0, 1) + b"n"), [conn.fileno()])
        assert read_frame(conn)[:2] == (2, b"R")
        conn.sendall(frame(b"D"))
        script(conn)
    return serve


def send_item(conn: socket.socket, body: bytes, count: int = 1) -> None:
    data = frame(b"I", body)
    with open(os.devnull) as null:
        raw_send(conn, data[:1], *([[null.fileno()] * count] if count else []))
    conn.sendall(data[1:])


def acked_then(then: bytes, descriptors: int = 0) -> Callable[[socket.socket], None]:
    """Send item #0 and after its ACK, then (with descriptors)."""
    def script(conn: socket.socket) -> None:
        send_item(conn, item_body(0))
        assert read_frame(conn)[1:] == (b"A", number(0), [])
        with open(os.devnull) as null:
            raw_send(conn, then, *([[null.fileno()] * descriptors] if descriptors else []))
    return script


def too_many_descriptors(conn: socket.socket) -> None:
    data = frame(b"I", item_body(0))
    with open(os.devnull) as null:
        raw_send(conn, data[:5], [null.fileno()] * fdpass.MAX_FDS)
        raw_send(conn, data[5:], [null.fileno()])


@pytest.mark.parametrize(("script", "error"), [
    (lambda conn: send_item(conn, item_body(0), 0), "came with 0 descriptors"),
    (too_many_descriptors, f"came with {fdpass.MAX_FDS + 1} descriptors"),
    (lambda conn: send_item(conn, item_body(5)), "not item #0"),
    (lambda conn: send_item(conn, item_body(0, state=b"s" * (MAX_STATE + 1))),
     f"{MAX_STATE + 1} bytes of state"),
    (lambda conn: conn.sendall(struct.pack(">4sBcI", b"FDHO", 2, b"I", 1 << 21)),
     "a handoff frame of"),
    (lambda conn: send_item(conn, item_body(0, name=b"\xff")), "bad name"),
    (lambda conn: send_item(conn, item_body(0)[:5]), "not item #0"),
    (lambda conn: conn.sendall(frame(b"Q")), "expected an ITEM frame"),
    (lambda conn: conn.sendall(frame(b"I", item_body(0), version=3)), "version 3"),
    (acked_then(frame(b"C", number(0)), 1), "expected the COMMIT of item #0"),
    (acked_then(frame(b"C", number(1))), "expected the COMMIT of item #0"),
    (acked_then(frame(b"D")), "expected the COMMIT of item #0"),
    (acked_then(frame(b"I", item_body(5)), 1), "not item #1"),
], ids=["no-descriptors", "too-many-descriptors", "number", "state", "huge", "name",
        "short", "kind", "version", "commit-with-descriptors", "commit-other-item",
        "commit-kind", "ahead-number"])
def test_items_from_an_offer_speaking_garbage_raise_and_leak_nothing(
        path: str, script: Callable[[socket.socket], None], error: str) -> None:
    old = FakeOffer(path, handshake(script))
    try:
        with handoff.take(path, timeout=20) as takeover:
            for sock in takeover.sockets.values():
                sock.close()
            takeover.ready()
            with pytest.raises(fdpass.ProtocolError, match=error):
                next(takeover.items(timeout=20))
            assert list(takeover.items(timeout=20)) == []  # the moves have ended
    finally:
        old.close()
