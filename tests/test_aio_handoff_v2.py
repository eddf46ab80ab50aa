"""fdpass.aio's forms of handoff version 2, AsyncOffer.move and
AsyncTakeover.items(), under asyncio and uvloop: with each other, with the
blocking forms, a move that times out, items() that times out."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from fdpass import aio, handoff
from fdpass.handoff import Item
from test_aio import Runner, libuv_started, run  # noqa: F401  (fixtures)

Offered = dict[str, socket.socket]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "offer.sock")


async def handed_over(path: str, listeners: Offered) -> tuple[aio.AsyncOffer, aio.AsyncTakeover]:
    """An async offer whose wait() has returned, and its async successor, ready."""
    offer = aio.AsyncOffer(path, listeners)
    waiting = asyncio.ensure_future(offer.wait(timeout=20))
    takeover = await aio.take(path, timeout=20)
    await takeover.ready()
    await waiting
    for sock in takeover.sockets.values():
        sock.close()
    return offer, takeover


async def collect(takeover: aio.AsyncTakeover, count: int | None = None,
                  timeout: float = 20) -> list[Item[int]]:
    got = []
    async for item in takeover.items(timeout=timeout):
        got.append(item)
        if len(got) == count:
            break
    return got


def test_async_move_and_items_while_the_loop_serves(run: Runner, path: str,
                                                    listeners: Offered) -> None:
    pairs = [socket.socketpair() for _ in range(40)]  # more than one batch

    async def main() -> None:
        offer, takeover = await handed_over(path, listeners)
        with closing(offer), closing(takeover):
            items = [Item(f"conn{n}", [a], b"%d" % n) for n, (a, _) in enumerate(pairs)]
            moving = asyncio.ensure_future(offer.move(items, timeout=20))
            got = await collect(takeover, len(items))
            moved = await moving
            assert moved == (items, [])
            assert all(a.fileno() == -1 for a, _ in pairs)
            assert [(item.name, item.state) for item in got] == [
                (f"conn{n}", b"%d" % n) for n in range(len(pairs))]
            for item, (_, b) in zip(got, pairs):
                with socket.socket(fileno=item.fds[0]) as sock:
                    b.sendall(b"ping")
                    assert sock.recv(10) == b"ping"
            offer.close()
            assert await collect(takeover) == []  # ends when the offer closes

    try:
        run(main())
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_async_move_that_times_out_keeps_everything(run: Runner, path: str,
                                                    listeners: Offered) -> None:
    a, b = socket.socketpair()

    async def main() -> None:
        offer, takeover = await handed_over(path, listeners)
        with closing(offer), closing(takeover):
            items = [Item("a", [a], b"state")]
            assert await offer.move(items, timeout=0.2) == ([], items)
            assert a.fileno() >= 0
            assert await collect(takeover) == []  # its ACK came too late: never counted

    with a, b:
        run(main())


def test_async_items_times_out_and_goes_on(run: Runner, path: str, listeners: Offered) -> None:
    a, b = socket.socketpair()

    async def main() -> None:
        offer, takeover = await handed_over(path, listeners)
        with closing(offer), closing(takeover):
            with pytest.raises(TimeoutError):
                await collect(takeover, 1, timeout=0.05)
            moving = asyncio.ensure_future(offer.move([Item("a", [a])], timeout=20))
            (got,) = await collect(takeover, 1)
            assert (await moving).taken[0].name == "a"
            os.close(got.fds[0])

    with a, b:
        run(main())


def test_async_offer_moves_to_a_blocking_successor(run: Runner, path: str,
                                                   listeners: Offered) -> None:
    a, b = socket.socketpair()
    names: list[str] = []

    def successor() -> None:
        with handoff.take(path, timeout=20) as takeover:
            for sock in takeover.sockets.values():
                sock.close()
            takeover.ready()
            for item in takeover.items(timeout=20):
                names.append(item.name)
                os.close(item.fds[0])

    async def main() -> handoff.Moved:
        async with aio.AsyncOffer(path, listeners) as offer:
            thread = threading.Thread(target=successor)
            thread.start()
            try:
                await offer.wait(timeout=20)
                return await offer.move([Item("a", [a])], timeout=20)
            finally:
                offer.close()
                await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)

    with a, b:
        assert run(main()).taken[0].name == "a"
    assert names == ["a"]


def test_async_take_from_a_blocking_offer(run: Runner, path: str, listeners: Offered) -> None:
    a, b = socket.socketpair()
    moved: list[Any] = []

    offer = handoff.Offer(path, listeners)

    def old() -> None:
        with offer:
            offer.wait(timeout=20)
            moved.append(offer.move([Item("a", [a], b"s")], timeout=20))

    async def main() -> list[tuple[str, bytes]]:
        async with await aio.take(path, timeout=20) as takeover:
            for sock in takeover.sockets.values():
                sock.close()
            await takeover.ready()
            got = await collect(takeover)
        for item in got:
            os.close(item.fds[0])
        return [(item.name, item.state) for item in got]

    thread = threading.Thread(target=old)
    thread.start()
    try:
        with a, b:
            assert run(main()) == [("a", b"s")]
    finally:
        thread.join(30)
    assert moved[0].kept == []


def test_async_move_before_wait_is_a_value_error(run: Runner, path: str,
                                                 listeners: Offered) -> None:
    async def main() -> None:
        async with aio.AsyncOffer(path, listeners) as offer:
            with pytest.raises(ValueError, match="after wait"):
                await offer.move([Item("a", [0])])

    started = time.monotonic()
    run(main())
    assert time.monotonic() - started < 5
