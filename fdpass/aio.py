"""asyncio descriptor passing.  AsyncFDChannel makes the compiled engine's
non-blocking calls and, when one would block, waits on the event loop's
reader or writer callback: no thread, no executor, and a call that waits
has taken nothing from the socket, so cancelling it loses nothing."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, TypeVar

from fdpass._channel import MAX_FDS, FDChannel, wrap_socketpair
from fdpass._credentials import Credentials, Sender
from fdpass._engine import discard

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, StrPath

    from fdpass._channel import _FileDescriptorLike

__all__ = ["AsyncFDChannel", "AsyncOffer", "AsyncTakeover", "Server", "open_channel",
           "start_server", "take"]

_T = TypeVar("_T")
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)

#: Seconds before accepting again after the process ran out of something
#: (descriptors, memory), as asyncio's servers wait.
ACCEPT_RETRY_DELAY = 1.0
#: The accept errors that mean that: any other stops the server.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Longest pause between connect attempts while a listener's backlog is full.
_CONNECT_RETRY_MAX = 0.05


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Turns:
    """The tasks waiting to use one direction (reading or writing) of one
    socket, first come first served.  Only the head calls the socket and
    waits for it, so no message is interleaved with another; a task that
    leaves, done or failed or cancelled, hands on the turn.

    The loop's callback stays registered from one wait to the next (adding
    and removing it each time costs a third of a ping-pong's latency) and
    is removed when it fires with no task waiting, or at close."""

    __slots__ = ("_writing", "_queue", "_watch", "_waiter")

    def __init__(self, writing: bool) -> None:
        self._writing = writing
        self._queue: deque[asyncio.Future[None]] = deque()
        self._watch: tuple[asyncio.AbstractEventLoop, int, object] | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    async def join(self) -> asyncio.Future[None]:
        """Queue up and return once first in line; leave() must follow."""
        turn = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        if len(self._queue) > 1:
            try:
                await turn
            except BaseException:
                self.leave(turn)
                raise
        return turn

    def leave(self, turn: asyncio.Future[None]) -> None:
        first = self._queue[0] is turn
        self._queue.remove(turn)
        if first and self._queue:
            _wake(self._queue[0])

    async def ready(self, fd: int, owner: object) -> None:
        """Wait until fd is readable (writable).  owner, what closes fd, is
        kept alive while the loop watches fd: fd cannot close under it."""
        loop = asyncio.get_running_loop()
        watch = self._watch
        if watch is None or watch[0] is not loop or watch[1] != fd:
            self.unwatch()
            if self._writing:
                loop.add_writer(fd, self._fire)
            else:
                loop.add_reader(fd, self._fire)
            self._watch = (loop, fd, owner)
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def _fire(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self.unwatch()
        else:
            self._waiter = None
            _wake(waiter)

    def unwatch(self) -> None:
        """Stop watching the socket and wake the task waiting: done before
        the socket closes, so that the loop never watches a reused number."""
        if self._watch is not None:
            loop, fd, _ = self._watch
            self._watch = None
            if self._writing:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)
        if self._waiter is not None:
            _wake(self._waiter)
            self._waiter = None


class AsyncFDChannel:
    """FDChannel for asyncio: the same calls, awaited.

    sock is a connected AF_UNIX socket.socket (SOCK_STREAM, SOCK_SEQPACKET
    or SOCK_DGRAM); the channel puts it in non-blocking mode, as asyncio's
    own socket calls require, and close() closes it.  refuse_fds and
    passcred as FDChannel's."""

    __slots__ = ("_sock", "_channel", "_reading", "_writing")

    def __init__(self, sock: socket.socket, *, refuse_fds: bool = False,
                 passcred: bool = False) -> None:
        if not isinstance(sock, socket.socket):
            raise TypeError(f"AsyncFDChannel needs a socket.socket, not {type(sock).__name__}")
        self._channel = FDChannel(sock, refuse_fds=refuse_fds, passcred=passcred)
        sock.setblocking(False)
        self._sock = sock
        self._reading = _Turns(writing=False)
        self._writing = _Turns(writing=True)

    @classmethod
    def pair(cls, type: int = socket.SOCK_STREAM) -> tuple[AsyncFDChannel, AsyncFDChannel]:
        """Two connected channels over a new socketpair."""
        return wrap_socketpair(cls, type)

    @property
    def closed(self) -> bool:
        return self._channel.closed

    @property
    def type(self) -> socket.SocketKind:
        return self._channel.type

    def fileno(self) -> int:
        return self._channel.fileno()

    def close(self) -> None:
        """Close the channel and its socket (on fdpass's closer thread, so
        that no descriptor queued on it can block the loop).  Tasks waiting
        on it wake and raise ValueError, as calls on a closed channel do."""
        self._reading.unwatch()
        self._writing.unwatch()
        discard(self._sock, own=True)  # its queue may hold a peer's descriptors
        self._channel.close()

    async def __aenter__(self) -> AsyncFDChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<fdpass.aio.AsyncFDChannel [closed]>"
        return f"<fdpass.aio.AsyncFDChannel fd={self.fileno()} type={self.type.name}>"

    def peer_credentials(self) -> Credentials:
        """The connected peer's Credentials(pid, uid, gid) (SO_PEERCRED)."""
        return self._channel.peer_credentials()

    def peer_pidfd(self) -> int:
        """A new pidfd for the connected peer (SO_PEERPIDFD), the caller's."""
        return self._channel.peer_pidfd()

    async def send_fd(self, f: _FileDescriptorLike) -> None:
        """Send one descriptor in one message of one 0x00 byte."""
        await self._send(self._channel.send_fd, (f,), b"\0")

    async def send_fds(self, fs: Iterable[_FileDescriptorLike],
                       data: ReadableBuffer = b"\0") -> None:
        """Send 1..MAX_FDS descriptors in one message whose payload is data,
        whole: a payload the socket takes in parts goes out before any
        other message does."""
        fds = tuple(fs)
        await self._send(self._channel.send_fds, (fds, data), data)

    async def recv_fd(self) -> int:
        """Receive one message and return its one descriptor, now the caller's."""
        return await self._receive(self._channel.recv_fd)

    async def recv_fds(self, maxfds: int = MAX_FDS) -> list[int]:
        """Receive one message and return its descriptors (at least one)."""
        return await self._receive(self._channel.recv_fds, maxfds)

    async def recv_message(self, bufsize: int, maxfds: int = MAX_FDS) -> tuple[bytes, list[int]]:
        """Receive one message: (payload of at most bufsize bytes, descriptors)."""
        return await self._receive(self._channel.recv_message, bufsize, maxfds)

    async def recv_message_from(self, bufsize: int,
                                maxfds: int = MAX_FDS) -> tuple[bytes, list[int], Sender]:
        """Receive one message and who sent it, as FDChannel.recv_message_from."""
        return await self._receive(self._channel.recv_message_from, bufsize, maxfds)

    async def recv_file(self, mode: str | None = None, buffering: int = -1,
                        encoding: str | None = None, errors: str | None = None,
                        newline: str | None = None) -> IO[Any]:
        """Receive one descriptor as a file object that owns it; mode None
        follows the descriptor's access flags, as FDChannel.recv_file."""
        file: IO[Any] = await self._receive(
            self._channel.recv_file, mode, buffering, encoding, errors, newline)
        return file

    async def recv_socket(self) -> socket.socket:
        """Receive one descriptor as a socket.socket of its own family and type."""
        return await self._receive(self._channel.recv_socket)

    async def _receive(self, attempt: Callable[..., _T], *args: Any) -> _T:
        """attempt(*args) until it does not block.  Each attempt is one
        non-blocking recvmsg: a task that waits has taken nothing."""
        turns = self._reading
        tried = not turns.busy
        if tried:
            try:
                return attempt(*args)
            except BlockingIOError:
                pass
        turn = await turns.join()
        try:
            while True:
                if not tried:
                    try:
                        return attempt(*args)
                    except BlockingIOError:
                        pass
                await turns.ready(self._channel.fileno(), self._sock)
                tried = False
        finally:
            turns.leave(turn)

    async def _send(self, attempt: Callable[..., None], args: tuple[Any, ...],
                    data: ReadableBuffer) -> None:
        turns = self._writing
        written: int | None = None  # bytes of data the last attempt sent: 0 waits for room
        if not turns.busy:
            try:
                return attempt(*args)
            except BlockingIOError as error:
                written = error.characters_written
        turn = await turns.join()
        try:
            while not written:
                if written == 0:
                    await turns.ready(self._channel.fileno(), self._sock)
                try:
                    return attempt(*args)
                except BlockingIOError as error:
                    written = error.characters_written
            await self._send_rest(memoryview(data).cast("B"), written)
        finally:
            turns.leave(turn)

    async def _send_rest(self, view: memoryview, written: int) -> None:
        """The rest of a stream message whose descriptors went with its
        first bytes.  Cut short (cancelled, or the socket failed), the
        stream is out of step: the channel closes."""
        try:
            while written < len(view):
                try:
                    written += self._sock.send(view[written:], _NOSIGNAL)
                except BlockingIOError:
                    await self._writing.ready(self._channel.fileno(), self._sock)
                    if self.closed:
                        raise ValueError("I/O operation on closed channel: it was "
                                         "closed while a send waited") from None
        except BaseException:
            self.close()
            raise


