import socket

from typing_extensions import CapsuleType

PORTABLE: bool
CLOEXEC_METHOD: str
NOSIGPIPE_METHOD: str
FAMILY_METHOD: str
CREDENTIALS_METHOD: str
BATCH_METHOD: str
__pyx_capi__: dict[str, CapsuleType]

CLOSERS: int
DEFUSES_QUEUES: bool
FORK_GRACE: float

def discard(f: int | socket.socket, *, own: bool = False) -> None: ...
def discard_all(fds: list[int]) -> None: ...
def wait_for_discards(timeout: float | None = None) -> bool: ...
def closer_state() -> tuple[int, int, int]: ...
def walk_control(
    control: bytes, maxfds: int, from_sender: bool = False
) -> tuple[
    list[int],
    list[int],
    int,
    tuple[int, int, int, int] | tuple[None, None, None, int] | None,
]: ...
