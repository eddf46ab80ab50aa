"""What this kernel offers for knowing the peer and refusing descriptors,
found by trying each over a socketpair (never by kernel version or build
headers, as the channel itself decides), for `python -m fdpass info`."""

from __future__ import annotations

import errno
import os
import socket
from typing import NamedTuple

from fdpass._channel import REFUSAL_ENV, FDChannel, refusal_forced_to_close
from fdpass._engine import discard_all
from fdpass._errors import ProtocolError


class IdentitySupport(NamedTuple):
    peer_pidfd: bool      # SO_PEERPIDFD: FDChannel.peer_pidfd()
    passcred: bool        # SO_PASSCRED: recv_message_from
    message_pidfd: bool   # SCM_PIDFD: a pidfd in recv_message_from's Sender
    kernel_refuses: bool  # SO_PASSRIGHTS: refuse_fds has the kernel refuse


def _unless_lacking(error: OSError) -> None:
    """Re-raise error unless it says the kernel lacks the option."""
    if error.errno != errno.ENOPROTOOPT:
        raise error


def identity_support() -> IdentitySupport:
    peer_pidfd = passcred = message_pidfd = kernel_refuses = False
    a, b = socket.socketpair()
    with FDChannel(a) as ours, FDChannel(b):
        try:
            os.close(ours.peer_pidfd())
            peer_pidfd = True
        except OSError as error:
            _unless_lacking(error)
    a, b = socket.socketpair()
    with FDChannel(a) as ours, b:
        try:
            with FDChannel(b, closefd=False, passcred=True) as theirs:
                passcred = True
                ours.send_fds([ours], b"?")  # a descriptor sure to be open
                _, fds, sender = theirs.recv_message_from(1)
                discard_all(fds + ([sender.pidfd] if sender.pidfd >= 0 else []))
                message_pidfd = sender.pidfd >= 0
        except OSError as error:
            _unless_lacking(error)
    a, b = socket.socketpair()
    with FDChannel(a) as ours, FDChannel(b, refuse_fds=True) as theirs:
        try:
            ours.send_fd(ours)
        except PermissionError:
            kernel_refuses = True
        else:
            try:
                theirs.recv_message(1)
            except ProtocolError:
                pass  # refused at receipt, as the channel does without SO_PASSRIGHTS
    return IdentitySupport(peer_pidfd, passcred, message_pidfd, kernel_refuses)


def describe() -> list[str]:
    """info's lines on peer identity and refusal."""
    support = identity_support()

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    forced = refusal_forced_to_close()
    refusal = ("the kernel refuses descriptors (SO_PASSRIGHTS): the sender gets "
               "PermissionError, nothing is queued" if support.kernel_refuses else
               "every arriving descriptor is closed at receipt, and that receive "
               "raises ProtocolError")
    return [
        f"SO_PEERPIDFD: {yes(support.peer_pidfd)} (FDChannel.peer_pidfd)",
        f"SO_PASSCRED: {yes(support.passcred)} (passcred=True, recv_message_from)",
        f"SCM_PIDFD: {yes(support.message_pidfd)} (Sender.pidfd)",
        "SO_PASSRIGHTS: " + (f"not used: {REFUSAL_ENV} is set" if forced
                             else yes(support.kernel_refuses)),
        f"refuse_fds: {refusal}",
    ]