async def open_channel(path: StrPath) -> AsyncFDChannel:
    """A channel connected to the AF_UNIX SOCK_STREAM socket listening at
    path, as asyncio.open_unix_connection connects.  A listener whose
    backlog is full makes it wait (a blocking connect would), under the
    caller's cancellation."""
    address = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await _connect(sock, address)
        return AsyncFDChannel(sock)
    except BaseException:
        sock.close()
        raise


async def _connect(sock: socket.socket, address: str | bytes) -> None:
    """Connect a non-blocking AF_UNIX socket.  A full backlog is EAGAIN on
    Linux, with no event to wait for (the loop's sock_connect would take the
    socket for connected): try again after a pause that grows to
    _CONNECT_RETRY_MAX.  Where connecting is EINPROGRESS, wait until the
    socket is writable and ask SO_ERROR."""
    loop = asyncio.get_running_loop()
    pause = 0.001
    while True:
        try:
            sock.connect(address)
            return
        except BlockingIOError as error:
            if error.errno != errno.EINPROGRESS:
                await asyncio.sleep(pause)
                pause = min(2 * pause, _CONNECT_RETRY_MAX)
                continue
        writable = loop.create_future()
        loop.add_writer(sock.fileno(), _wake, writable)
        try:
            await writable
        finally:
            loop.remove_writer(sock.fileno())
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, f"connect to {address!r}: {os.strerror(code)}")
        return


