"""Every room of fdpass that receives descriptors, against a hostile peer
that attaches a lingering socket (support.Lingering: a TCP socket whose
last close blocks for conftest.LINGER seconds) where the room discards.

The rooms: FDChannel's receives (extras, a record too long, refuse_fds),
the functional recv, the converters given the wrong kind of descriptor,
a receive during which the kernel discards (the process at RLIMIT_NOFILE),
fdpass.aio's receives, converters and closes (on asyncio's loop and
uvloop), and both sides of the handoff in both forms (a hostile successor
against Offer.wait and AsyncOffer.wait, a hostile offer against take and
aio.take), and the moves of protocol version 2 in both forms (a hostile
old process against items(), a hostile successor against move()).
fdpass.systemd receives nothing (see the last test).

In each, the room raises the contract's error at once, no other thread
(support.Ticker) and no event loop (support.LoopTicker) stops for more
than STALL, a received lingering socket is closed abortively at once (its
peer sees a reset), and nothing leaks (the autouse fixture)."""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import resource
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import fdpass
from fdpass import FDChannel, ProtocolError, aio, handoff, systemd
from fdpass._channel import REFUSAL_ENV
from fdpass.aio import AsyncFDChannel
from fdpass.handoff import MAX_STATE, Item
from support import (
    MUSL, MUSL_SENDMSG_CONTROL_MAX, Lingering, LoopTicker, Ticker, attach_lingering,
    needs_defused_queues, needs_passcred, raw_send,
)
from test_aio import Runner, libuv_started, run  # noqa: F401  (fixtures)
from test_handoff import Background, FakeOffer, names_body, raw_frame, raw_header
from test_handoff_v2 import (
    frame, handshake, item_body, number, raw_successor, read_frame, send_item)

#: The longest any thread or loop may stop, and any room's call may take.
STALL = 0.5
TOO_MANY = "2 descriptors where at most 1"
Make = Callable[[], Lingering]


def assert_refused_at_once(held: Lingering) -> None:
    """The received lingering socket was closed without lingering: at once,
    and its peer sees a reset, not an orderly end."""
    assert fdpass.wait_for_discards(STALL), "a received socket's close lingered"
    assert held.reset_seen(STALL)


def assert_closed_at_once(read_end: int) -> None:
    """The discarded write end of a pipe is closed: its read end sees EOF."""
    os.set_blocking(read_end, False)
    deadline = time.monotonic() + STALL
    while True:
        try:
            assert os.read(read_end, 1) == b""
            return
        except BlockingIOError:
            assert time.monotonic() < deadline, "the discarded descriptor is still open"
            time.sleep(0.005)


class Timed:
    """The calling thread's time in a with block, under a Ticker: neither
    may reach STALL."""

    def __enter__(self) -> Timed:
        self._ticker = Ticker().__enter__()
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.monotonic() - self._start
        self._ticker.__exit__()
        assert elapsed < STALL, f"the room's call took {elapsed:.2f} s"
        assert self._ticker.longest < STALL, \
            f"another thread stopped for {self._ticker.longest:.2f} s"


# -- FDChannel, the functional API, the converters ----------------------------

class Room(NamedTuple):
    """A receive of FDChannel, or of AsyncFDChannel (the same names, awaited)."""
    call: Callable[[Any], Any]
    error: type[BaseException]
    match: str
    passcred: bool = False


#: Each receive, given a message with a pipe and a lingering socket where
#: it takes at most one descriptor.
EXTRAS = {
    "recv_fd": Room(lambda ch: ch.recv_fd(), ProtocolError, TOO_MANY),
    "recv_fds": Room(lambda ch: ch.recv_fds(1), ProtocolError, TOO_MANY),
    "recv_message": Room(lambda ch: ch.recv_message(16, 1), ProtocolError, TOO_MANY),
    "recv_message_from": Room(lambda ch: ch.recv_message_from(16, 1), ProtocolError, TOO_MANY,
                              passcred=True),
    "recv_file": Room(lambda ch: ch.recv_file(), ProtocolError, TOO_MANY),
    "recv_socket": Room(lambda ch: ch.recv_socket(), ProtocolError, TOO_MANY),
}


