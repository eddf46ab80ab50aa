from typing_extensions import CapsuleType

PORTABLE: bool
CLOEXEC_METHOD: str
NOSIGPIPE_METHOD: str
FAMILY_METHOD: str
CREDENTIALS_METHOD: str
__pyx_capi__: dict[str, CapsuleType]

def discard(fd: int) -> None: ...
def wait_for_discards(timeout: float = -1.0) -> bool: ...
def walk_control(
    control: bytes, maxfds: int, from_sender: bool = False
) -> tuple[
    list[int],
    list[int],
    int,
    tuple[int, int, int, int] | tuple[None, None, None, int] | None,
]: ...
