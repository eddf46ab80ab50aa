"""One discard path: every descriptor the package drops goes through
fdpass._engine's discard (the closer), never a close() of its own on a
thread or event loop that a peer could stall.  This test reads the
package's sources and fails on any other way to close a descriptor; the
few closes of descriptors the package made itself, which nobody else can
have made slow, are listed here with the reason."""

from __future__ import annotations

import re
from pathlib import Path

import fdpass

PACKAGE = Path(fdpass.__file__).resolve().parent

#: Modules that play the user's part (benchmarks, soak, demos): they close
#: what they receive as an application would.
USERS = {"_bench.py", "_soak.py", "_demo.py", "_demo_handoff.py", "_benchfloor.pyx",
         "_restart_bench.py", "_restart_server.py"}

#: (file, the line's code): closes of descriptors that the package itself
#: opened and never received, whose close cannot block.
ALLOWED = {
    ("_features.py", "os.close(ours.peer_pidfd())"),   # a pidfd it asked for
    ("systemd.py", "os.close(fd)"),                   # a pidfd of pidfd_open's, in _pidfd_inode
    ("handoff.py", "os.close(directory)"),            # the offer's private directory
    # The Windows backend's own discard path (_close_fd_or_socket, and
    # recv_file's descriptor before open() took it): Windows closes what
    # it refuses at once, sockets abortively.
    ("_windows.py", "os.close(fd)"),
    ("_channel.pyx", "close(fd)"),                    # the channel's own socket, closefd=True
    ("_channel.pyx", "rc = close(fd)"),               # the same, in _release
}

CLOSES = re.compile(r"\bos\.close\(|\bos\.closerange\(|(?<![.\w])(?<!def )close\(\w")


def closes_in(path: Path) -> list[str]:
    found = []
    for line in path.read_text().splitlines():
        code = line.split("#", 1)[0].strip()
        if code.startswith(('"', "'")) or not CLOSES.search(code):
            continue
        found.append(code)
    return found


def test_the_package_closes_nothing_but_through_the_discard_path() -> None:
    sources = [p for p in sorted(PACKAGE.glob("*.py")) + sorted(PACKAGE.glob("*.pyx"))
               if p.name not in USERS]
    assert len(sources) >= 10, sources
    stray = [(p.name, code) for p in sources for code in closes_in(p)
             if (p.name, code) not in ALLOWED]
    assert not stray, f"closes outside fdpass._engine.discard: {stray}"


def test_the_check_sees_a_stray_close(tmp_path: Path) -> None:
    module = tmp_path / "room.py"
    module.write_text("import os\n\ndef refuse(fds):\n    for fd in fds:\n        os.close(fd)\n")
    assert closes_in(module) == ["os.close(fd)"]
