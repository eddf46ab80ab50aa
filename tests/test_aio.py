"""fdpass.aio under the default asyncio loop and uvloop: each call, waiting
on the loop, cancellation and timeouts at every await point, concurrency,
and the server."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
import struct
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import uvloop

import fdpass
from fdpass import aio
from fdpass.aio import AsyncFDChannel
from support import fill_backlog, peer_pid, raw_send, same_file

_T = TypeVar("_T")
Context = dict[str, Any]


class Runner(Protocol):
    errors: list[Context]

    def __call__(self, main: Coroutine[Any, Any, _T]) -> _T: ...


class LoopRunner:
    """Runs a coroutine on a new loop of one kind, and keeps what reaches
    the loop's exception handler: a test that expects none sees none."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.errors: list[Context] = []

    def __call__(self, main: Coroutine[Any, Any, _T]) -> _T:
        loop = uvloop.new_event_loop() if self.kind == "uvloop" else asyncio.new_event_loop()
        loop.set_exception_handler(lambda _, context: self.errors.append(context))
        try:
            return loop.run_until_complete(asyncio.wait_for(main, 60))
        finally:
            try:
                leftover = asyncio.all_tasks(loop)
                for task in leftover:
                    task.cancel()
                if leftover:
                    loop.run_until_complete(asyncio.wait(leftover))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()


@pytest.fixture(scope="session")
def libuv_started() -> None:
    """libuv opens a pipe with the process's first loop and keeps it for
    the process's life (for signals): open it before any leak census."""
    uvloop.new_event_loop().close()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest, libuv_started: None) -> Iterator[Runner]:
    runner = LoopRunner(request.param)
    yield runner
    assert not runner.errors, f"unexpected errors on the loop: {runner.errors}"


@contextmanager
def tagged_pipe(tag: bytes) -> Iterator[int]:
    """A pipe's read end with tag waiting in it, to tell received descriptors apart."""
    r, w = os.pipe()
    try:
        os.write(w, tag)
        os.set_blocking(r, False)  # a tag read twice fails rather than hangs
        yield r
    finally:
        os.close(r)
        os.close(w)


def take_tag(fd: int, size: int) -> bytes:
    """Read a tagged pipe's tag, closing the received descriptor."""
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


@asynccontextmanager
async def pair(kind: int = socket.SOCK_STREAM) -> AsyncIterator[tuple[AsyncFDChannel, AsyncFDChannel]]:
    a, b = AsyncFDChannel.pair(kind)
    async with a, b:
        yield a, b


async def pass_a_socket(tx: AsyncFDChannel, rx: AsyncFDChannel) -> None:
    """Send one end of a new socketpair on tx: what rx receives talks to the other."""
    x, y = socket.socketpair()
    with x, y:
        await tx.send_fd(x)
        with await rx.recv_socket() as sock:
            sock.sendall(b"via the passed socket")
            assert y.recv(100) == b"via the passed socket"


async def spin(times: int) -> None:
    """Let the loop run `times` iterations."""
    for _ in range(times):
        await asyncio.sleep(0)


def fill(ch: AsyncFDChannel, fd: int) -> int:
    """Send fd until the socket is full; how many messages went."""
    sent = 0
    with fdpass.FDChannel(ch.fileno(), closefd=False) as raw:
        raw.settimeout(0)
        try:
            while True:
                raw.send_fd(fd)
                sent += 1
        except BlockingIOError:
            return sent


async def drain(ch: AsyncFDChannel) -> int:
    """Receive and close every descriptor waiting; how many there were."""
    count = 0
    while True:
        try:
            fd = await asyncio.wait_for(ch.recv_fd(), 0.2)
        except asyncio.TimeoutError:
            return count
        os.close(fd)
        count += 1


# -- each call ------------------------------------------------------------

