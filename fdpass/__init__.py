"""Pass open file descriptors between processes over UNIX-domain sockets
(SCM_RIGHTS), wire-compatible with Perl's IO::FDPass."""

from __future__ import annotations

import os
import sys

from fdpass._errors import ProtocolError


def _refuse_source_tree(package_dir: str) -> None:
    """Importing a clone's fdpass/ (the cwd comes first on sys.path) finds
    no compiled engine: say so, rather than that a module is missing."""
    if os.path.exists(os.path.join(package_dir, "_channel.pyx")):
        raise ImportError(
            f"fdpass's compiled engine is not built in {package_dir}: this is a "
            "source tree. Build it in place (pip install -e . or python setup.py "
            "build_ext --inplace), or run from another directory to import the "
            "installed fdpass.")


#: Which backend is loaded: "compiled" (the Cython engine) or "windows".
ENGINE: str
if sys.platform == "win32":
    # Typed Python over _winapi, msvcrt and socket.share: no compiler, no
    # engine; aio, handoff and systemd are POSIX only and not imported.
    from fdpass._credentials import Credentials, Sender
    from fdpass._windows import (
        CLOEXEC_METHOD, MAX_FDS, FDChannel, get_errno, recv, send, wait_for_discards,
    )

    ENGINE = "windows"
else:
    try:
        from fdpass._channel import MAX_FDS, FDChannel
        from fdpass._credentials import Credentials, Sender
        from fdpass._engine import CLOEXEC_METHOD, wait_for_discards
        from fdpass._functional import get_errno, recv, send
    except ModuleNotFoundError:
        _refuse_source_tree(__path__[0])
        raise

    # Pure Python over the engine, and light: every `import fdpass` has them.
    from fdpass import handoff, systemd

    ENGINE = "compiled"

__version__ = "0.1.0"

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
