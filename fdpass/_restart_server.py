"""The Python server that `python -m fdpass bench restart` replaces: it
answers a small subset of HTTP/1.1 (a request is everything up to a blank
line; the answer is 200 with this generation's tag as its body), so that
nginx, HAProxy and Go's net/http serve the same protocol themselves and
every row measures a server being replaced, not a proxy in front of one.

    python -m fdpass._restart_server serve TAG_FILE (--bind PORT [--reuseport]
        | --inherit | --take PATH) [--offer PATH [--move]]
    python -m fdpass._restart_server supervise TAG_FILE

serve prints "ready PID" once it serves, and stops politely: on SIGTERM,
or once the successor that took its offer is ready.  Stopping, it stops
accepting, answers each open connection's next request with "Connection:
close" and closes it, and exits, its copy of the listener closing with
it (within DRAIN seconds whatever the clients do); with --move it first moves
its open connections, with what it had read of them, to the successor
(handoff protocol version 2).  supervise is the systemd-style row: it
holds the listener systemd-socket-activate passed it and, on SIGHUP,
restarts the service under it (stop, then start, as `systemctl restart`)."""

from __future__ import annotations

import argparse
import os
import queue
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from fdpass import handoff, systemd

#: How long a stopping server waits for its open connections' next request.
DRAIN = 2.0
#: How long any handoff step may take.
PATIENCE = 20.0
#: The listen backlog of every Python row (nginx's default).
BACKLOG = 511
# The moved state of a connection: what was read and not yet answered, then
# what was answered and not yet sent.
_STATE = struct.Struct(">I")


def answer(tag: bytes, closing: bool) -> bytes:
    """The response to one request."""
    body = tag + b"\n"
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode() + (b"\r\nConnection: close" if closing else b"")
            + b"\r\n\r\n" + body)


class Connection:
    """An open connection, and what it read and has not answered, answered
    and has not sent: all a successor needs to resume it."""

    def __init__(self, sock: socket.socket, inbuf: bytes = b"", outbuf: bytes = b"") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.inbuf = inbuf
        self.outbuf = outbuf
        self.closing = False  # answered with Connection: close; closes once sent

    def state(self) -> bytes:
        return _STATE.pack(len(self.inbuf)) + self.inbuf + self.outbuf

    @classmethod
    def resumed(cls, sock: socket.socket, state: bytes) -> Connection:
        (size,) = _STATE.unpack_from(state)
        start = _STATE.size
        return cls(sock, state[start:start + size], state[start + size:])