def test_each_call_round_trips(run: Runner, sock_type: int, tmp_path: Path) -> None:
    async def main() -> None:
        async with pair(sock_type) as (a, b):
            assert a.type == sock_type and not a.closed and a.fileno() >= 0
            with tagged_pipe(b"one") as r:
                await a.send_fd(r)
                assert take_tag(await b.recv_fd(), 3) == b"one"
            with tagged_pipe(b"x") as r, tagged_pipe(b"y") as s:
                await a.send_fds([r, s])
                assert [take_tag(fd, 1) for fd in await b.recv_fds()] == [b"x", b"y"]
            with tagged_pipe(b"y") as s:
                await a.send_fds(iter([s]), data=b"payload")
                data, fds = await b.recv_message(100)
                assert data == b"payload" and [take_tag(fd, 1) for fd in fds] == [b"y"]
            path = tmp_path / "file"
            path.write_bytes(b"contents")
            with open(path, "rb") as f:
                await a.send_fd(f)
            with await b.recv_file() as received:
                assert received.mode == "rb" and received.read() == b"contents"
            with open(path, "r+") as f:
                await a.send_fd(f)
            with await b.recv_file("r", encoding="ascii") as text:
                assert text.read() == "contents"
            await pass_a_socket(a, b)

    run(main())


def test_peer_credentials(run: Runner) -> None:
    async def main() -> None:
        async with pair() as (a, _):
            assert a.peer_credentials() == (peer_pid(os.getpid()), os.getuid(), os.getgid())

    run(main())


def test_repr_and_close(run: Runner) -> None:
    async def main() -> None:
        a, b = AsyncFDChannel.pair()
        assert f"fd={a.fileno()} type=SOCK_STREAM" in repr(a)
        async with a:
            pass
        b.close()
        b.close()
        assert a.closed and b.closed and "closed" in repr(a)
        for call in (a.recv_fd(), a.send_fd(0)):
            with pytest.raises(ValueError, match="closed channel"):
                await call

    run(main())


def test_refuses_what_is_not_a_unix_socket() -> None:
    with pytest.raises(TypeError, match="socket.socket"):
        AsyncFDChannel(0)  # type: ignore[arg-type]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        with pytest.raises(ValueError, match="^AsyncFDChannel needs an AF_UNIX socket, not AF_INET"):
            AsyncFDChannel(tcp)
        assert tcp.getblocking()  # refused before anything was changed


def test_the_socket_becomes_non_blocking(run: Runner) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        async with AsyncFDChannel(a), AsyncFDChannel(b):
            assert a.gettimeout() == 0.0 and not os.get_blocking(a.fileno())
        assert a.fileno() == -1  # closed with the channel

    run(main())


def test_errors_are_those_of_fdchannel(run: Runner) -> None:
    async def main() -> None:
        async with pair() as (a, b):
            raw_send(b._sock, b"\0")  # a message without a descriptor
            with pytest.raises(fdpass.ProtocolError):
                await a.recv_fd()
            with pytest.raises(ValueError, match="maxfds"):
                await a.recv_fds(0)
            with pytest.raises(ValueError, match="at least one descriptor"):
                await a.send_fds([])
            await b.send_fd(0)  # the channel is still in step
            fd = await a.recv_fd()
            assert same_file(fd, 0)
            os.close(fd)
            b.close()
            with pytest.raises(EOFError):
                await a.recv_fd()
            with pytest.raises(BrokenPipeError):
                await a.send_fd(0)

    run(main())


# -- waiting on the loop --------------------------------------------------

def test_a_receive_waits_on_the_loop_which_stays_responsive(run: Runner) -> None:
    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        async with pair() as (a, b):
            threads = threading.active_count()
            clock = asyncio.ensure_future(ticker())
            receiving = asyncio.ensure_future(b.recv_fd())
            await asyncio.sleep(0.2)
            assert not receiving.done()
            assert ticks >= 20  # 1 ms ticks over 200 ms; a blocked loop gives 0
            assert threading.active_count() == threads  # no thread, no executor
            await a.send_fd(0)
            fd = await receiving
            assert same_file(fd, 0)
            os.close(fd)
            clock.cancel()

    run(main())


def test_a_send_to_a_full_socket_waits_for_room(run: Runner) -> None:
    async def main() -> None:
        async with pair() as (a, b):
            a._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            queued = fill(a, 0)
            sending = asyncio.ensure_future(a.send_fd(0))
            await asyncio.sleep(0.05)
            assert not sending.done()
            assert await drain(b) == queued + 1
            assert sending.done()

    run(main())


