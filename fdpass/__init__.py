"""Pass open file descriptors between processes over UNIX-domain sockets
(SCM_RIGHTS), wire-compatible with Perl's IO::FDPass."""

from __future__ import annotations

from fdpass._errors import ProtocolError

try:
    from fdpass._channel import MAX_FDS, FDChannel
    from fdpass._engine import CLOEXEC_METHOD
    from fdpass._functional import get_errno, recv, send
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith("fdpass._"):
        raise
    raise ImportError(
        f"fdpass's compiled engine is not built in {__path__[0]}: this is a source "
        "tree. Build it in place (pip install -e . or python setup.py build_ext "
        "--inplace), or run from another directory to import the installed fdpass."
    ) from exc

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