@pytest.mark.parametrize("room", sorted(EXTRAS))
def test_a_channel_refuses_a_lingering_extra(
        stream: tuple[socket.socket, socket.socket], pipe: tuple[int, int],
        lingering: Make, room: str) -> None:
    peer, mine = stream
    call, error, match, passcred = EXTRAS[room]
    if passcred:
        needs_passcred()
    with FDChannel(mine, closefd=False, passcred=passcred) as rx:
        held = lingering()
        attach_lingering(peer, held, b"\0", [pipe[0]])
        with Timed(), pytest.raises(error, match=match):
            call(rx)
        assert_refused_at_once(held)


@pytest.mark.parametrize("kind", [socket.SOCK_SEQPACKET, socket.SOCK_DGRAM],
                         ids=["seqpacket", "dgram"])
def test_a_record_too_long_is_refused_with_its_lingering_socket(
        lingering: Make, kind: int) -> None:
    peer, mine = socket.socketpair(socket.AF_UNIX, kind)
    with peer, mine, FDChannel(mine, closefd=False) as rx:
        held = lingering()
        attach_lingering(peer, held, b"longer than bufsize", [])
        with Timed(), pytest.raises(ProtocolError, match="longer than bufsize"):
            rx.recv_message(4)
        assert_refused_at_once(held)


@pytest.mark.parametrize("forced", [False, True], ids=["queued-before-refusal", "at-receipt"])
def test_a_refusing_channel_refuses_a_lingering_socket(
        stream: tuple[socket.socket, socket.socket], lingering: Make,
        monkeypatch: pytest.MonkeyPatch, forced: bool) -> None:
    # Where the kernel refuses (SO_PASSRIGHTS), only what was queued before
    # refusal took effect arrives; elsewhere (forced here) everything does.
    peer, mine = stream
    if forced:
        monkeypatch.setenv(REFUSAL_ENV, "1")
    held = lingering()
    attach_lingering(peer, held, b"\0", [])
    with FDChannel(mine, closefd=False, refuse_fds=True) as rx:
        with Timed(), pytest.raises(ProtocolError, match="refuses descriptors"):
            rx.recv_message(16)
    assert_refused_at_once(held)


def test_the_functional_recv_refuses_a_lingering_extra(
        stream: tuple[socket.socket, socket.socket], pipe: tuple[int, int],
        lingering: Make) -> None:
    peer, mine = stream
    held = lingering()
    attach_lingering(peer, held, b"\0", [pipe[0]])
    with Timed():
        assert fdpass.recv(mine.fileno()) == -1
    assert fdpass.get_errno() == errno.EBADMSG
    assert_refused_at_once(held)


#: Converters given a pipe's write end: the wrong kind of descriptor.
WRONG_KIND = {
    "recv_socket": Room(lambda ch: ch.recv_socket(), OSError, "not a socket"),
    "recv_file": Room(lambda ch: ch.recv_file("rb"), ValueError, "write-only"),
}


@pytest.mark.parametrize("room", sorted(WRONG_KIND))
def test_a_converter_discards_the_wrong_kind_at_once(
        stream: tuple[socket.socket, socket.socket], room: str) -> None:
    peer, mine = stream
    call, error, match, _ = WRONG_KIND[room]
    r, w = os.pipe()
    try:
        raw_send(peer, b"\0", [w])
        os.close(w)
        with FDChannel(mine, closefd=False) as rx, Timed(), pytest.raises(error, match=match):
            call(rx)
        assert_closed_at_once(r)
    finally:
        os.close(r)


