"""A generation of a small TCP server with long-lived connections, for
tests/test_handoff_v2.py: each request is a line with a number, each answer
"generation count number", count being the requests this connection had
answered before (the state that moves with it).

    live_server.py PATH GENERATION [DIE_AFTER]

Generation 0 listens on 127.0.0.1 and prints "port P"; a later one takes
the listener and the connections over from the offer at PATH (killing
itself with SIGKILL after DIE_AFTER items, when given).  Each prints
"serving G" and offers at PATH in turn; when its successor is ready it
moves every connection, prints "moved TAKEN KEPT", serves on what was kept
(and offers again), and exits once nothing is left; or when its stdin
closes.  Its last line is "exit" and the descriptors it left open."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys

from fdpass import handoff, wait_for_discards

STDIN = 0


class Connection:
    def __init__(self, sock: socket.socket, count: int = 0, buffer: bytes = b"") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.count = count
        self.buffer = buffer

    def serve(self, generation: int) -> bool:
        """Answer every whole request received; False at the end of the stream."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.sock.sendall(b"%d %d %s\n" % (generation, self.count, line))
            self.count += 1
        return True

    def item(self) -> handoff.Item[socket.socket]:
        state = json.dumps({"count": self.count, "buffer": self.buffer.decode()})
        return handoff.Item("conn", [self.sock], state.encode())


def print_line(*words: object) -> None:
    print(*words, flush=True)


def take_over(path: str, die_after: int) -> tuple[socket.socket, list[Connection]]:
    with handoff.take(path, timeout=10) as takeover:
        listener = takeover.sockets["tcp"]
        takeover.ready()
        connections = []
        for item in takeover.items(timeout=10):
            state = json.loads(item.state)
            connections.append(Connection(socket.socket(fileno=item.fds[0]), state["count"],
                                          state["buffer"].encode()))
            if len(connections) == die_after:
                os.kill(os.getpid(), signal.SIGKILL)  # the next items came, unacknowledged
    return listener, connections


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def main() -> None:
    before = open_fds()
    path, generation = sys.argv[1], int(sys.argv[2])
    die_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if generation == 0:
        listener = socket.create_server(("127.0.0.1", 0))
        connections: list[Connection] = []
        print_line("port", listener.getsockname()[1])
    else:
        listener, connections = take_over(path, die_after)
    listener.setblocking(False)
    print_line("serving", generation)
    selector = selectors.DefaultSelector()
    selector.register(STDIN, selectors.EVENT_READ)
    selector.register(listener, selectors.EVENT_READ)
    for connection in connections:
        selector.register(connection.sock, selectors.EVENT_READ, connection)
    offer = handoff.Offer(path, {"tcp": listener})
    stopping = False
    while not stopping:
        for key, _ in selector.select(0.002):
            if key.fileobj == STDIN:
                stopping = not os.read(STDIN, 100)
            elif key.fileobj is listener:
                try:
                    connections.append(Connection(listener.accept()[0]))
                except BlockingIOError:
                    continue
                selector.register(connections[-1].sock, selectors.EVENT_READ, connections[-1])
            elif not key.data.serve(generation):
                selector.unregister(key.fileobj)
                key.data.sock.close()
                connections.remove(key.data)
        try:
            offer.wait(timeout=0)
        except TimeoutError:
            continue
        for connection in connections:
            selector.unregister(connection.sock)
        moved = offer.move([connection.item() for connection in connections], timeout=10)
        offer.close()
        print_line("moved", len(moved.taken), len(moved.kept))
        connections = [c for c in connections if c.sock.fileno() >= 0]  # the kept
        if not connections:
            break
        for connection in connections:
            selector.register(connection.sock, selectors.EVENT_READ, connection)
        offer = handoff.Offer(path, {"tcp": listener})  # serve on, and offer again
    selector.close()
    offer.close()
    listener.close()
    for connection in connections:
        connection.sock.close()
    wait_for_discards(10)
    print_line("exit", sorted(int(fd) for fd in open_fds() - before))


if __name__ == "__main__":
    main()