def test_the_loop_stops_watching_when_nobody_waits(run: Runner) -> None:
    async def main() -> None:
        async with pair() as (a, b):
            receiving = asyncio.ensure_future(b.recv_fd())
            await spin(2)
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
            assert b._reading._watch is not None  # kept for the next wait
            await a.send_fd(0)
            await spin(2)  # the callback fires with no task waiting
            assert b._reading._watch is None
            fd = await b.recv_fd()
            assert same_file(fd, 0)
            os.close(fd)

    run(main())


def test_a_channel_waits_on_one_loop_then_another(run: Runner) -> None:
    a, b = AsyncFDChannel.pair()

    async def one_wait() -> None:
        receiving = asyncio.ensure_future(b.recv_fd())
        await spin(2)
        await a.send_fd(0)
        fd = await receiving
        assert same_file(fd, 0)
        os.close(fd)

    try:
        run(one_wait())  # leaves its callback on a loop now closed
        run(one_wait())
    finally:
        a.close()
        b.close()


# -- cancellation ---------------------------------------------------------

RECEIVES: dict[str, Callable[[AsyncFDChannel], Coroutine[Any, Any, object]]] = {
    "recv_fd": lambda ch: ch.recv_fd(),
    "recv_fds": lambda ch: ch.recv_fds(),
    "recv_message": lambda ch: ch.recv_message(100),
    "recv_file": lambda ch: ch.recv_file(),
    "recv_socket": lambda ch: ch.recv_socket(),
}


@pytest.mark.parametrize("receive", RECEIVES.values(), ids=RECEIVES.keys())
def test_a_cancelled_receive_takes_nothing(
        run: Runner, sock_type: int,
        receive: Callable[[AsyncFDChannel], Coroutine[Any, Any, object]]) -> None:
    async def main() -> None:
        async with pair(sock_type) as (a, b):
            waiting = asyncio.ensure_future(receive(b))
            queued = asyncio.ensure_future(receive(b))  # behind the first
            await spin(3)
            waiting.cancel()
            queued.cancel()
            for task in (waiting, queued):
                with pytest.raises(asyncio.CancelledError):
                    await task
            with tagged_pipe(b"m") as r:
                await a.send_fd(r)
                assert take_tag(await b.recv_fd(), 1) == b"m"

    run(main())


def test_a_cancelled_queued_receive_hands_on_its_turn(run: Runner) -> None:
    async def main() -> None:
        async with pair() as (a, b):
            first = asyncio.ensure_future(b.recv_fd())
            second = asyncio.ensure_future(b.recv_fd())
            third = asyncio.ensure_future(b.recv_fd())
            await spin(3)
            second.cancel()
            first.cancel()  # the head leaves after the one behind it
            with tagged_pipe(b"3") as r:
                await a.send_fd(r)
                assert take_tag(await third, 1) == b"3"
            assert first.cancelled() and second.cancelled()

    run(main())


def test_a_cancel_racing_a_message_loses_and_duplicates_nothing(run: Runner, sock_type: int) -> None:
    """Cancel the receiver 0..7 loop iterations after the message is sent:
    early cancels take nothing, late ones come after the receive is done;
    either way the message is received exactly once."""
    async def main() -> set[str]:
        outcomes = set()
        async with pair(sock_type) as (a, b):
            for spins in range(8):
                tag = bytes([spins])
                with tagged_pipe(tag) as r:
                    receiving = asyncio.ensure_future(b.recv_fd())
                    await spin(1)
                    await a.send_fd(r)
                    await spin(spins)
                    receiving.cancel()
                    try:
                        fd = await receiving
                        outcomes.add("received before the cancel")
                    except asyncio.CancelledError:
                        fd = await b.recv_fd()
                        outcomes.add("cancelled, message left for the next")
                    assert take_tag(fd, 1) == tag
        return outcomes

    assert len(run(main())) == 2  # both sides of the race were reached


def test_a_cancelled_send_sends_nothing(run: Runner) -> None:
    async def main() -> None:
        async with pair() as (a, b):
            a._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            queued = fill(a, 0)
            waiting = asyncio.ensure_future(a.send_fd(0))  # for room
            behind = asyncio.ensure_future(a.send_fd(0))   # for its turn
            await spin(3)
            for task in (behind, waiting):
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert await drain(b) == queued
            await a.send_fd(0)
            assert await drain(b) == 1

    run(main())