@pytest.fixture
def few_descriptors_left() -> Iterator[Callable[[int], None]]:
    """Lowers RLIMIT_NOFILE to leave room for n more descriptors; restores
    it, and closes what filled the table, at the end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []

    def leave(n: int) -> None:
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + n, hard))
        try:
            while True:
                held.append(os.dup(0))
        except OSError:
            pass
        for _ in range(n):
            os.close(held.pop())

    try:
        yield leave
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_receive_during_which_the_kernel_discards_stops_no_thread(
        stream: tuple[socket.socket, socket.socket], pipe: tuple[int, int],
        few_descriptors_left: Callable[[int], None]) -> None:
    # Room for the pipe only: the kernel drops the lingering socket inside
    # recvmsg, and its last close is the kernel's, in this thread (which
    # lingers: 2 * STALL here, to keep the run short).
    peer, mine = stream
    held = Lingering(int(2 * STALL + 0.5))
    try:
        attach_lingering(peer, held, b"\0", [pipe[0]])
        with FDChannel(mine, closefd=False) as rx:
            few_descriptors_left(1)
            ticker = Ticker()
            with ticker, pytest.raises(ProtocolError, match="RLIMIT_NOFILE"):
                rx.recv_fds()
    finally:
        held.close()
    assert ticker.longest < STALL, f"another thread stopped for {ticker.longest:.2f} s"


# -- fdpass.aio, on asyncio's loop and uvloop ---------------------------------

def on_the_loop(run: Runner, main: Callable[[], Awaitable[None]]) -> None:
    """Run main() with a LoopTicker and a Ticker on: neither may stop."""
    async def watched() -> float:
        with Ticker() as ticker:
            async with LoopTicker() as loop_ticker:
                await main()
        assert ticker.longest < STALL, f"another thread stopped for {ticker.longest:.2f} s"
        return loop_ticker.longest

    longest = run(watched())
    assert longest < STALL, f"the event loop stopped for {longest:.2f} s"


async def received_while_waiting(room: Room, send: Callable[[socket.socket], None]) -> None:
    """room's call waits on the loop; then send(peer) sends it what it
    must refuse, and it raises the room's error at once."""
    x, y = socket.socketpair()
    async with AsyncFDChannel(x) as peer, AsyncFDChannel(y, passcred=room.passcred) as rx:
        receiving = asyncio.ensure_future(room.call(rx))
        await asyncio.sleep(0.02)
        assert not receiving.done()
        send(peer._sock)
        start = time.monotonic()
        with pytest.raises(room.error, match=room.match):
            await receiving
        assert time.monotonic() - start < STALL


@pytest.mark.parametrize("room", sorted(EXTRAS))
def test_an_async_channel_refuses_a_lingering_extra(
        run: Runner, pipe: tuple[int, int], lingering: Make, room: str) -> None:
    if EXTRAS[room].passcred:
        needs_passcred()
    held = lingering()
    on_the_loop(run, lambda: received_while_waiting(
        EXTRAS[room], lambda peer: attach_lingering(peer, held, b"\0", [pipe[0]])))
    assert_refused_at_once(held)


@pytest.mark.parametrize("room", sorted(WRONG_KIND))
def test_an_async_converter_discards_the_wrong_kind_at_once(run: Runner, room: str) -> None:
    r, w = os.pipe()

    def send(peer: socket.socket) -> None:
        raw_send(peer, b"\0", [w])
        os.close(w)

    try:
        on_the_loop(run, lambda: received_while_waiting(WRONG_KIND[room], send))
        assert_closed_at_once(r)
    finally:
        os.close(r)


def test_closing_an_async_channel_with_a_lingering_socket_queued(
        run: Runner, lingering: Make) -> None:
    needs_defused_queues()
    held = lingering()

    async def main() -> None:
        a, b = AsyncFDChannel.pair()
        async with a:
            attach_lingering(a._sock, held, b"\0", [])
            with Timed():
                b.close()

    on_the_loop(run, main)
    assert_refused_at_once(held)  # the channel's queue was defused


