"""A generation of a small TCP server with long-lived connections, for
tests/test_handoff_v2.py: each request is a line, each answer "generation
count", count being the requests this connection had answered before (the
state that moves with it), as the demo's (fdpass._demo_handoff) answer.

    live_server.py PATH GENERATION [DIE_AFTER]

Generation 0 listens on 127.0.0.1 and prints "port P"; a later one takes
the listener and the connections over from the offer at PATH (killing
itself with SIGKILL after DIE_AFTER items, when given).  Each prints
"serving G" and offers at PATH in turn; when its successor is ready it
moves every connection, prints "moved TAKEN KEPT", serves on what was kept
(and offers again), and exits once nothing is left; or when its stdin
closes.  Its last line is "exit" and the descriptors it left open."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys

from fdpass import handoff, wait_for_discards
from fdpass._demo_handoff import LiveState, answer_live

STDIN = 0


Connections = dict[socket.socket, LiveState]


def print_line(*words: object) -> None:
    print(*words, flush=True)


def take_over(path: str, die_after: int) -> tuple[socket.socket, Connections]:
    with handoff.take(path, timeout=10) as takeover:
        listener = takeover.sockets["tcp"]
        takeover.ready()
        connections = {}
        for item in takeover.items(timeout=10):
            connections[socket.socket(fileno=item.fds[0])] = LiveState.load(item.state)
            if len(connections) == die_after:
                os.kill(os.getpid(), signal.SIGKILL)  # the next items came, unacknowledged
    return listener, connections


def watch(selector: selectors.BaseSelector, connections: Connections) -> None:
    for conn in connections:
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ, conn)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def main() -> None:
    before = open_fds()
    path, generation = sys.argv[1], int(sys.argv[2])
    die_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if generation == 0:
        listener = socket.create_server(("127.0.0.1", 0))
        connections: Connections = {}
        print_line("port", listener.getsockname()[1])
    else:
        listener, connections = take_over(path, die_after)
    listener.setblocking(False)
    print_line("serving", generation)
    selector = selectors.DefaultSelector()
    selector.register(STDIN, selectors.EVENT_READ)
    selector.register(listener, selectors.EVENT_READ)
    watch(selector, connections)
    offer = handoff.Offer(path, {"tcp": listener})
    stopping = False
    while not stopping:
        for key, _ in selector.select(0.002):
            if key.fileobj == STDIN:
                stopping = not os.read(STDIN, 100)
            elif key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                connections[conn] = LiveState()
                watch(selector, {conn: connections[conn]})
            elif not answer_live(key.data, connections[key.data], generation):
                selector.unregister(key.data)
                del connections[key.data]
                key.data.close()
        try:
            offer.wait(timeout=0)
        except TimeoutError:
            continue
        for conn in connections:
            selector.unregister(conn)
        moved = offer.move([handoff.Item("conn", [conn], state.dump())
                            for conn, state in connections.items()], timeout=10)
        offer.close()
        print_line("moved", len(moved.taken), len(moved.kept))
        connections = {c: s for c, s in connections.items() if c.fileno() >= 0}  # the kept
        if not connections:
            break
        watch(selector, connections)
        offer = handoff.Offer(path, {"tcp": listener})  # serve on, and offer again
    selector.close()
    offer.close()
    listener.close()
    for conn in connections:
        conn.close()
    wait_for_discards(10)
    print_line("exit", sorted(int(fd) for fd in open_fds() - before))


if __name__ == "__main__":
    main()