def test_a_send_cancelled_mid_payload_closes_the_channel(run: Runner) -> None:
    async def main() -> None:
        async with pair() as (a, b):
            a._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            payload = b"p" * 1_000_000
            sending = asyncio.ensure_future(a.send_fds([0], payload))
            await asyncio.sleep(0.05)
            assert not sending.done()
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            assert a.closed  # the stream was out of step
            received, fds = b"", []
            with pytest.raises(EOFError):
                while True:
                    data, more = await b.recv_message(65536)
                    received += data
                    fds += more
            assert 0 < len(received) < len(payload) and set(received) == {ord("p")}
            assert len(fds) == 1
            os.close(fds[0])

    run(main())


TIMEOUTS: list[Callable[[Coroutine[Any, Any, int], float], Coroutine[Any, Any, int]]] = [
    asyncio.wait_for]
if sys.version_info >= (3, 11):
    async def within(call: Coroutine[Any, Any, int], seconds: float) -> int:
        async with asyncio.timeout(seconds):
            return await call

    TIMEOUTS.append(within)


@pytest.mark.parametrize("timeout", TIMEOUTS, ids=lambda t: t.__name__)
def test_a_timed_out_receive_takes_nothing(
        run: Runner, timeout: Callable[[Coroutine[Any, Any, int], float], Coroutine[Any, Any, int]],
) -> None:
    async def main() -> None:
        async with pair() as (a, b):
            with pytest.raises(asyncio.TimeoutError):
                await timeout(b.recv_fd(), 0.05)
            with tagged_pipe(b"t") as r:
                await a.send_fd(r)
                assert take_tag(await timeout(b.recv_fd(), 5), 1) == b"t"

    run(main())


