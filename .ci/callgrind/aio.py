"""The asyncio ping-pong docs/performance.md counts under callgrind, in one
process: two tasks on one event loop, one sending, one answering.

python aio.py N MODE: MODE is "channel-LOOP" (AsyncFDChannel: send_fd, the
answer read with recv_message(1); the other task recv_fd, os.close, one
byte back) or "floor-LOOP" (the loop's own sock_sendall/sock_recv of one
byte each way, no descriptor), LOOP "asyncio" or "uvloop".  Every receive
in it waits for the loop, as every receive of the unpinned bench row does.
.ci/callgrind/count subtracts the same run with N = 0."""

import asyncio
import os
import socket
import sys

from fdpass.aio import AsyncFDChannel

N = int(sys.argv[1])
KIND, LOOP = sys.argv[2].split("-")


async def channel() -> None:
    a, b = socket.socketpair()
    async with AsyncFDChannel(a) as sender, AsyncFDChannel(b) as receiver:
        async def answer() -> None:
            for _ in range(N):
                os.close(await receiver.recv_fd())
                b.send(b"k")

        answering = asyncio.ensure_future(answer())
        for _ in range(N):
            await sender.send_fd(0)
            await sender.recv_message(1)
        await answering


async def floor() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)

        async def answer() -> None:
            for _ in range(N):
                await loop.sock_recv(b, 1)
                await loop.sock_sendall(b, b"k")

        answering = asyncio.ensure_future(answer())
        for _ in range(N):
            await loop.sock_sendall(a, b"\0")
            await loop.sock_recv(a, 1)
        await answering


if LOOP == "uvloop":
    import uvloop

    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
try:
    loop.run_until_complete(channel() if KIND == "channel" else floor())
finally:
    loop.close()
