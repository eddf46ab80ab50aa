"""Pass open file descriptors between processes over UNIX-domain sockets
(SCM_RIGHTS), wire-compatible with Perl's IO::FDPass."""

from __future__ import annotations

import os
import sys

# First of all: on Windows the compiled engine cannot exist, and importing
# it would fail with a bare "no module named", which says nothing of why.
if sys.platform == "win32":
    raise ImportError(
        "fdpass does not work on Windows: it passes descriptors as SCM_RIGHTS "
        "messages over AF_UNIX sockets, and Windows's AF_UNIX sockets carry no "
        "descriptors or handles. To hand a socket to another process there, use "
        "socket.socket.share(pid) and socket.fromshare(data); for any other "
        "handle, multiprocessing.reduction.DupHandle (or duplicate()). See "
        "\"Platforms\" in fdpass's README.")

from fdpass._errors import ProtocolError  # noqa: E402  (after the platform check)


def _refuse_source_tree(package_dir: str) -> None:
    """Importing a clone's fdpass/ (the cwd comes first on sys.path) finds
    no compiled engine: say so, rather than that a module is missing."""
    if os.path.exists(os.path.join(package_dir, "_channel.pyx")):
        raise ImportError(
            f"fdpass's compiled engine is not built in {package_dir}: this is a "
            "source tree. Build it in place (pip install -e . or python setup.py "
            "build_ext --inplace), or run from another directory to import the "
            "installed fdpass.")


try:
    from fdpass._channel import MAX_FDS, FDChannel
    from fdpass._credentials import Credentials, Sender
    from fdpass._engine import CLOEXEC_METHOD, wait_for_discards
    from fdpass._functional import get_errno, recv, send
except ModuleNotFoundError:
    _refuse_source_tree(__path__[0])
    raise

# Pure Python over the engine, and light: every `import fdpass` has them.
from fdpass import handoff, systemd  # noqa: E402  (after the engine they need)

__version__ = "0.1.0"

#: Which engine is loaded: the compiled Cython modules are the only one.
ENGINE = "compiled"

__all__ = [
    "CLOEXEC_METHOD",
    "Credentials",
    "ENGINE",
    "MAX_FDS",
    "FDChannel",
    "ProtocolError",
    "Sender",
    "__version__",
    "get_errno",
    "recv",
    "send",
    "wait_for_discards",
]
