"""Exceptions of fdpass beyond the standard OSError family."""

from __future__ import annotations


class ProtocolError(OSError):
    """A message that breaks the descriptor-passing protocol (errno EBADMSG):
    no descriptor where one was required, more than were asked for, or
    truncated control data.  Every descriptor it carried has been closed."""


# Shown where users meet it, in tracebacks and reprs: fdpass.ProtocolError.
ProtocolError.__module__ = "fdpass"
