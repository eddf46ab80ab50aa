"""`python -m fdpass demo handoff`: a TCP server on 127.0.0.1, under a
small built-in load, is replaced by a new process three times through
fdpass.handoff; then, for comparison, restarted the plain way (close, then
bind again) under the same load.  The load is short connections (one
request each) and a few long-lived ones exchanging a request every few
milliseconds, which the handoff moves with their state (version 2: each
answer counts the requests answered before on that connection).  It
prints what each generation served and what the clients saw go wrong:
nothing, for the handoff.

The same pieces make the load proof in tests/test_handoff_load.py, with the
client at full speed.  A generation is `python -m fdpass._demo_handoff
serve N --dir DIR (--bind PORT | --take PATH)`, driven over its stdin and
stdout.  The handoff paths are relative to DIR, the generations' working
directory, so that a long $TMPDIR never makes one too long for AF_UNIX."""

from __future__ import annotations

import argparse
import json
import os
import queue
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import IO, Callable, NamedTuple

from fdpass import handoff
from fdpass._demo import DemoFailed

#: Seconds a generation waits for anything, and a client for its answer.
PATIENCE = 20.0
#: Seconds an accepting generation waits in poll before it looks whether to stop.
ACCEPT_POLL = 0.05
#: Long-lived connections, and the seconds between a request and the next on each.
LIVE_CONNECTIONS, LIVE_PAUSE = 3, 0.005
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- a generation: one server process ---------------------------------------

def serve(generation: int, directory: str, port: int | None, live_port: int | None,
          path: str | None) -> int:
    """One generation, working in directory: listen (bind port and
    live_port, or take the listeners over from the offer at path),
    answer each short connection's request line with this generation's
    number and each long-lived connection's requests as they come, and
    follow the commands on stdin: "handoff PATH" offers the listeners to a
    successor, moves the long-lived connections to it once it is ready,
    and stops; "stop" stops.  Either way what was accepted is answered
    before exiting."""
    os.chdir(directory)
    takeover = None
    if path is not None:
        takeover = handoff.take(path, timeout=PATIENCE)
        listener, live = takeover.sockets["http"], takeover.sockets["live"]
    else:
        listener = socket.create_server(("127.0.0.1", port or 0), backlog=128)
        live = socket.create_server(("127.0.0.1", live_port or 0))
    # Shared with the other generation: O_NONBLOCK belongs to the socket,
    # not the process, so every generation polls with a timeout.
    listener.settimeout(ACCEPT_POLL)
    stopping = threading.Event()
    served = [0]
    accepting = threading.Thread(target=accept_loop,
                                 args=(listener, generation, stopping, served))
    accepting.start()
    connections: dict[socket.socket, LiveState] = {}
    stop_live = threading.Event()
    living = threading.Thread(target=live_loop,
                              args=(live, generation, stop_live, connections))
    try:
        if takeover is not None:
            with takeover:
                takeover.ready()  # the old generation may stop now
                for item in takeover.items(timeout=PATIENCE):  # its long-lived connections
                    connections[socket.socket(fileno=item.fds[0])] = LiveState.load(item.state)
        living.start()
        say("serving", generation, listener.getsockname()[1], os.getpid(),
            live.getsockname()[1])
        command = sys.stdin.readline().split()
        successor, kept = "", 0
        if command and command[0] == "handoff":
            with handoff.Offer(command[1], {"http": listener, "live": live}) as offer:
                say("offering", command[1])
                successor = f"pid {offer.wait(timeout=PATIENCE).pid}"
                stop_live.set()  # between two requests: what came since moves as state
                living.join()
                kept = len(offer.move([handoff.Item("live", [conn], state.dump())
                                       for conn, state in connections.items()],
                                      timeout=PATIENCE).kept)
    finally:
        stopping.set()  # stop accepting; what was accepted is answered
        stop_live.set()
        accepting.join()
        if living.is_alive():
            living.join()
        listener.close()
        live.close()
        for conn in connections:
            conn.close()  # none left after a move; kept ones end here
    say("served", generation, served[0], successor or "-", kept)
    return 0


