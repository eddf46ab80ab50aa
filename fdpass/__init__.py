"""Pass open file descriptors between processes over UNIX-domain sockets
(SCM_RIGHTS), wire-compatible with Perl's IO::FDPass."""

from __future__ import annotations

from fdpass._channel import MAX_FDS, FDChannel
from fdpass._engine import CLOEXEC_METHOD
from fdpass._errors import ProtocolError
from fdpass._functional import get_errno, recv, send

__version__ = "0.1.0"

#: Which engine is loaded: the compiled Cython modules are the only one.
ENGINE = "compiled"

__all__ = [
    "CLOEXEC_METHOD",
    "ENGINE",
    "MAX_FDS",
    "FDChannel",
    "ProtocolError",
    "__version__",
    "get_errno",
    "recv",
    "send",
]
