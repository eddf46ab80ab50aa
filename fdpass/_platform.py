"""Which parts of fdpass exist on this platform."""

from __future__ import annotations

import sys


def require_posix(module: str) -> None:
    """Refuse to import a POSIX-only module on Windows with a reason,
    rather than a bare "no module named fdpass._channel"."""
    if sys.platform == "win32":
        raise ImportError(
            f"{module} is POSIX only: it needs SCM_RIGHTS over AF_UNIX sockets, which "
            "Windows lacks. On Windows fdpass offers send/recv and FDChannel "
            "(see docs/windows.md).")