class LiveState:
    """A long-lived connection's state: the requests answered, and the
    bytes of the next one received so far."""

    def __init__(self, count: int = 0, buffer: bytes = b"") -> None:
        self.count = count
        self.buffer = buffer

    def dump(self) -> bytes:
        """The bytes an Item carries to the successor."""
        return json.dumps({"count": self.count,
                           "buffer": self.buffer.decode("latin-1")}).encode()

    @classmethod
    def load(cls, state: bytes) -> LiveState:
        fields = json.loads(state)
        return cls(fields["count"], fields["buffer"].encode("latin-1"))


def live_loop(live: socket.socket, generation: int, stopping: threading.Event,
              connections: dict[socket.socket, LiveState]) -> None:
    """Accept long-lived connections on live and answer each request line
    with "generation count" until stopping; connections stay open."""
    with selectors.DefaultSelector() as selector:
        selector.register(live, selectors.EVENT_READ)
        for conn in connections:
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ)
        while not stopping.is_set():
            for key, _ in selector.select(ACCEPT_POLL):
                if key.fileobj is live:
                    try:
                        conn, _ = live.accept()
                    except (BlockingIOError, socket.timeout, ConnectionAbortedError):
                        continue  # the other generation took it
                    conn.setblocking(False)
                    connections[conn] = LiveState()
                    selector.register(conn, selectors.EVENT_READ)
                    continue
                conn = connections_key(key.fileobj, connections)
                if not answer_live(conn, connections[conn], generation):
                    selector.unregister(conn)
                    del connections[conn]
                    conn.close()


def connections_key(fileobj: object, connections: dict[socket.socket, LiveState]
                    ) -> socket.socket:
    assert isinstance(fileobj, socket.socket) and fileobj in connections
    return fileobj


def answer_live(conn: socket.socket, state: LiveState, generation: int) -> bool:
    """Answer the whole requests received on conn; False once it has ended."""
    try:
        data = conn.recv(4096)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if not data:
        return False
    state.buffer += data
    while b"\n" in state.buffer:
        _, state.buffer = state.buffer.split(b"\n", 1)
        try:
            conn.sendall(f"{generation} {state.count}\n".encode())
        except BlockingIOError:
            return False  # a client that reads nothing: let it go
        state.count += 1
    return True


def accept_loop(listener: socket.socket, generation: int, stopping: threading.Event,
                served: list[int]) -> None:
    answer = f"{generation}\n".encode()
    while not stopping.is_set():
        try:
            conn, _ = listener.accept()
        except (socket.timeout, BlockingIOError, ConnectionAbortedError):
            continue  # nothing came, or the other generation took it
        with conn:
            try:
                conn.settimeout(PATIENCE)
                request = b""
                while not request.endswith(b"\n"):
                    chunk = conn.recv(100)
                    if not chunk:
                        break
                    request += chunk
                conn.sendall(answer)
            except OSError:
                continue  # the client's failure: it counts it
        served[0] += 1


def say(*words: object) -> None:
    print(*words, flush=True)


class Generation:
    """A generation process, its stdout read line by line by a thread so
    that every wait for it has a timeout."""

    def __init__(self, generation: int, directory: str, *how: str) -> None:
        self.generation = generation
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fdpass._demo_handoff", "serve", str(generation),
             "--dir", directory, *how],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PACKAGE_ROOT)
        self._lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,))
        self._reader.start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line)
        self._lines.put("")

    def expect(self, word: str) -> list[str]:
        """The next line's fields after word, which it must start with."""
        try:
            line = self._lines.get(timeout=PATIENCE)
        except queue.Empty:
            raise DemoFailed(f"generation {self.generation} said nothing for "
                             f"{PATIENCE} s (expected {word!r})") from None
        fields = line.split()
        if not fields or fields[0] != word:
            raise DemoFailed(f"generation {self.generation}: expected {word!r}, got {line!r}")
        return fields[1:]

    def tell(self, *words: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(" ".join(words) + "\n")
        self.process.stdin.flush()

    def end(self) -> int:
        """Wait for the exit (killing after PATIENCE), close the pipes."""
        try:
            status = self.process.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._reader.join(PATIENCE)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.stdout.close()
        return status


# -- the client --------------------------------------------------------------

class Load:
    """Client threads opening TCP connections to address one after another,
    each sending a request line and reading the answer to the end; pause
    seconds between connections (0: as fast as it can)."""

    def __init__(self, address: tuple[str, int], threads: int, pause: float) -> None:
        self.address = address
        self.pause = pause
        self.answers: Counter[int] = Counter()  # by generation
        self.failures: Counter[str] = Counter()  # refused, reset, unanswered, other
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            outcome = self._one()
            with self._lock:
                if isinstance(outcome, int):
                    self.answers[outcome] += 1
                else:
                    self.failures[outcome] += 1
            if self.pause:
                self._stop.wait(self.pause)

    def _one(self) -> int | str:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(PATIENCE)
            try:
                sock.connect(self.address)
                sock.sendall(b"which generation?\n")
                answer = b""
                while True:
                    chunk = sock.recv(100)
                    if not chunk:
                        break
                    answer += chunk
            except OSError as error:
                return failure(error, "reset")
        return int(answer) if answer.strip().isdigit() else "unanswered"


def failure(error: OSError, reset: str) -> str:
    """What a client counts a connection that failed with error as."""
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, (ConnectionResetError, BrokenPipeError)):
        return reset
    if isinstance(error, socket.timeout):
        return "unanswered"
    return f"other ({error.strerror})"


