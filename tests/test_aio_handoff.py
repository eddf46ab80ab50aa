"""fdpass.aio's handoff forms, AsyncOffer and take(), under asyncio and
uvloop: with each other, with the blocking forms, timeouts and
cancellation, a successor that goes away, refusals."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import fdpass
from fdpass import aio, handoff
from support import peer_pid, same_file
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