def test_closing_a_server_with_unaccepted_lingering_connections(
        run: Runner, tmp_path: Path, lingering: Make) -> None:
    path = tmp_path / "s"
    held = [lingering(), lingering()]

    async def unaccepted() -> None:
        server = await aio.start_server(lambda channel: channel.recv_fd(), path)
        clients = [socket.socket(socket.AF_UNIX) for _ in held]
        try:
            for client, one in zip(clients, held):
                client.connect(str(path))
                attach_lingering(client, one, b"\0", [])
            with Timed():
                server.close()
            await server.wait_closed()
        finally:
            for client in clients:
                client.close()

    on_the_loop(run, unaccepted)
    for one in held:  # the connections' queues are not defused: their closes may block
        one.peer.close()
    assert fdpass.wait_for_discards(STALL)


# -- the handoff: a hostile successor against Offer.wait and AsyncOffer.wait --

Offered = dict[str, socket.socket]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "offer.sock")


def read_sockets_frames(conn: socket.socket, count: int) -> None:
    """As a successor: read SOCKETS frames until count descriptors came,
    closing them."""
    got = 0
    while got < count:
        data, ancillary, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
        assert data, "the offer hung up before sending its sockets"
        for _, _, payload in ancillary:
            fds = [int.from_bytes(payload[i:i + 4], "little", signed=True)
                   for i in range(0, len(payload) - len(payload) % 4, 4)]
            got += len(fds)
            for fd in fds:
                os.close(fd)


Script = Callable[[socket.socket, Lingering, int], object]


class Successor(NamedTuple):
    first: Script  # sent at once, before the offer reads anything
    refused: str
    then: Script | None = None  # in a thread, while the offer waits


def ready_with(conn: socket.socket, held: Lingering, fd: int) -> None:
    """Take the offered sockets, then say READY with descriptors."""
    read_sockets_frames(conn, 2)
    attach_lingering(conn, held, raw_header(b"R", 0), [fd])


def hello_with_a_body_then(conn: socket.socket, held: Lingering, fd: int) -> None:
    """A HELLO the offer refuses, and descriptors it never reads behind it."""
    conn.sendall(raw_header(b"H", 3) + b"abc")
    attach_lingering(conn, held, b"\0", [fd])


SUCCESSORS = {
    "hello-with-descriptors": Successor(
        lambda conn, held, fd: attach_lingering(conn, held, raw_header(b"H", 0), [fd]),
        "expected HELLO"),
    "garbage-with-descriptors": Successor(
        lambda conn, held, fd: attach_lingering(conn, held, b"GET / HTTP/1.0\r\n\r\n", [fd]),
        "does not speak fdpass handoff"),
    "version-3-with-descriptors": Successor(
        lambda conn, held, fd: attach_lingering(conn, held, raw_header(b"H", 0, version=3),
                                                [fd]),
        "expected a HELLO with a version range"),
    "ready-with-descriptors": Successor(
        lambda conn, held, fd: conn.sendall(raw_header(b"H", 0)), "expected READY",
        then=ready_with),
    "hello-with-a-body-then-queued": Successor(
        hello_with_a_body_then, "expected HELLO"),
}


class HostileSuccessor:
    """Connects to the offer at path and sends its first words; then, in
    a thread, goes on and reads until the offer hangs up."""

    def __init__(self, path: str, successor: Successor, held: Lingering, fd: int) -> None:
        self.conn = socket.socket(socket.AF_UNIX)
        self.conn.settimeout(10)
        self.conn.connect(path)
        successor.first(self.conn, held, fd)
        self.error: BaseException | None = None

        def run() -> None:
            try:
                if successor.then is not None:
                    successor.then(self.conn, held, fd)
                while self.conn.recv(4096):  # the refusal, until the offer hangs up
                    pass
            except ConnectionResetError:
                pass
            except BaseException as error:
                self.error = error

        self._thread = threading.Thread(target=run)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        self.conn.close()
        if self.error is not None:
            raise self.error


