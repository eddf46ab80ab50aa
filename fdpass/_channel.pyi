import io
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, BinaryIO, Literal, Protocol, TypeVar, Union, overload

from _typeshed import (
    OpenBinaryMode,
    OpenBinaryModeReading,
    OpenBinaryModeUpdating,
    OpenBinaryModeWriting,
    OpenTextMode,
    ReadableBuffer,
)
from typing_extensions import disjoint_base

from fdpass._credentials import Credentials, Sender

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_FileDescriptorLike = Union[int, _HasFileno]
_Path = Union[str, bytes, os.PathLike[str], os.PathLike[bytes]]
_T = TypeVar("_T", bound=FDChannel)
_W = TypeVar("_W")

MAX_FDS: int
MAX_BATCH: int
REFUSAL_ENV: str

def refusal_forced_to_close() -> bool: ...

def naming_path(error: OSError, path: _Path) -> OSError: ...

def wrap_socketpair(make: Callable[[socket.socket], _W], type: int = ...) -> tuple[_W, _W]: ...

@disjoint_base
class FDChannel:
    def __init__(
        self,
        sock: _FileDescriptorLike,
        *,
        closefd: bool = True,
        refuse_fds: bool = False,
        passcred: bool = False,
    ) -> None: ...
    @classmethod
    def pair(cls: type[_T], type: int = ...) -> tuple[_T, _T]: ...
    @classmethod
    def connect(cls: type[_T], path: _Path) -> _T: ...
    @property
    def closed(self) -> bool: ...
    @property
    def type(self) -> socket.SocketKind: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def shutdown(self, how: int) -> None: ...
    def __enter__(self: _T) -> _T: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def gettimeout(self) -> float | None: ...
    def settimeout(self, value: float | None) -> None: ...
    def setblocking(self, flag: bool) -> None: ...
    def send_fd(self, f: _FileDescriptorLike) -> None: ...
    def send_fds(
        self, fs: Iterable[_FileDescriptorLike], data: ReadableBuffer = b"\0"
    ) -> None: ...
    def recv_fd(self) -> int: ...
    def recv_fds(self, maxfds: int = ...) -> list[int]: ...
    def recv_message(self, bufsize: int, maxfds: int = ...) -> tuple[bytes, list[int]]: ...
    def recv_many(
        self, max_messages: int, bufsize: int = 1, maxfds: int = ...
    ) -> list[tuple[bytes, list[int]]]: ...
    def send_many(
        self, messages: Iterable[tuple[ReadableBuffer, Sequence[_FileDescriptorLike]]]
    ) -> None: ...
    def recv_message_from(
        self, bufsize: int, maxfds: int = ...
    ) -> tuple[bytes, list[int], Sender]: ...
    # recv_file's return type follows the mode, as open()'s does in typeshed.
    @overload
    def recv_file(
        self,
        mode: OpenTextMode,
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> io.TextIOWrapper: ...
    @overload
    def recv_file(
        self,
        mode: OpenBinaryMode | None,
        buffering: Literal[0],
        encoding: None = None,
        errors: None = None,
        newline: None = None,
    ) -> io.FileIO: ...
    @overload
    def recv_file(
        self,
        mode: OpenBinaryModeUpdating,
        buffering: Literal[-1, 1] = -1,
        encoding: None = None,
        errors: None = None,
        newline: None = None,
    ) -> io.BufferedRandom: ...
    @overload
    def recv_file(
        self,
        mode: OpenBinaryModeWriting,
        buffering: Literal[-1, 1] = -1,
        encoding: None = None,
        errors: None = None,
        newline: None = None,
    ) -> io.BufferedWriter: ...
    @overload
    def recv_file(
        self,
        mode: OpenBinaryModeReading,
        buffering: Literal[-1, 1] = -1,
        encoding: None = None,
        errors: None = None,
        newline: None = None,
    ) -> io.BufferedReader: ...
    @overload
    def recv_file(
        self,
        mode: OpenBinaryMode | None = None,
        buffering: int = -1,
        encoding: None = None,
        errors: None = None,
        newline: None = None,
    ) -> BinaryIO: ...
    @overload
    def recv_file(
        self,
        mode: str | None = None,
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]: ...
    def recv_socket(self) -> socket.socket: ...
    def peer_credentials(self) -> Credentials: ...
    def peer_pidfd(self) -> int: ...
