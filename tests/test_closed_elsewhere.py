"""A call already waiting when the socket.socket its channel wraps is closed
elsewhere wakes with ValueError and never touches the descriptor number
again: by then the number may be an unrelated connection's."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from fdpass import FDChannel
from support import raw_send, same_file

WAITS = {
    "in-the-syscall": (True, None),     # closefd, blocking: waits inside recvmsg/sendmsg
    "in-poll": (False, None),           # no closefd: waits in poll
    "in-poll-with-timeout": (True, 5.0),
}


def waiting(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException | object]]:
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # noqa: BLE001  (the outcome is the test's)
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def reuse_number(number: int) -> tuple[socket.socket, socket.socket]:
    """A new connection whose first end has the number just freed."""
    a, b = socket.socketpair()
    if a.fileno() != number:
        a.close()
        b.close()
        pytest.fail(f"the number {number} was not reused (another thread took it?)")
    return a, b


Waiting = tuple[FDChannel, socket.socket, threading.Thread, list[object],
                socket.socket, socket.socket]


def closed_while_waiting(wait: str, call: Callable[[FDChannel], object]) -> Waiting:
    """A channel over a socket.socket whose call(channel) waits in another
    thread while the socket is closed behind the channel's back and its
    number goes to a new connection: (channel, the old socket's peer, the
    thread, its outcome, the new connection's two ends)."""
    closefd, timeout = WAITS[wait]
    mine, peer = socket.socketpair()
    mine.settimeout(timeout)
    number = mine.fileno()
    channel = FDChannel(mine, closefd=closefd)
    thread, outcome = waiting(lambda: call(channel))
    thread.join(0.3)
    assert thread.is_alive(), outcome
    mine.close()  # elsewhere, behind the channel's back
    unrelated, its_peer = reuse_number(number)
    return channel, peer, thread, outcome, unrelated, its_peer


@pytest.mark.parametrize("wait", sorted(WAITS))
def test_a_waiting_receive_never_reads_from_the_numbers_new_owner(wait: str) -> None:
    channel, peer, thread, outcome, unrelated, its_peer = closed_while_waiting(
        wait, lambda channel: channel.recv_fd())
    with unrelated, its_peer, peer, channel:
        r, w = os.pipe()
        try:
            raw_send(its_peer, b"\0", [r])   # meant for the unrelated connection
            raw_send(peer, b"\0", [w])       # and the old socket's peer wakes the call
            thread.join(10)
            assert not thread.is_alive()
            assert isinstance(outcome[0], ValueError), outcome
            assert "closed" in str(outcome[0])
            # The unrelated connection's message is still there, whole.
            unrelated.settimeout(2)
            got = FDChannel(unrelated, closefd=False).recv_fd()
            assert same_file(got, r)
            os.close(got)
        finally:
            os.close(r)
            os.close(w)


@pytest.mark.parametrize("wait", sorted(WAITS))
def test_a_waiting_send_never_writes_to_the_numbers_new_owner(wait: str) -> None:
    payload = b"x" * (4 << 20)  # far more than the socket buffers: the send waits
    channel, peer, thread, outcome, unrelated, its_peer = closed_while_waiting(
        wait, lambda channel: channel.send_fds([0], payload))
    with unrelated, its_peer, peer, channel:
        # Room on the old socket wakes the send.  Read without ancillary
        # data: the kernel drops the descriptor that went with the first byte.
        peer.settimeout(0.05)
        deadline = time.monotonic() + 10
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                peer.recv(1 << 20)
            except TimeoutError:
                pass
        thread.join(1)
        assert not thread.is_alive()
        if wait == "in-the-syscall":
            # The sendmsg that was under way finished on the old socket, as
            # it would have without the close; nothing more was written.
            assert outcome[0] is None or isinstance(outcome[0], ValueError), outcome
        else:
            assert isinstance(outcome[0], ValueError), outcome
        its_peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            its_peer.recv(1)  # nothing was written to the unrelated connection