def check_refused(offer: handoff.Offer | aio.AsyncOffer, successor: Successor,
                  held: Lingering) -> None:
    assert len(offer.refused) == 1, offer.refused
    assert successor.refused in offer.refused[0][1]
    assert_refused_at_once(held)  # received, or in the queue of the connection dropped


#: The successors whose lingering socket stays queued in the connection the
#: offer drops: refused at once only where queues are defused.
QUEUED = {"hello-with-a-body-then-queued"}


@pytest.mark.parametrize("name", sorted(SUCCESSORS))
def test_a_hostile_successor_stalls_no_blocking_offer(
        path: str, listeners: Offered, pipe: tuple[int, int], lingering: Make,
        name: str) -> None:
    if name in QUEUED:
        needs_defused_queues()
    successor, held = SUCCESSORS[name], lingering()
    with handoff.Offer(path, listeners) as offer:
        peer = HostileSuccessor(path, successor, held, pipe[0])
        try:
            with Ticker() as ticker:
                deadline = time.monotonic() + 10
                while not offer.refused and time.monotonic() < deadline:
                    with pytest.raises(TimeoutError):  # refuses it, and goes on waiting
                        offer.wait(timeout=0.05)
        finally:
            peer.join()
        assert ticker.longest < STALL, f"another thread stopped for {ticker.longest:.2f} s"
        check_refused(offer, successor, held)


@pytest.mark.parametrize("name", sorted(SUCCESSORS))
def test_a_hostile_successor_stalls_no_async_offer(
        run: Runner, path: str, listeners: Offered, pipe: tuple[int, int], lingering: Make,
        name: str) -> None:
    if name in QUEUED:
        needs_defused_queues()
    successor, held = SUCCESSORS[name], lingering()
    offers: list[aio.AsyncOffer] = []

    async def main() -> None:
        async with aio.AsyncOffer(path, listeners) as offer:
            offers.append(offer)
            peer = await asyncio.get_running_loop().run_in_executor(
                None, HostileSuccessor, path, successor, held, pipe[0])
            try:
                deadline = time.monotonic() + 10
                while not offer.refused and time.monotonic() < deadline:
                    with pytest.raises(TimeoutError):
                        await offer.wait(timeout=0.05)
            finally:
                await asyncio.get_running_loop().run_in_executor(None, peer.join)

    on_the_loop(run, main)
    check_refused(offers[0], successor, held)


# -- the handoff: a hostile offer against take and aio.take -------------------

class HostileOffer(NamedTuple):
    script: Callable[[socket.socket, Lingering, int], None]
    error: type[BaseException]
    match: str


def frame_with(data: bytes) -> Callable[[socket.socket, Lingering, int], None]:
    """A script that sends data with the pipe and the lingering socket."""
    return lambda conn, held, fd: attach_lingering(conn, held, data, [fd])


OFFERS = {
    "garbage": HostileOffer(frame_with(b"HTTP/1.1 400 Bad Request\r\n\r\n"), ProtocolError,
                            "does not speak fdpass handoff"),
    "version-3": HostileOffer(frame_with(raw_frame(b"S", names_body(1, 0, "a"), version=3)),
                              ProtocolError, "version 3"),
    "count": HostileOffer(frame_with(raw_frame(b"S", names_body(1, 0, "a"))), ProtocolError,
                          "1 names and 2 descriptors"),
    "bad-name": HostileOffer(frame_with(raw_frame(b"S", names_body(2, 0) + b"\x00\x01\xff")),
                             ProtocolError, "bad name"),
    "kind": HostileOffer(frame_with(raw_frame(b"Q", b"")), ProtocolError,
                         "expected a SOCKETS frame"),
    "refused": HostileOffer(frame_with(raw_frame(b"X", b"\x01uid 0 is not yours")),
                            PermissionError, "refused the handoff"),
    "truncated": HostileOffer(frame_with(raw_header(b"S", 13) + names_body(2, 0, "a")[:5]),
                              ProtocolError, "closed in a frame's body"),
    "no-socket": HostileOffer(frame_with(raw_frame(b"S", names_body(2, 0, "a", "b"))),
                              ProtocolError, "'a', which is no socket"),
}