@pytest.mark.parametrize("timeout", TIMEOUTS, ids=lambda t: t.__name__)
def test_timeouts_racing_messages_lose_nothing(
        run: Runner, timeout: Callable[[Coroutine[Any, Any, int], float], Coroutine[Any, Any, int]],
) -> None:
    """Messages sent around the moment receives time out: each arrives once."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with pair() as (a, b):
            received: list[int] = []
            for i in range(40):
                with tagged_pipe(bytes([i])) as r:
                    delay = 0.001 * (i % 4)
                    loop.call_later(delay, lambda r=r: a._channel.send_fd(r))  # type: ignore[misc]
                    try:
                        received.append(take_tag(await timeout(b.recv_fd(), 0.002), 1)[0])
                    except asyncio.TimeoutError:
                        await asyncio.sleep(0.005)  # the send has happened by now
                        received.append(take_tag(await b.recv_fd(), 1)[0])
            assert received == list(range(40))

    run(main())


# -- concurrency ----------------------------------------------------------

def test_ten_tasks_pass_a_thousand_descriptors(run: Runner, sock_type: int) -> None:
    async def main() -> None:
        async with pair(sock_type) as (a, b):
            got: list[tuple[bytes, bytes]] = []

            async def sender(k: int) -> None:
                for i in range(100):
                    tag = struct.pack("!HH", k, i)
                    with tagged_pipe(tag) as r:
                        await a.send_fds([r], tag)

            async def receiver() -> None:
                while True:
                    data, fds = await b.recv_message(4, maxfds=1)
                    got.append((data, take_tag(fds[0], 4)))

            receivers = [asyncio.ensure_future(receiver()) for _ in range(10)]
            await asyncio.gather(*(sender(k) for k in range(10)))
            while len(got) < 1000:
                await asyncio.sleep(0.01)
            for task in receivers:
                task.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
            assert all(data == tag for data, tag in got)
            assert sorted(data for data, _ in got) == sorted(
                struct.pack("!HH", k, i) for k in range(10) for i in range(100))

    run(main())


def test_concurrent_long_payloads_stay_whole(run: Runner) -> None:
    """A payload the socket takes in parts goes out before any other."""
    size = 100_000

    async def main() -> None:
        async with pair() as (a, b):
            a._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

            async def sender(k: int) -> None:
                for i in range(3):
                    with tagged_pipe(bytes([k, i])) as r:
                        await a.send_fds([r], bytes([k, i]) * (size // 2))

            senders = asyncio.gather(*(sender(k) for k in range(10)))
            stream, tags = b"", []
            while len(stream) < 30 * size:
                data, fds = await b.recv_message(65536)
                stream += data
                tags += [take_tag(fd, 2) for fd in fds]
            await senders
            messages = [stream[i:i + size] for i in range(0, len(stream), size)]
            assert all(m == m[:2] * (size // 2) for m in messages)
            assert sorted(m[:2] for m in messages) == sorted(tags) == sorted(
                bytes([k, i]) for k in range(10) for i in range(3))

    run(main())


def test_close_wakes_the_tasks_waiting(run: Runner) -> None:
    async def main() -> None:
        a, b = AsyncFDChannel.pair()
        async with a:
            waiting = [asyncio.ensure_future(b.recv_fd()) for _ in range(3)]
            await spin(3)
            b.close()
            for task in waiting:
                with pytest.raises(ValueError, match="closed channel"):
                    await task

    run(main())


def test_shutdown_wakes_the_peer_and_the_tasks_waiting(run: Runner) -> None:
    """shutdown(how), which the contract gives every channel, as
    FDChannel.shutdown: the peer's waiting receive ends (EOFError), and so
    does one waiting on this side for SHUT_RD; the other direction works."""
    async def main() -> None:
        async with pair() as (a, b):
            peer = asyncio.ensure_future(b.recv_fd())
            own = asyncio.ensure_future(a.recv_fd())
            await spin(3)
            a.shutdown(socket.SHUT_WR)
            with pytest.raises(EOFError):
                await peer
            assert not own.done()
            r, w = os.pipe()
            try:
                await b.send_fd(r)  # the other direction still works
                got = await own
                assert same_file(got, r)
                os.close(got)
            finally:
                os.close(r)
                os.close(w)
            waiting = asyncio.ensure_future(a.recv_fd())
            await spin(3)
            a.shutdown(socket.SHUT_RD)
            with pytest.raises(EOFError):
                await waiting
            with pytest.raises(OSError):
                a.shutdown(99)
        with pytest.raises(ValueError, match="closed"):
            a.shutdown(socket.SHUT_RDWR)

    run(main())


# -- the server -----------------------------------------------------------

def test_server_hands_each_connection_a_channel(run: Runner, tmp_path: Path) -> None:
    path = tmp_path / "server.sock"

    async def upper(ch: AsyncFDChannel) -> None:
        assert ch.peer_credentials().pid == peer_pid(os.getpid())
        while True:
            try:
                with await ch.recv_file() as f:
                    text = f.read()
            except EOFError:
                return
            with tagged_pipe(text.upper()) as r:
                await ch.send_fd(r)

    async def main() -> None:
        async with await aio.start_server(upper, path) as server:
            assert server.is_serving() and server.sockets[0].getsockname() == str(path)
            clients = [await aio.open_channel(path) for _ in range(3)]
            for i, client in enumerate(clients):
                async with client:
                    with tagged_pipe(b"hello %d" % i) as r:
                        await client.send_fd(r)
                        assert take_tag(await client.recv_fd(), 10) == b"HELLO %d" % i
        assert not server.is_serving() and not path.exists()

    run(main())


def test_wait_closed_waits_for_the_handlers(run: Runner, tmp_path: Path) -> None:
    path = tmp_path / "server.sock"

    async def main() -> None:
        release = asyncio.Event()
        handled: list[AsyncFDChannel] = []

        async def handler(ch: AsyncFDChannel) -> None:
            handled.append(ch)
            await release.wait()

        server = await aio.start_server(handler, path)
        async with await aio.open_channel(path):
            while not handled:
                await asyncio.sleep(0.001)
            server.close()
            server.close()
            closing = asyncio.ensure_future(server.wait_closed())
            await asyncio.sleep(0.02)
            assert not closing.done() and not handled[0].closed
            release.set()
            await closing
            assert handled[0].closed  # closed when its handler returned

    run(main())


def test_a_failing_handler_is_reported_and_its_channel_closed(run: Runner, tmp_path: Path) -> None:
    async def handler(ch: AsyncFDChannel) -> None:
        raise RuntimeError("handler broke")

    async def main() -> None:
        async with await aio.start_server(handler, tmp_path / "s"):
            async with await aio.open_channel(tmp_path / "s") as client:
                with pytest.raises(EOFError):
                    await client.recv_fd()

    run(main())
    [context] = run.errors
    assert isinstance(context["exception"], RuntimeError)
    assert "handler failed" in context["message"]
    run.errors.clear()


def test_serve_forever_closes_when_cancelled(run: Runner, tmp_path: Path) -> None:
    path = tmp_path / "s"

    async def main() -> None:
        server = await aio.start_server(lambda ch: ch.recv_fd(), path)
        serving = asyncio.ensure_future(server.serve_forever())
        await spin(2)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving() and not path.exists()
        await server.wait_closed()

    run(main())


def test_a_server_left_open_closes_with_its_loop(run: Runner, tmp_path: Path) -> None:
    path = tmp_path / "s"

    async def main() -> None:
        await aio.start_server(lambda ch: ch.recv_fd(), path)
        assert path.exists()

    run(main())  # ends with the server open: its accepting task is cancelled
    assert not path.exists()


def test_a_listening_socket_handed_to_a_successor_serves_on(run: Runner, tmp_path: Path) -> None:
    """A zero-downtime restart: the old server passes its listening socket
    on; the new one serves it (at the same path) after the old one closes."""
    path = tmp_path / "s"

    async def answer(ch: AsyncFDChannel) -> None:
        await ch.send_fd(0)

    async def main() -> None:
        old = await aio.start_server(answer, path, cleanup_socket=False)
        async with pair() as (a, b):
            await a.send_fd(old.sockets[0])
            listening = await b.recv_socket()
        old.close()
        await old.wait_closed()
        assert path.exists()  # it still is a live socket
        async with await aio.start_server(answer, sock=listening) as new:
            async with await aio.open_channel(path) as client:
                fd = await client.recv_fd()
                assert same_file(fd, 0)
                os.close(fd)
            new.close()
            assert listening.fileno() == -1 and path.exists()  # the path is left alone
        path.unlink()

    run(main())


def test_start_server_refuses_bad_arguments(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        handler = AsyncFDChannel.recv_fd
        with socket.socket(socket.AF_UNIX) as unbound, socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            tcp.listen()
            for sock in (unbound, tcp):
                with pytest.raises(ValueError, match="listening AF_UNIX socket"):
                    await aio.start_server(handler, sock=sock)
            with pytest.raises(ValueError, match="one of the two"):
                await aio.start_server(handler)
            with pytest.raises(ValueError, match="one of the two"):
                await aio.start_server(handler, tmp_path / "s", sock=unbound)
            with pytest.raises(TypeError, match="socket.socket"):
                await aio.start_server(handler, sock=3)  # type: ignore[arg-type]

    run(main())


def test_a_stale_socket_file_is_replaced_but_nothing_else(run: Runner, tmp_path: Path) -> None:
    stale, plain = tmp_path / "stale", tmp_path / "plain"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(stale))
    plain.write_text("not a socket")

    async def main() -> None:
        async with await aio.start_server(lambda ch: ch.recv_fd(), stale):
            async with await aio.open_channel(stale):
                pass
        with pytest.raises(OSError) as info:
            await aio.start_server(lambda ch: ch.recv_fd(), plain)
        assert info.value.errno == errno.EADDRINUSE
        assert plain.read_text() == "not a socket"

    run(main())


def test_an_abstract_socket_name(run: Runner) -> None:
    name = f"\0fdpass-test-{os.getpid()}"

    async def echo(ch: AsyncFDChannel) -> None:
        with await ch.recv_socket() as sock:
            await ch.send_fd(sock)

    async def main() -> None:
        async with await aio.start_server(echo, name):
            async with await aio.open_channel(name) as client:
                await pass_a_socket(client, client)

    run(main())


def test_open_channel_to_nothing_fails_cleanly_naming_the_path(
        run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError) as raised:
            await aio.open_channel(tmp_path / "missing")
        assert raised.value.filename == str(tmp_path / "missing")

    run(main())


def test_accept_out_of_descriptors_is_reported_and_retried(
        run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio, "ACCEPT_RETRY_DELAY", 0.05)
    path = tmp_path / "s"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main() -> None:
        async with await aio.start_server(lambda ch: ch.send_fd(0), path):
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            async with AsyncFDChannel(client) as ch:
                lowest_free = os.dup(0)
                os.close(lowest_free)
                resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
                try:
                    await asyncio.get_running_loop().sock_connect(client, str(path))
                    while not run.errors:
                        await asyncio.sleep(0.01)
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                fd = await ch.recv_fd()  # accepted on a retry
                assert same_file(fd, 0)
                os.close(fd)

    run(main())
    assert all(isinstance(c["exception"], OSError) and c["exception"].errno == errno.EMFILE
               for c in run.errors)
    run.errors.clear()


@pytest.fixture
def full_backlog(tmp_path: Path) -> Iterator[tuple[Path, socket.socket, list[socket.socket]]]:
    """A listener that accepts nothing, at a path, and the connections that
    filled its backlog: the next connect would wait."""
    path = tmp_path / "s"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(0)
    queued = fill_backlog(str(path))
    with listener:
        yield path, listener, queued
    for client in queued:
        client.close()


def test_open_channel_waits_while_the_backlog_is_full(
        run: Runner, full_backlog: tuple[Path, socket.socket, list[socket.socket]]) -> None:
    path, listener, queued = full_backlog

    async def main() -> None:
        opening = asyncio.ensure_future(aio.open_channel(path))
        await asyncio.sleep(0.1)
        assert not opening.done()  # it waits, as a blocking connect would
        listener.accept()[0].close()  # room for one
        async with await asyncio.wait_for(opening, 10) as ch:
            for _ in queued[1:]:  # the accept queue is first in, first out
                listener.accept()[0].close()
            conn, _ = listener.accept()
            with conn:  # the channel is connected, to this listener
                assert ch.peer_credentials().pid == peer_pid(os.getpid())
                with fdpass.FDChannel(conn, closefd=False) as server_side:
                    server_side.send_fd(0)
                fd = await ch.recv_fd()
                assert same_file(fd, 0)
                os.close(fd)

    run(main())


def test_open_channel_cancelled_while_the_backlog_is_full(
        run: Runner, full_backlog: tuple[Path, socket.socket, list[socket.socket]]) -> None:
    async def main() -> None:
        opening = asyncio.ensure_future(aio.open_channel(full_backlog[0]))
        await asyncio.sleep(0.05)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening

    run(main())


def test_serve_forever_on_a_closed_server_raises(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        server = await aio.start_server(lambda ch: ch.recv_fd(), tmp_path / "s")
        server.close()
        with pytest.raises(RuntimeError, match="closed"):
            await server.serve_forever()
        await server.wait_closed()

    run(main())


def test_close_wakes_a_half_sent_send_with_value_error(run: Runner) -> None:
    async def main() -> None:
        async with pair() as (a, b):
            a._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sending = asyncio.ensure_future(a.send_fds([0], b"p" * 1_000_000))
            await asyncio.sleep(0.05)
            assert not sending.done()  # the descriptor went, the payload waits
            a.close()
            with pytest.raises(ValueError, match="closed channel"):
                await sending
            with pytest.raises((EOFError, ValueError)):
                while True:
                    _, fds = await b.recv_message(65536)
                    for fd in fds:
                        os.close(fd)

    run(main())


class FailingAccept(socket.socket):
    """A listening socket whose accept fails, once a client is waiting, as
    no resource shortage does."""

    def accept(self) -> tuple[socket.socket, Any]:
        conn, address = super().accept()
        conn.close()
        raise OSError(errno.EPROTO, "protocol error")


def test_accept_failing_otherwise_closes_the_server(
        run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio, "ACCEPT_RETRY_DELAY", 0.01)
    path = tmp_path / "s"
    listener = FailingAccept(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    async def main() -> None:
        server = await aio.start_server(lambda ch: ch.recv_fd(), sock=listener)
        serving = asyncio.ensure_future(server.serve_forever())
        await spin(2)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # wakes the accepting task
            with pytest.raises(OSError) as info:
                await asyncio.wait_for(serving, 10)
        assert info.value.errno == errno.EPROTO
        assert not server.is_serving()
        await server.wait_closed()

    run(main())
    assert [c["exception"].errno for c in run.errors] == [errno.EPROTO]
    assert "the server closes" in run.errors[0]["message"]
    run.errors.clear()