class Server:
    """One generation: a selectors loop over the listener and the open
    connections, single-threaded; handoff work in a thread of its own
    hands its results over through a queue and a wake-up socket."""

    def __init__(self, tag: bytes, listener: socket.socket) -> None:
        self.tag = tag
        self.listener = listener
        self.accepting = True
        listener.setblocking(False)  # shared with the other generation: it polls too
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.connections: dict[socket.socket, Connection] = {}
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.adopted: queue.Queue[Connection] = queue.Queue()
        self.successor_ready = threading.Event()
        self.terminated = False
        self.stopping_since: float | None = None

    def wake(self) -> None:
        try:
            self.wake_w.send(b"x")
        except BlockingIOError:
            pass  # a wake-up is pending already

    def run(self, offer_path: str | None, move: bool, taken: threading.Event) -> None:
        """Serve until told to stop, then drain.  With offer_path, offer
        the listener there once taken is set (the predecessor's connections
        are in: the successor then gets them all), and stop once the
        successor is ready, moving the open connections first with move."""
        signal.signal(signal.SIGTERM, self._terminate)
        offer = None
        while True:
            if offer_path is not None and offer is None and taken.is_set() and self.accepting:
                offer = offering(self, offer_path, self.listener)
            if self.stopping_since is None and (self.terminated or self.successor_ready.is_set()):
                if move and offer is not None and self.successor_ready.is_set():
                    self._stop_accepting()
                    self._move(offer)
                if offer is not None:
                    offer.close()  # the successor's items() ends here
                self._stop()
            if self.stopping_since is not None and (
                    not self.connections or time.monotonic() - self.stopping_since > DRAIN):
                break
            for key, events in self.selector.select(timeout=0.1):
                self._ready(key.fileobj, events)
            while not self.adopted.empty():
                self._add(self.adopted.get())
        for conn in list(self.connections.values()):
            self._drop(conn)
        self.listener.close()
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()

    def _terminate(self, signum: int, frame: object) -> None:
        self.terminated = True
        self.wake()

    def _ready(self, fileobj: Any, events: int) -> None:
        if fileobj is self.wake_r:
            try:
                self.wake_r.recv(4096)
            except BlockingIOError:
                pass
        elif fileobj is self.listener:
            self._accept()
        else:
            conn = self.connections[fileobj]
            if events & selectors.EVENT_READ:
                self._read(conn)
            if events & selectors.EVENT_WRITE and conn.sock in self.connections:
                self._flush(conn)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, ConnectionAbortedError):
                return  # nothing left, or the other generation took it
            self._add(Connection(sock))

    def _add(self, conn: Connection) -> None:
        self.connections[conn.sock] = conn
        self.selector.register(conn.sock, selectors.EVENT_READ)
        self._answer(conn)

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.inbuf += data
        self._answer(conn)

    def _answer(self, conn: Connection) -> None:
        """Answer every whole request read; once stopping, the first answer
        says Connection: close, and whatever follows it is not read."""
        while not conn.closing and b"\r\n\r\n" in conn.inbuf:
            _, conn.inbuf = conn.inbuf.split(b"\r\n\r\n", 1)
            conn.closing = self.stopping_since is not None
            conn.outbuf += answer(self.tag, conn.closing)
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        try:
            while conn.outbuf:
                conn.outbuf = conn.outbuf[conn.sock.send(conn.outbuf):]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(conn)
            return
        if conn.closing and not conn.outbuf:
            self._drop(conn)
            return
        self.selector.modify(conn.sock, selectors.EVENT_READ | (
            selectors.EVENT_WRITE if conn.outbuf else 0))

    def _drop(self, conn: Connection) -> None:
        self.connections.pop(conn.sock, None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _stop_accepting(self) -> None:
        """Accept no more.  The listener closes when the server exits: what
        the kernel queued on it meanwhile is the successor's if it shares
        the socket, and lost if not (unless tcp_migrate_req moves it)."""
        if self.accepting:
            self.selector.unregister(self.listener)
            self.accepting = False

    def _stop(self) -> None:
        self._stop_accepting()
        self.stopping_since = time.monotonic()
        for conn in list(self.connections.values()):
            self._answer(conn)  # a request read already is answered as closing

    def _move(self, offer: Any) -> None:
        """Every open connection, with what it read and has not sent, to
        the successor; the ones it does not take are served on here."""
        conns = list(self.connections.values())
        for conn in conns:
            self.selector.unregister(conn.sock)
            del self.connections[conn.sock]
        items = [handoff.Item("conn", [conn.sock], state=conn.state()) for conn in conns]
        moved = offer.move(items, timeout=PATIENCE) if items else None
        kept = {id(item) for item in moved.kept} if moved is not None else set()
        for conn, item in zip(conns, items):
            if id(item) in kept:
                self._add(conn)
        print(f"moved {len(conns) - len(kept)} kept {len(kept)}", flush=True)


def offering(server: Server, path: str, listener: socket.socket) -> Any:
    """An Offer of the listener at path whose wait() runs in a thread,
    telling the server when a successor is ready."""
    offer = handoff.Offer(path, {"http": listener})

    def wait() -> None:
        try:
            offer.wait(timeout=None)
        except ValueError:
            return  # the offer closed: this generation stopped first
        server.successor_ready.set()
        server.wake()

    threading.Thread(target=wait, daemon=True).start()
    return offer


def taking(server: Server, takeover: handoff.Takeover, move: bool,
           then: threading.Event) -> None:
    """Say ready, then adopt the connections the old process moves; sets
    then when done, so that this generation may offer in its turn."""
    def run() -> None:
        with takeover:
            takeover.ready()
            ready()
            if move:
                for item in takeover.items(timeout=PATIENCE):
                    sock = socket.socket(fileno=item.fds[0])
                    server.adopted.put(Connection.resumed(sock, item.state))
                    server.wake()
        then.set()

    threading.Thread(target=run, daemon=True).start()


def ready() -> None:
    print(f"ready {os.getpid()}", flush=True)


def bound(port: int, reuseport: bool) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(BACKLOG)
    return listener


def serve(args: argparse.Namespace) -> int:
    with open(args.tag_file, "rb") as tag_file:
        tag = tag_file.read().strip()
    takeover = None
    if args.take:
        takeover = handoff.take(args.take, timeout=PATIENCE)
        listener = takeover.sockets["http"]
    elif args.inherit:
        (_, fd), = systemd.listen_fds()
        listener = socket.socket(fileno=fd)
    else:
        listener = bound(args.bind, args.reuseport)
    server = Server(tag, listener)
    taken = threading.Event()
    if takeover is not None:
        taking(server, takeover, args.move, taken)
    else:
        ready()
        taken.set()
    server.run(args.offer, args.move, taken)
    return 0


def supervise(args: argparse.Namespace) -> int:
    """Hold the activator's listener and restart the service under it on
    SIGHUP; stop it and exit on SIGTERM."""
    (_, fd), = systemd.listen_fds()
    os.set_inheritable(fd, True)
    requests: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: requests.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: requests.append(signum))
    # The service's LISTEN_PID is its own pid: a shell sets it, then execs.
    command = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", sys.executable, "-m",
               "fdpass._restart_server", "serve", args.tag_file, "--inherit"]
    environment = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="http")

    def start() -> subprocess.Popen[bytes]:
        if fd != systemd.SD_LISTEN_FDS_START:
            raise RuntimeError(f"the listener is fd {fd}, not {systemd.SD_LISTEN_FDS_START}")
        return subprocess.Popen(command, env=environment, pass_fds=(fd,))

    service = start()
    while True:
        while not requests:
            time.sleep(0.01)
        signum = requests.pop(0)
        service.terminate()
        service.wait(timeout=PATIENCE)
        if signum == signal.SIGTERM:
            return 0
        service = start()


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fdpass._restart_server")
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve")
    serving.add_argument("tag_file")
    how = serving.add_mutually_exclusive_group(required=True)
    how.add_argument("--bind", type=int, metavar="PORT")
    how.add_argument("--inherit", action="store_true")
    how.add_argument("--take", metavar="PATH")
    serving.add_argument("--reuseport", action="store_true")
    serving.add_argument("--offer", metavar="PATH")
    serving.add_argument("--move", action="store_true")
    supervising = commands.add_parser("supervise")
    supervising.add_argument("tag_file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    return serve(args) if args.command == "serve" else supervise(args)


if __name__ == "__main__":
    sys.exit(main())