class LiveLoad(Load):
    """Long-lived client connections to address, each in a thread sending
    a request line every pause seconds and checking its answer: the
    generation, and the requests answered before on this connection (its
    state).  A connection that fails is counted (refused, reset or ended,
    unanswered, state) and opened again."""

    def _run(self) -> None:
        while not self._stop.is_set():
            failure = self._connection()
            if failure:
                with self._lock:
                    self.failures[failure] += 1
                self._stop.wait(self.pause)

    def _connection(self) -> str:
        """One connection's life, until stopped ("") or a failure."""
        try:
            with socket.create_connection(self.address, timeout=PATIENCE) as sock, \
                    sock.makefile("rb") as answers:
                count = 0
                while not self._stop.is_set():
                    sock.sendall(b"next?\n")
                    fields = answers.readline().split()
                    if not fields:
                        return "reset or ended"
                    if len(fields) != 2 or int(fields[1]) != count:
                        return "state"
                    with self._lock:
                        self.answers[int(fields[0])] += 1
                    count += 1
                    self._stop.wait(self.pause)
        except OSError as error:
            return failure(error, "reset or ended")
        return ""


# -- the run -----------------------------------------------------------------

class Result(NamedTuple):
    answers: dict[int, int]  # client side: answers by generation
    served: dict[int, int]  # server side: what each generation says it served
    failures: dict[str, int]
    seconds: float
    live: dict[int, int]  # long-lived connections: answers by generation
    live_failures: dict[str, int]


def run(restarts: int = 3, *, handoff_: bool = True, threads: int = 2, pause: float = 0.0,
        dwell: float = 0.3, out: Callable[[str], None] = print) -> Result:
    """Start generation 0, put it under load, replace it restarts times
    (through an Offer and take() with handoff_, else by stopping it and
    binding again), each generation serving dwell seconds, then stop."""
    started = time.monotonic()
    served: dict[int, int] = {}
    generations: list[Generation] = []
    load: Load | None = None
    live: LiveLoad | None = None
    with tempfile.TemporaryDirectory(prefix="fdpass-demo-") as workdir:
        try:
            current = Generation(0, workdir, "--bind", "0")
            generations.append(current)
            _, port, pid, live_port = current.expect("serving")
            out(f"  generation 0 (pid {pid}) listening on 127.0.0.1:{port}, and on "
                f"127.0.0.1:{live_port} for {LIVE_CONNECTIONS} long-lived connections")
            load = Load(("127.0.0.1", int(port)), threads, pause)
            live = LiveLoad(("127.0.0.1", int(live_port)), LIVE_CONNECTIONS, LIVE_PAUSE)
            time.sleep(dwell)
            for number in range(1, restarts + 1):
                if handoff_:  # the successor takes over while the old one serves
                    path = f"handoff-{number}.sock"  # in workdir, however long
                    current.tell("handoff", path)
                    current.expect("offering")
                    successor = Generation(number, workdir, "--take", path)
                    generations.append(successor)
                    _end(current, served)
                else:  # the old one stops, then the new one binds
                    current.tell("stop")
                    _end(current, served)
                    successor = Generation(number, workdir, "--bind", port,
                                           "--live-port", live_port)
                    generations.append(successor)
                _, _, pid, _ = successor.expect("serving")
                how = ("took the listeners and long-lived connections over" if handoff_
                       else "bound the ports again")
                out(f"  generation {number} (pid {pid}) {how}; generation "
                    f"{current.generation} served {served[current.generation]} and exited")
                current = successor
                time.sleep(dwell)
            load.stop()
            live.stop()
            current.tell("stop")
            _end(current, served)
        finally:
            if load is not None:
                load.stop()
            if live is not None:
                live.stop()
            for generation in generations:
                if generation.process.returncode is None:
                    generation.process.kill()
                    generation.end()
    assert load is not None and live is not None
    return Result(dict(sorted(load.answers.items())), served, dict(load.failures),
                  time.monotonic() - started, dict(sorted(live.answers.items())),
                  dict(live.failures))