@pytest.mark.parametrize("name", sorted(OFFERS))
def test_a_hostile_offer_stalls_no_blocking_take(
        path: str, pipe: tuple[int, int], lingering: Make, name: str) -> None:
    offer, held = OFFERS[name], lingering()
    fake = FakeOffer(path, lambda conn: offer.script(conn, held, pipe[0]))
    try:
        with Timed(), pytest.raises(offer.error, match=offer.match):
            handoff.take(path, timeout=5)
    finally:
        fake.close()
    assert_refused_at_once(held)


@pytest.mark.parametrize("name", sorted(OFFERS))
def test_a_hostile_offer_stalls_no_async_take(
        run: Runner, path: str, pipe: tuple[int, int], lingering: Make, name: str) -> None:
    offer, held = OFFERS[name], lingering()
    fake = FakeOffer(path, lambda conn: offer.script(conn, held, pipe[0]))

    async def main() -> None:
        with pytest.raises(offer.error, match=offer.match):
            await aio.take(path, timeout=5)

    try:
        on_the_loop(run, main)
    finally:
        fake.close()
    assert_refused_at_once(held)


def offer_then_done_with(conn: socket.socket, held: Lingering, listener: socket.socket) -> None:
    """A hostile offer that hands over one socket, then answers READY with
    a DONE frame carrying a lingering socket."""
    raw_send(conn, raw_frame(b"S", names_body(1, 0, "http")), [listener.fileno()])
    assert conn.recv(100).startswith(handoff.MAGIC)  # READY
    attach_lingering(conn, held, raw_frame(b"D", b""), [])


def test_a_done_frame_with_a_lingering_socket_stalls_no_ready(
        path: str, listeners: Offered, lingering: Make) -> None:
    held = lingering()
    fake = FakeOffer(path, lambda conn: offer_then_done_with(conn, held, listeners["http"]))
    try:
        with handoff.take(path, timeout=5) as takeover:
            with Timed():
                try:
                    takeover.ready()
                except ProtocolError:
                    pass  # a DONE frame with descriptors may be refused too
            for sock in takeover.sockets.values():
                sock.close()
    finally:
        fake.close()
    assert_refused_at_once(held)


def test_a_done_frame_with_a_lingering_socket_stalls_no_async_ready(
        run: Runner, path: str, listeners: Offered, lingering: Make) -> None:
    held = lingering()
    fake = FakeOffer(path, lambda conn: offer_then_done_with(conn, held, listeners["http"]))

    async def main() -> None:
        async with await aio.take(path, timeout=5) as takeover:
            try:
                await takeover.ready()
            except ProtocolError:
                pass
            for sock in takeover.sockets.values():
                sock.close()

    try:
        on_the_loop(run, main)
    finally:
        fake.close()
    assert_refused_at_once(held)


# -- handoff version 2: a hostile old process against items() ------------------

def too_many_descriptors(conn: socket.socket, held: Lingering, fd: int) -> None:
    """An ITEM with MAX_FDS descriptors, and the lingering socket one more."""
    data = frame(b"I", item_body(0))
    raw_send(conn, data[:5], [fd] * fdpass.MAX_FDS)
    attach_lingering(conn, held, data[5:], [])


def too_much_state(conn: socket.socket, held: Lingering, fd: int) -> None:
    """An ITEM with a byte of state too many (the body sent after the
    descriptors: one sendmsg may not take it all)."""
    data = frame(b"I", item_body(0, state=b"s" * (MAX_STATE + 1)))
    attach_lingering(conn, held, data[:1], [fd])
    conn.sendall(data[1:])


def acked_then_with(then: bytes) -> Callable[[socket.socket, Lingering, int], None]:
    """Send item #0; after its ACK, then with the pipe and the lingering socket."""
    def script(conn: socket.socket, held: Lingering, fd: int) -> None:
        send_item(conn, item_body(0))
        assert read_frame(conn)[1:] == (b"A", number(0), [])
        attach_lingering(conn, held, then, [fd])
    return script