Handler = Callable[[AsyncFDChannel], Awaitable[object]]


class Server:
    """Accepts connections on a UNIX-domain socket and runs handler(channel)
    for each in a task of its own, as asyncio.start_unix_server does for
    streams; the channel closes when the handler returns."""

    def __init__(self, sock: socket.socket, handler: Handler, unlink: bool) -> None:
        self._sock: socket.socket | None = sock
        self._handler = handler
        self._inode = _socket_inode(sock.getsockname()) if unlink else None
        self._turns = _Turns(writing=False)
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock))
        # Its failure is reported when it happens; nobody need fetch it.
        self._accepting.add_done_callback(
            lambda task: task.cancelled() or task.exception())

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._sock is None else (self._sock,)

    def is_serving(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        """Stop accepting, close the listening socket and, as start_server
        was told, remove its path.  Connections being handled go on: see
        wait_closed()."""
        self._accepting.cancel()
        self._shut()

    def _shut(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        path = sock.getsockname()
        self._turns.unwatch()
        discard(sock, own=True)  # connections never accepted may hold descriptors
        if self._inode is not None and _socket_inode(path) == self._inode:
            os.unlink(path)

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every handler has returned."""
        await asyncio.wait([self._accepting])
        while self._handlers:
            await asyncio.wait(set(self._handlers))

    async def serve_forever(self) -> None:
        """Serve until cancelled, then close.  RuntimeError on a closed server."""
        if self._sock is None:
            raise RuntimeError("the server is closed: it cannot serve again")
        try:
            await asyncio.shield(self._accepting)
        finally:
            self.close()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    async def _accept(self, sock: socket.socket) -> None:
        try:
            await self._accept_forever(sock)
        except Exception as error:  # reported here; serve_forever() raises it too
            asyncio.get_running_loop().call_exception_handler({
                "message": "fdpass.aio server: accept failed; the server closes",
                "exception": error, "socket": sock})
            raise
        finally:  # closed, failed, or cancelled with its loop: the socket goes too
            self._shut()

    async def _accept_forever(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                await self._turns.ready(sock.fileno(), sock)
                continue
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno not in _RESOURCE_ERRORS:
                    raise  # the server closes, and serve_forever() raises it
                loop.call_exception_handler({  # EMFILE and the like: pause, go on
                    "message": f"fdpass.aio server: accept failed; retrying in "
                               f"{ACCEPT_RETRY_DELAY} s",
                    "exception": error, "socket": sock})
                await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            try:
                channel = AsyncFDChannel(conn)
            except BaseException:
                discard(conn, own=True)
                raise
            task = loop.create_task(self._serve(channel))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _serve(self, channel: AsyncFDChannel) -> None:
        try:
            await self._handler(channel)
        except Exception as error:
            asyncio.get_running_loop().call_exception_handler({
                "message": "fdpass.aio server: the handler failed",
                "exception": error, "channel": channel})
        finally:
            channel.close()


def _socket_inode(path: str | bytes) -> int | None:
    """The inode of the socket file at path; None for an abstract name
    (Linux), a missing file, or one that is no socket."""
    if not path or path[0] in ("\0", 0):
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else None


async def start_server(handler: Handler, path: StrPath | None = None, *,
                       sock: socket.socket | None = None, backlog: int = 100,
                       cleanup_socket: bool = True) -> Server:
    """Serve each connection with handler(channel), as
    asyncio.start_unix_server: listening on path (a stale socket file
    there is removed first; with cleanup_socket, path is removed at close
    too, as asyncio does from 3.13), or on sock, a listening AF_UNIX socket
    the server takes over (one handed on by a predecessor, say: its path
    is left alone)."""
    if path is None and sock is not None:
        if not isinstance(sock, socket.socket):
            raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
        if sock.family != socket.AF_UNIX or not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"sock must be a listening AF_UNIX socket, not {sock!r}")
        sock.setblocking(False)
        return Server(sock, handler, unlink=False)
    if path is None or sock is not None:
        raise ValueError("start_server needs a path or a listening sock, one of the two")
    address = os.fspath(path)
    if _socket_inode(address) is not None:
        os.unlink(address)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.setblocking(False)
        listener.bind(address)
        listener.listen(backlog)
        return Server(listener, handler, unlink=cleanup_socket)
    except BaseException:
        listener.close()
        raise


# -- Zero-downtime handoff: the asyncio forms of fdpass.handoff --------------
# The protocol's steps are fdpass.handoff's; only the waiting differs: the
# engine's non-blocking calls, and the loop's callbacks when they would block.

import errno  # noqa: E402  (kept with the code that needs them)
from collections.abc import Mapping  # noqa: E402

from fdpass import handoff as _handoff  # noqa: E402

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath


async def _within(timeout: float | None, work: Awaitable[_T]) -> _T:
    """await work, raising TimeoutError (on every Python) after timeout s."""
    if timeout is None:
        return await work
    try:
        return await asyncio.wait_for(work, timeout)
    except asyncio.TimeoutError:  # not yet TimeoutError itself before 3.11
        raise TimeoutError(errno.ETIMEDOUT, "timed out") from None


class _Watch:
    """The loop's reader and writer callbacks for one socket."""

    __slots__ = ("sock", "reading", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reading = _Turns(writing=False)
        self.writing = _Turns(writing=True)

    def unwatch(self) -> None:
        """Done before the socket closes, as _Turns requires."""
        self.reading.unwatch()
        self.writing.unwatch()


async def _run_handoff(conversation: _handoff._Conversation, channel: FDChannel,
                       watch: _Watch) -> Any:
    """fdpass.handoff._run_blocking's loop on a non-blocking socket."""
    sock = watch.sock
    while conversation.step is not None:
        step = conversation.step
        if isinstance(step, _handoff._Send):
            try:
                await _send_whole(channel, watch, step)
            except (BrokenPipeError, ConnectionResetError) as error:
                conversation.throw(error)
                continue
            conversation.advance(None)
            continue
        while True:
            try:
                received = channel.recv_message(step.size, MAX_FDS)
            except BlockingIOError:
                await watch.reading.ready(sock.fileno(), sock)
                continue
            except EOFError:
                received = (b"", [])
            break
        conversation.advance(received)
    return conversation.result


async def _send_whole(channel: FDChannel, watch: _Watch, step: _handoff._Send) -> None:
    sock = watch.sock
    view = memoryview(step.data)
    sent = 0
    while step.fds and not sent:
        try:
            channel.send_fds(step.fds, view)
            return
        except BlockingIOError as error:
            sent = error.characters_written  # the descriptors went with the first byte
            if not sent:
                await watch.writing.ready(sock.fileno(), sock)
    while sent < len(view):
        try:
            sent += sock.send(view[sent:], _NOSIGNAL)
        except BlockingIOError:
            await watch.writing.ready(sock.fileno(), sock)


class _AsyncCloses:
    """async with closes."""

    def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: _A) -> _A:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


_A = TypeVar("_A", bound=_AsyncCloses)


class AsyncOffer(_handoff._OfferState, _AsyncCloses):
    """fdpass.handoff.Offer for asyncio: the same offer, with wait()
    awaited, so that the loop keeps serving on the offered sockets."""

    def __init__(self, path: StrOrBytesPath, sockets: Mapping[str, _FileDescriptorLike], *,
                 uid: int | None = None) -> None:
        super().__init__(path, sockets, uid, 0.0)
        self._accepting = _Watch(self.listener())
        self._serving: _Watch | None = None

    async def wait(self, timeout: float | None = None) -> Credentials:
        """As Offer.wait: the successor's Credentials once it is ready();
        TimeoutError after timeout seconds, and wait() may be called again.
        Cancelling it loses nothing either."""
        return await _within(timeout, self._wait())

    async def _wait(self) -> Credentials:
        while True:
            listener = self.listener()
            peer = self.peer()
            if peer is None:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    await self._accepting.reading.ready(listener.fileno(), listener)
                    continue
                conn.setblocking(False)
                self.admit(conn)
                continue
            conn, channel, conversation, _ = peer
            if self._serving is None or self._serving.sock is not conn:
                self._serving = _Watch(conn)
            try:
                await _run_handoff(conversation, channel, self._serving)
            except BaseException as error:
                if isinstance(error, Exception) and self.step_failed(error):
                    continue
                if isinstance(error, asyncio.CancelledError):
                    self.step_failed(TimeoutError())  # a send cut short: gone
                raise
            if self.peer() is not peer:
                continue  # closed meanwhile
            return self.finish()

    def drop_peer(self) -> None:
        if self._serving is not None:
            self._serving.unwatch()
            self._serving = None
        super().drop_peer()

    def close(self) -> None:
        """As Offer.close."""
        self._accepting.unwatch()
        super().close()


class AsyncTakeover(_handoff._TakeoverState, _AsyncCloses):
    """fdpass.handoff.Takeover for asyncio; made by fdpass.aio.take()."""

    async def ready(self) -> None:
        """As Takeover.ready, awaited."""
        conn, channel, conversation = self.conversation()
        watch = _Watch(conn)
        try:
            await _within(self.timeout, _run_handoff(conversation, channel, watch))
        finally:
            watch.unwatch()
            conversation.close()
            self.close()


async def take(path: StrOrBytesPath, timeout: float | None = None) -> AsyncTakeover:
    """As fdpass.handoff.take, awaited: connect to the offer at path and
    receive every named socket, within timeout seconds."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.setblocking(False)
        channel = FDChannel(conn, closefd=False)
        watch = _Watch(conn)
        conversation = _handoff._Conversation(_handoff._take_steps())

        async def connect_and_receive() -> list[tuple[str, int]]:
            await asyncio.get_running_loop().sock_connect(conn, os.fspath(path))
            received: list[tuple[str, int]] = await _run_handoff(conversation, channel, watch)
            return received

        try:
            received = await _within(timeout, connect_and_receive())
        finally:
            watch.unwatch()
            conversation.close()  # its descriptors closed unless it returned them
        return AsyncTakeover(conn, channel, channel.peer_credentials(),
                             _handoff._sockets_from(received), timeout)
    except BaseException:
        discard(conn, own=True)
        raise