def _end(generation: Generation, served: dict[int, int]) -> None:
    """Its "served" line, then its exit, which must be clean."""
    served[generation.generation] = int(generation.expect("served")[1])
    if generation.end() != 0:
        raise DemoFailed(f"generation {generation.generation} exited with "
                         f"status {generation.process.returncode}")


def summary(result: Result) -> str:
    failures = ", ".join(f"{result.failures.get(kind, 0)} {kind}"
                         for kind in ("refused", "reset", "unanswered"))
    others = {kind: n for kind, n in result.failures.items()
              if kind not in ("refused", "reset", "unanswered")}
    per = ", ".join(f"generation {g}: {n}" for g, n in result.answers.items())
    return (f"{sum(result.answers.values())} connections answered ({per}); {failures}"
            + (f"; {others}" if others else ""))


def live_summary(result: Result) -> str:
    per = ", ".join(f"generation {g}: {n}" for g, n in result.live.items())
    failures = ", ".join(f"{result.live_failures.get(kind, 0)} {kind}"
                         for kind in ("reset or ended", "unanswered", "state"))
    others = {kind: n for kind, n in result.live_failures.items()
              if kind not in ("reset or ended", "unanswered", "state")}
    return (f"{LIVE_CONNECTIONS} connections, {sum(result.live.values())} requests "
            f"answered ({per}); {failures}" + (f"; {others}" if others else ""))


def main(out: Callable[[str], None] = print) -> int:
    out("a TCP server on 127.0.0.1 under a small load (2 client threads, one connection "
        "every 2 ms each), replaced by a new process 3 times through fdpass.handoff "
        "(Offer, take, ready):")
    shown = run(3, threads=2, pause=0.002, out=out)
    out(f"handoff: {summary(shown)}")
    out(f"  long-lived: {live_summary(shown)}")
    out("for comparison, the plain restart (close the listener, then a new process binds "
        "again) under the same load:")
    plain = run(1, handoff_=False, threads=2, pause=0.002, out=out)
    out(f"plain restart: {summary(plain)}")
    out(f"  long-lived: {live_summary(plain)}")
    lost = sum(shown.failures.values())
    if lost or len(shown.answers) != 4 or shown.answers != shown.served:
        out(f"demo failed: the handoff lost {lost} connections")
        return 1
    if shown.live_failures or len(shown.live) != 4:
        out(f"demo failed: the long-lived connections saw {shown.live_failures}, "
            f"answered by {sorted(shown.live)}")
        return 1
    out(f"the handoff lost no connection: {lost} refused")
    return 0


def _serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fdpass._demo_handoff")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("generation", type=int)
    parser.add_argument("--dir", required=True, help="the working directory")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--bind", type=int, metavar="PORT")
    how.add_argument("--take", metavar="PATH")
    parser.add_argument("--live-port", type=int, metavar="PORT",
                        help="with --bind: the long-lived connections' port")
    args = parser.parse_args(argv)
    return serve(args.generation, args.dir, args.bind, args.live_port, args.take)


if __name__ == "__main__":
    sys.exit(_serve_main(sys.argv[1:]))