OLD_PROCESSES = {
    "bad-name": HostileOffer(frame_with(frame(b"I", item_body(0, name=b"\xff"))),
                             ProtocolError, "bad name"),
    "other-number": HostileOffer(frame_with(frame(b"I", item_body(5))), ProtocolError,
                                 "not item #0"),
    "too-much-state": HostileOffer(too_much_state, ProtocolError,
                                   f"{MAX_STATE + 1} bytes of state"),
    "too-many-descriptors": HostileOffer(too_many_descriptors, ProtocolError,
                                         f"came with {fdpass.MAX_FDS + 1} descriptors"),
    "commit-with-descriptors": HostileOffer(acked_then_with(frame(b"C", number(0))),
                                            ProtocolError, "expected the COMMIT of item #0"),
    "done-with-descriptors": HostileOffer(acked_then_with(frame(b"D")), ProtocolError,
                                          "expected the COMMIT of item #0"),
    "next-item-out-of-order": HostileOffer(acked_then_with(frame(b"I", item_body(5))),
                                           ProtocolError, "not item #1"),
}


@pytest.fixture(params=sorted(OLD_PROCESSES))
def old_process(request: pytest.FixtureRequest, path: str, pipe: tuple[int, int],
                lingering: Make) -> Iterator[tuple[HostileOffer, Lingering]]:
    """A version-2 offer by hand at path that hands over one socket, then
    speaks one of OLD_PROCESSES where the successor asks for items."""
    old, held = OLD_PROCESSES[request.param], lingering()
    if (old.script is too_many_descriptors and MUSL
            and socket.CMSG_SPACE(4 * fdpass.MAX_FDS) > MUSL_SENDMSG_CONTROL_MAX):
        pytest.skip("musl's sendmsg() refuses MAX_FDS descriptors' control data (over "
                    "1024 bytes), so the standard library cannot be this hostile peer")
    fake = FakeOffer(path, handshake(lambda conn: old.script(conn, held, pipe[0])))
    try:
        yield old, held
    finally:
        fake.close()


def test_a_hostile_old_process_stalls_no_blocking_items(
        path: str, old_process: tuple[HostileOffer, Lingering]) -> None:
    old, held = old_process
    with handoff.take(path, timeout=5) as takeover:
        for sock in takeover.sockets.values():
            sock.close()
        takeover.ready()
        with Timed(), pytest.raises(old.error, match=old.match):
            next(takeover.items(timeout=5))
    assert_refused_at_once(held)


def test_a_hostile_old_process_stalls_no_async_items(
        run: Runner, path: str, old_process: tuple[HostileOffer, Lingering]) -> None:
    old, held = old_process

    async def main() -> None:
        async with await aio.take(path, timeout=5) as takeover:
            for sock in takeover.sockets.values():
                sock.close()
            await takeover.ready()
            with Timed(), pytest.raises(old.error, match=old.match):
                await takeover.items(timeout=5).__anext__()

    on_the_loop(run, main)
    assert_refused_at_once(held)


# -- handoff version 2: a hostile successor against move() ---------------------

class Acks(NamedTuple):
    """A successor's answer to two ITEMs, the items it took, and the refusal."""
    answer: Callable[[socket.socket, Lingering, int], None]
    taken: int
    refused: str


def ack_then_with(conn: socket.socket, held: Lingering, fd: int) -> None:
    """Acknowledge item #0 as it should be; item #1's ACK with descriptors."""
    conn.sendall(frame(b"A", number(0)))
    attach_lingering(conn, held, frame(b"A", number(1)), [fd])


