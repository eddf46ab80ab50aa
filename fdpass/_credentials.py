"""The peer process behind a connected UNIX-domain socket."""

from typing import NamedTuple


class Credentials(NamedTuple):
    """pid, uid and gid of the peer as the kernel recorded them when the
    connection was made (SO_PEERCRED); pid is -1 where the platform does
    not say."""

    pid: int
    uid: int
    gid: int
