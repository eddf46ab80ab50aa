"""`python -m fdpass demo handoff`: a TCP server on 127.0.0.1, under a
small built-in load, is replaced by a new process three times through
fdpass.handoff; then, for comparison, restarted the plain way (close, then
bind again) under the same load.  It prints what each generation served
and what the client saw go wrong: nothing, for the handoff.

The same pieces make the load proof in tests/test_handoff_load.py, with the
client at full speed.  A generation is `python -m fdpass._demo_handoff
serve N --dir DIR (--bind PORT | --take PATH)`, driven over its stdin and
stdout.  The handoff paths are relative to DIR, the generations' working
directory, so that a long $TMPDIR never makes one too long for AF_UNIX."""

from __future__ import annotations

import argparse
import os
import queue
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
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- a generation: one server process ---------------------------------------

def serve(generation: int, directory: str, port: int | None, path: str | None) -> int:
    """One generation, working in directory: listen (bind port, or take
    the listener over from the offer at path), answer each connection's
    request line with this generation's number, and follow the commands on
    stdin: "handoff PATH" offers the listener to a successor and stops once
    it is ready; "stop" stops.  Either way what was accepted is answered
    before exiting."""
    os.chdir(directory)
    takeover = None
    if path is not None:
        takeover = handoff.take(path, timeout=PATIENCE)
        listener = takeover.sockets["http"]
    else:
        listener = socket.create_server(("127.0.0.1", port or 0), backlog=128)
    # Shared with the other generation: O_NONBLOCK belongs to the socket,
    # not the process, so every generation polls with a timeout.
    listener.settimeout(ACCEPT_POLL)
    stopping = threading.Event()
    served = [0]
    accepting = threading.Thread(target=accept_loop,
                                 args=(listener, generation, stopping, served))
    accepting.start()
    try:
        if takeover is not None:
            with takeover:
                takeover.ready()  # the old generation may stop now
        say("serving", generation, listener.getsockname()[1], os.getpid())
        command = sys.stdin.readline().split()
        successor = ""
        if command and command[0] == "handoff":
            with handoff.Offer(command[1], {"http": listener}) as offer:
                say("offering", command[1])
                successor = f"pid {offer.wait(timeout=PATIENCE).pid}"
    finally:
        stopping.set()  # stop accepting; what was accepted is answered
        accepting.join()
        listener.close()
    say("served", generation, served[0], successor or "-")
    return 0


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
            except ConnectionRefusedError:
                return "refused"
            except (ConnectionResetError, BrokenPipeError):
                return "reset"
            except socket.timeout:
                return "unanswered"
            except OSError as error:
                return f"other ({error.strerror})"
        return int(answer) if answer.strip().isdigit() else "unanswered"


# -- the run -----------------------------------------------------------------

class Result(NamedTuple):
    answers: dict[int, int]  # client side: answers by generation
    served: dict[int, int]  # server side: what each generation says it served
    failures: dict[str, int]
    seconds: float


def run(restarts: int = 3, *, handoff_: bool = True, threads: int = 2, pause: float = 0.0,
        dwell: float = 0.3, out: Callable[[str], None] = print) -> Result:
    """Start generation 0, put it under load, replace it restarts times
    (through an Offer and take() with handoff_, else by stopping it and
    binding again), each generation serving dwell seconds, then stop."""
    started = time.monotonic()
    served: dict[int, int] = {}
    generations: list[Generation] = []
    load: Load | None = None
    with tempfile.TemporaryDirectory(prefix="fdpass-demo-") as workdir:
        try:
            current = Generation(0, workdir, "--bind", "0")
            generations.append(current)
            _, port, pid = current.expect("serving")
            out(f"  generation 0 (pid {pid}) listening on 127.0.0.1:{port}")
            load = Load(("127.0.0.1", int(port)), threads, pause)
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
                    successor = Generation(number, workdir, "--bind", port)
                    generations.append(successor)
                _, _, pid = successor.expect("serving")
                how = "took the listener over" if handoff_ else "bound the port again"
                out(f"  generation {number} (pid {pid}) {how}; generation "
                    f"{current.generation} served {served[current.generation]} and exited")
                current = successor
                time.sleep(dwell)
            load.stop()
            current.tell("stop")
            _end(current, served)
        finally:
            if load is not None:
                load.stop()
            for generation in generations:
                if generation.process.returncode is None:
                    generation.process.kill()
                    generation.end()
    assert load is not None
    return Result(dict(sorted(load.answers.items())), served, dict(load.failures),
                  time.monotonic() - started)


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


def main(out: Callable[[str], None] = print) -> int:
    out("a TCP server on 127.0.0.1 under a small load (2 client threads, one connection "
        "every 2 ms each), replaced by a new process 3 times through fdpass.handoff "
        "(Offer, take, ready):")
    shown = run(3, threads=2, pause=0.002, out=out)
    out(f"handoff: {summary(shown)}")
    out("for comparison, the plain restart (close the listener, then a new process binds "
        "again) under the same load:")
    plain = run(1, handoff_=False, threads=2, pause=0.002, out=out)
    out(f"plain restart: {summary(plain)}")
    lost = sum(shown.failures.values())
    if lost or len(shown.answers) != 4 or shown.answers != shown.served:
        out(f"demo failed: the handoff lost {lost} connections")
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
    args = parser.parse_args(argv)
    return serve(args.generation, args.dir, args.bind, args.take)


if __name__ == "__main__":
    sys.exit(_serve_main(sys.argv[1:]))