SUCCESSORS_V2 = {
    "ack-with-descriptors": Acks(frame_with(frame(b"A", number(0))), 0, "2 descriptors"),
    "second-ack-with-descriptors": Acks(ack_then_with, 1, "2 descriptors"),
    "unknown-item": Acks(frame_with(frame(b"A", number(7))), 0, "expected the ACK of item #0"),
    "short-ack": Acks(frame_with(frame(b"A", b"\x00")), 0, "expected the ACK of item #0"),
    "garbage": Acks(frame_with(b"GET / HTTP/1.0\r\n\r\n"), 0, "does not speak"),
}


def answer_items(conn: socket.socket, acks: Acks, held: Lingering, fd: int) -> None:
    """As the successor: take the two ITEMs (closing their descriptors),
    then answer."""
    for n in (0, 1):
        _, kind, body, fds = read_frame(conn)
        for got in fds:
            os.close(got)
        assert (kind, body[:4]) == (b"I", number(n))
    acks.answer(conn, held, fd)


@pytest.fixture
def two_items() -> Iterator[list[Item[socket.socket]]]:
    """Two items of a socket each, for move(); their peers and the copies
    kept are closed at the end."""
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        yield [Item(name, [mine]) for name, (mine, _) in zip("ab", pairs)]
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def check_moved(offer: handoff.Offer | aio.AsyncOffer, moved: handoff.Moved,
                items: list[Item[socket.socket]], acks: Acks, held: Lingering) -> None:
    """What was acknowledged was taken (closed here), the rest kept (open)."""
    assert moved == (items[:acks.taken], items[acks.taken:])
    assert [item.fds[0].fileno() == -1 for item in items] == \
        [n < acks.taken for n in range(len(items))]
    assert acks.refused in offer.refused[-1][1], offer.refused
    assert_refused_at_once(held)


HELLO_V2 = frame(b"H", b"\x01\x02")


@pytest.mark.parametrize("name", sorted(SUCCESSORS_V2))
def test_a_hostile_successor_stalls_no_blocking_move(
        path: str, listeners: Offered, pipe: tuple[int, int], lingering: Make,
        two_items: list[Item[socket.socket]], name: str) -> None:
    acks, held = SUCCESSORS_V2[name], lingering()
    with handoff.Offer(path, listeners) as offer:
        waiting = Background(lambda: offer.wait(timeout=20))
        conn, _ = raw_successor(path, HELLO_V2)
        with conn:
            waiting.result()
            answering = Background(lambda: answer_items(conn, acks, held, pipe[0]))
            with Timed():
                moved = offer.move(two_items, timeout=5)
            answering.result()
        check_moved(offer, moved, two_items, acks, held)


@pytest.mark.parametrize("name", sorted(SUCCESSORS_V2))
def test_a_hostile_successor_stalls_no_async_move(
        run: Runner, path: str, listeners: Offered, pipe: tuple[int, int], lingering: Make,
        two_items: list[Item[socket.socket]], name: str) -> None:
    acks, held = SUCCESSORS_V2[name], lingering()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with aio.AsyncOffer(path, listeners) as offer:
            waiting = asyncio.ensure_future(offer.wait(timeout=20))
            conn, _ = await loop.run_in_executor(None, raw_successor, path, HELLO_V2)
            with conn:
                await waiting
                answering = loop.run_in_executor(None, answer_items, conn, acks, held, pipe[0])
                with Timed():
                    moved = await offer.move(two_items, timeout=5)
                await answering
            check_moved(offer, moved, two_items, acks, held)

    on_the_loop(run, main)


# -- fdpass.systemd -----------------------------------------------------------

def test_systemd_receives_nothing() -> None:
    """fdpass.systemd only inherits descriptors (listen_fds) and sends them
    (notify, store_fds): no room of it receives, so none is tested above.
    A receive added to it must join the rooms here."""
    source = inspect.getsource(systemd)
    assert "recv" not in source and "discard" not in source, \
        "fdpass.systemd receives descriptors now: add its rooms to this file"
    public = sorted(name for name in systemd.__all__ if callable(getattr(systemd, name)))
    assert public == ["listen_fds", "notify", "store_fds"]

