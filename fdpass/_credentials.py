"""Who is on the other end of a UNIX-domain socket, as the kernel says."""

from typing import NamedTuple


class Credentials(NamedTuple):
    """pid, uid and gid of the peer as the kernel recorded them when the
    connection was made (SO_PEERCRED); pid is -1 where the platform does
    not say."""

    pid: int
    uid: int
    gid: int


class Sender(NamedTuple):
    """The process that sent one message, as the kernel attests it for that
    message (SCM_CREDENTIALS), and a pidfd for it (SCM_PIDFD; -1 where the
    kernel attached none), which the receiver owns and must close."""

    pid: int
    uid: int
    gid: int
    pidfd: int


# Shown where users meet them: fdpass.Credentials, fdpass.Sender.
Credentials.__module__ = Sender.__module__ = "fdpass"
