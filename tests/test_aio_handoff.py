"""fdpass.aio's handoff forms, AsyncOffer and take(), under asyncio and
uvloop: with each other, with the blocking forms, timeouts and
cancellation, a successor that goes away, refusals."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fdpass
from fdpass import aio, handoff
from support import fill_backlog, peer_pid, same_file
from test_aio import Runner, libuv_started, run  # noqa: F401  (fixtures)

Offered = dict[str, socket.socket]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "offer.sock")


def close_sockets(takeover: handoff.Takeover | aio.AsyncTakeover) -> None:
    for sock in takeover.sockets.values():
        sock.close()


def test_async_offer_and_take_while_the_loop_serves(run: Runner, path: str,
                                                    listeners: Offered) -> None:
    async def main() -> tuple[fdpass.Credentials, bytes]:
        loop = asyncio.get_running_loop()
        http = listeners["http"]
        http.setblocking(False)

        async def serve_one() -> bytes:  # the old process keeps serving meanwhile
            conn, _ = await loop.sock_accept(http)
            with conn:
                await loop.sock_sendall(conn, b"still serving")
            return b"ok"

        async def client() -> bytes:
            reader, writer = await asyncio.open_connection(*http.getsockname())
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            return answer

        async with aio.AsyncOffer(path, listeners) as offer:
            waiting = asyncio.ensure_future(offer.wait(timeout=20))
            _, answer = await asyncio.gather(serve_one(), client())
            async with await aio.take(path, timeout=20) as takeover:
                assert sorted(takeover.sockets) == ["admin", "http"]
                for name, sock in takeover.sockets.items():
                    assert same_file(sock.fileno(), listeners[name].fileno())
                assert "AsyncTakeover from pid" in repr(takeover)
                await takeover.ready()
                close_sockets(takeover)
            successor = await waiting
            assert offer.closed and not os.path.exists(path)
            assert "closed" in repr(offer)
        return successor, answer

    successor, answer = run(main())
    assert successor.pid == peer_pid(os.getpid())
    assert answer == b"still serving"


def test_async_offer_to_a_blocking_successor(run: Runner, path: str,
                                             listeners: Offered) -> None:
    names: list[str] = []

    def successor() -> None:
        with handoff.take(path, timeout=20) as takeover:
            names.extend(takeover.sockets)
            takeover.ready()
            close_sockets(takeover)

    async def main() -> fdpass.Credentials:
        async with aio.AsyncOffer(path, listeners) as offer:
            thread = threading.Thread(target=successor)
            thread.start()
            try:
                return await offer.wait(timeout=20)
            finally:
                await asyncio.get_running_loop().run_in_executor(None, thread.join)

    assert run(main()).pid == peer_pid(os.getpid())
    assert names == ["http", "admin"]


def test_async_take_from_a_blocking_offer(run: Runner, path: str, listeners: Offered) -> None:
    with handoff.Offer(path, listeners) as offer:
        result: list[fdpass.Credentials] = []
        thread = threading.Thread(target=lambda: result.append(offer.wait(timeout=20)))
        thread.start()

        async def main() -> list[str]:
            takeover = await aio.take(path, timeout=20)
            try:
                await takeover.ready()
                return list(takeover.sockets)
            finally:
                close_sockets(takeover)

        try:
            assert run(main()) == ["http", "admin"]
        finally:
            thread.join(30)
        assert result[0].pid == peer_pid(os.getpid())


def test_wait_times_out_is_cancelled_and_goes_on(run: Runner, path: str,
                                                 listeners: Offered) -> None:
    async def main() -> fdpass.Credentials:
        async with aio.AsyncOffer(path, listeners) as offer:
            with pytest.raises(TimeoutError):
                await offer.wait(timeout=0.05)
            # A successor that gives up without ready(): the offer carries on.
            waiting = asyncio.ensure_future(offer.wait())
            async with await aio.take(path, timeout=20) as quitter:
                close_sockets(quitter)
            # One that takes, then waits: wait() times out half-way, and a
            # cancelled wait() loses nothing either.
            takeover = await aio.take(path, timeout=20)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            with pytest.raises(TimeoutError):
                await offer.wait(timeout=0.05)
            ready = asyncio.ensure_future(takeover.ready())
            successor = await offer.wait(timeout=20)
            await ready
            close_sockets(takeover)
            assert offer.refused == []
            return successor

    assert run(main()).pid == peer_pid(os.getpid())


def test_async_take_is_refused_or_meets_garbage(run: Runner, path: str,
                                                listeners: Offered) -> None:
    async def main() -> None:
        async with aio.AsyncOffer(path, listeners, uid=os.geteuid() + 1) as offer:
            waiting = asyncio.ensure_future(offer.wait(timeout=0.5))
            with pytest.raises(PermissionError, match="is not uid"):
                await aio.take(path, timeout=20)
            with pytest.raises(TimeoutError):
                await waiting
            assert len(offer.refused) == 1
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen()
        listener.setblocking(False)

        async def garbage() -> None:
            conn, _ = await asyncio.get_running_loop().sock_accept(listener)
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        with listener:
            serving = asyncio.ensure_future(garbage())
            with pytest.raises(fdpass.ProtocolError, match="does not speak fdpass handoff"):
                await aio.take(path, timeout=20)
            await serving
        with pytest.raises(TimeoutError):
            async with aio.AsyncOffer(path, listeners):
                await aio.take(path, timeout=0.1)  # nobody waits on the offer

    run(main())


def test_close_wakes_a_waiting_task(run: Runner, path: str, listeners: Offered) -> None:
    async def main() -> None:
        offer = aio.AsyncOffer(path, listeners)
        waiting = asyncio.ensure_future(offer.wait())
        takeover = await aio.take(path, timeout=20)  # half-way: it waits for READY
        offer.close()
        with pytest.raises(ValueError, match="closed"):
            await waiting
        with pytest.raises(ConnectionError):
            await takeover.ready()
        close_sockets(takeover)
        offer2 = aio.AsyncOffer(path, listeners)
        accepting = asyncio.ensure_future(offer2.wait())
        await asyncio.sleep(0.05)
        offer2.close()
        with pytest.raises(ValueError, match="closed"):
            await accepting

    run(main())


async def take_and_close(path: str) -> list[str]:
    async with await aio.take(path, timeout=20) as takeover:
        await takeover.ready()
        close_sockets(takeover)
    return sorted(takeover.sockets)


@pytest.mark.parametrize("timeout", [0, 0.001])
def test_a_server_polling_its_async_offer_hands_over(run: Runner, path: str,
                                                     listeners: Offered, timeout: float) -> None:
    """As the blocking form: wait(0), again and again, carries the
    conversation forward (wait_for(.., 0) before 3.12 never started it)."""
    async def main() -> fdpass.Credentials:
        async with aio.AsyncOffer(path, listeners) as offer:
            successor = asyncio.ensure_future(take_and_close(path))
            deadline = time.monotonic() + 10
            while True:
                try:
                    who = await offer.wait(timeout)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "no progress"
                    await asyncio.sleep(0.002)
            assert offer.closed
            assert await successor == ["admin", "http"]
            return who

    assert run(main()).pid == peer_pid(os.getpid())


def test_async_take_waits_while_the_backlog_is_full(run: Runner, path: str,
                                                    listeners: Offered) -> None:
    """A full backlog made aio.take() fail at once (ENOTCONN: the loop's
    sock_connect took the socket for connected): it waits within its
    timeout, and under the caller's cancellation."""
    async def main() -> None:
        async with aio.AsyncOffer(path, listeners) as offer:
            queued = fill_backlog(path)
            try:
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    await aio.take(path, timeout=0.3)
                assert time.monotonic() - started >= 0.25
                cancelled = asyncio.ensure_future(aio.take(path, timeout=20))
                await asyncio.sleep(0.1)
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                taking = asyncio.ensure_future(take_and_close(path))
                await asyncio.sleep(0.2)
                assert not taking.done()  # it waits
            finally:
                for client in queued:
                    client.close()  # each goes away before its hello: the offer goes on
            assert (await offer.wait(timeout=20)).pid == peer_pid(os.getpid())
            assert await taking == ["admin", "http"]

    run(main())


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan")], ids=["-1", "-0.5", "nan"])
def test_a_negative_timeout_is_a_value_error_as_in_the_blocking_forms(
        run: Runner, path: str, listeners: Offered, timeout: float) -> None:
    async def main() -> None:
        async with aio.AsyncOffer(path, listeners) as offer:
            with pytest.raises(ValueError, match="timeout must be None or a number >= 0"):
                await offer.wait(timeout)
            with pytest.raises(TypeError, match="timeout must be None or a number"):
                await offer.wait("1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout must be None or a number >= 0"):
            await aio.take(path, timeout)

    run(main())


@pytest.mark.parametrize("value", ["http", None], ids=["str", "None"])
def test_an_offered_value_of_the_wrong_type_is_a_type_error(
        run: Runner, path: str, listeners: Offered, value: object) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="'x' must be a socket"):
            aio.AsyncOffer(path, {"x": value})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="uid must be an int"):
            aio.AsyncOffer(path, listeners, uid="0")  # type: ignore[arg-type]

    run(main())
    assert not os.path.exists(path)


def test_take_from_nothing_names_the_path(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError) as raised:
            await aio.take(tmp_path / "no-offer", timeout=10)
        assert raised.value.filename == str(tmp_path / "no-offer")

    run(main())
