"""A receiver with SO_PASSPIDFD (Linux >= 6.5) gets a pidfd of the sender
with every message, a descriptor like any other: every receive closes it,
and with SO_PASSCRED as well the control buffer still has room for it and
for MAX_FDS descriptors."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import pytest

import fdpass
from fdpass import FDChannel
from fdpass.aio import AsyncFDChannel
from support import SO_PASSPIDFD, close_all, raw_send, same_file


def received_fds(result: object) -> list[int]:
    """The descriptors a receive call returned, now owned by the test."""
    if isinstance(result, int):
        return [result]
    if isinstance(result, list):
        return result
    if isinstance(result, tuple):
        return list(result[1])
    assert hasattr(result, "fileno")
    return [os.dup(result.fileno())]


def close_result(result: object) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


RECEIVES: dict[str, Callable[[FDChannel], object]] = {
    "recv_fd": lambda ch: ch.recv_fd(),
    "recv_fds": lambda ch: ch.recv_fds(),
    "recv_message": lambda ch: ch.recv_message(16),
    "recv_file": lambda ch: ch.recv_file(buffering=0),
    "recv_socket": lambda ch: ch.recv_socket(),
    "fdpass.recv": lambda ch: fdpass.recv(ch.fileno()),
}


def passing(sock: socket.socket, passcred: bool) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 1)
    except OSError as error:  # a kernel older than 6.5
        pytest.skip(f"SO_PASSPIDFD: {error}")
    if passcred:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


@pytest.mark.parametrize("passcred", [False, True], ids=["pidfd", "pidfd+cred"])
@pytest.mark.parametrize("call", sorted(RECEIVES))
def test_every_receive_closes_the_pidfd(sockets: tuple[socket.socket, socket.socket],
                                        stream: tuple[socket.socket, socket.socket],
                                        call: str, passcred: bool) -> None:
    peer, mine = sockets
    passing(mine, passcred)
    passed = stream[0]
    with FDChannel(mine, closefd=False) as rx:
        for _ in range(3):
            raw_send(peer, b"\0", [passed.fileno()])
            result = RECEIVES[call](rx)
            fds = received_fds(result)
            try:
                assert len(fds) == 1 and same_file(fds[0], passed.fileno())
            finally:
                if isinstance(result, (int, list, tuple)):
                    close_all(fds)
                else:
                    os.close(fds[0])
                    close_result(result)


def test_max_fds_beside_credentials_and_a_pidfd(sockets: tuple[socket.socket, socket.socket]) -> None:
    peer, mine = sockets
    passing(mine, passcred=True)
    with FDChannel(mine, closefd=False) as rx:
        raw_send(peer, b"\0", [0] * fdpass.MAX_FDS)
        got = rx.recv_fds()
        assert len(got) == fdpass.MAX_FDS and all(same_file(fd, 0) for fd in got)
        close_all(got)
        raw_send(peer, b"data", [])
        assert rx.recv_message(16) == (b"data", [])


def test_refused_messages_close_the_pidfd(sockets: tuple[socket.socket, socket.socket]) -> None:
    peer, mine = sockets
    passing(mine, passcred=True)
    with FDChannel(mine, closefd=False) as rx:
        raw_send(peer, b"\0", [0, 1])
        with pytest.raises(fdpass.ProtocolError):
            rx.recv_fd()
        raw_send(peer, b"\0", [])
        with pytest.raises(fdpass.ProtocolError):
            rx.recv_fd()


def test_asyncio_receives_close_the_pidfd() -> None:
    async def main() -> None:
        a, b = AsyncFDChannel.pair(socket.SOCK_SEQPACKET)
        async with a, b:
            passing(b._sock, passcred=True)
            for _ in range(3):
                await a.send_fd(0)
                fd = await b.recv_fd()
                assert same_file(fd, 0)
                os.close(fd)
    asyncio.run(main())
