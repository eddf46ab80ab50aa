"""The test command: `python3 tests/run.py [pytest arguments]`, from a clone.

It runs the whole suite (the interoperability tests against their real
peers included) under the Python that runs it, in a venv of its own
(.venv-PYTHONVERSION), then mypy --strict and stubtest, and fails if any
fails or if no test ran.  What the tests need from the system is the list
below, the one list of it (.ci/run calls this): as root on Debian or
Ubuntu it installs what is missing; otherwise it stops at once, printing
the one command that installs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

REPOSITORY = Path(__file__).resolve().parent.parent
# Where Debian's python3-systemd is installed: the systemd tests compare
# fdpass.systemd with libsystemd through it.
SYSTEM_PYTHON = "/usr/bin/python3"


def found(program: str) -> bool:
    return shutil.which(program, path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])) is not None


def runs(*command: str) -> bool:
    if not found(command[0]):
        return False
    return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=60).returncode == 0


class Need(NamedTuple):
    """A Debian package the tests need, and how to tell it is there."""

    package: str
    why: str
    present: Callable[[], bool]


NEEDS = [
    # Building fdpass, and the venv (Debian splits both out of python3).
    Need("gcc", "a C compiler, to build the engine", lambda: found("cc") or found("gcc")),
    Need("python3-dev", "the Python headers, to build the engine", lambda: Path(
        sysconfig.get_paths()["include"], "Python.h").exists()),
    Need("python3-venv", "venv with pip", lambda: runs(sys.executable, "-c", "import ensurepip")),
    # The peers the interoperability tests talk to.
    Need("libio-fdpass-perl", "Perl's IO::FDPass", lambda: runs("perl", "-MIO::FDPass", "-e", "1")),
    Need("ruby", "Ruby's UNIXSocket#send_io", lambda: found("ruby")),
    Need("golang-go", "Go, to build the Go peer", lambda: found("go")),
    Need("haproxy", "HAProxy, whose listeners the tests take", lambda: found("haproxy")),
    Need("systemd", "systemd-socket-activate", lambda: found("systemd-socket-activate")),
    Need("python3-systemd", "libsystemd's Python binding, for the system interpreter",
         lambda: runs(SYSTEM_PYTHON, "-c", "import systemd.daemon")),
    # The restart bench's foreign rows (tests/test_restart_bench.py).
    Need("nginx", "nginx, whose binary upgrade the restart bench measures",
         lambda: found("nginx")),
    Need("golang-github-cloudflare-tableflip-dev",
         "Go's tableflip, built offline by the restart bench",
         lambda: Path("/usr/share/gocode/src/github.com/cloudflare/tableflip").is_dir()),
]


def missing() -> list[Need]:
    return [need for need in NEEDS if not need.present()]


def install(needs: Sequence[Need]) -> str | None:
    """Install what is missing, or say what to run: None once installed."""
    packages = [need.package for need in needs]
    command = f"apt-get install -y {' '.join(packages)}"
    if os.geteuid() != 0 or not found("apt-get"):
        listed = "\n".join(f"  {need.package}: {need.why}" for need in needs)
        how = (f"sudo {command}" if found("apt-get")
               else "(not Debian or Ubuntu: install their equivalents)")
        return f"the tests need what this machine lacks:\n{listed}\ninstall it with:\n\n    {how}\n"
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        subprocess.run(step, check=True, env=environment)
    still = missing()
    return None if not still else "still missing after installing: " + ", ".join(
        need.package for need in still)


def venv() -> Path:
    """A venv of this Python's own, with fdpass built in place and the
    test and typecheck extras."""
    folder = REPOSITORY / f".venv-{sys.version_info[0]}.{sys.version_info[1]}"
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    # Installing again recompiles: only when what the build reads changed.
    stamp, built = folder / "fdpass-build", "\n".join(
        f"{path.relative_to(REPOSITORY)} {path.stat().st_mtime_ns}" for pattern in (
            "setup.py", "pyproject.toml", "fdpass/*.pyx", "fdpass/*.pxd", "include/*.h")
        for path in sorted(REPOSITORY.glob(pattern)))
    if not stamp.exists() or stamp.read_text() != built:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", ".[test,typecheck]"],
                       check=True, cwd=REPOSITORY)
        stamp.write_text(built)
    return python


class Outcome(NamedTuple):
    tests: int
    skipped: int
    failed: int


def outcome(junit: Path) -> Outcome:
    """What pytest's JUnit report counts, over all its suites."""
    suites = ElementTree.parse(junit).getroot().iter("testsuite")
    counts = [(int(s.get("tests", 0)), int(s.get("skipped", 0)),
               int(s.get("failures", 0)) + int(s.get("errors", 0))) for s in suites]
    return Outcome(*(sum(column) for column in zip(*counts))) if counts else Outcome(0, 0, 0)


def verdict(returncode: int, counted: Outcome) -> str | None:
    """None when the suite passed having run tests; else why it did not."""
    if counted.tests - counted.skipped <= 0:
        return f"no test ran ({counted.tests} collected, {counted.skipped} skipped)"
    if returncode != 0 or counted.failed:
        return f"pytest failed: {counted.failed} failures or errors, status {returncode}"
    return None


def main(arguments: Sequence[str]) -> int:
    needs = missing()
    if needs:
        why = install(needs)
        if why:
            print(why, file=sys.stderr)
            return 2
    python = venv()
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch, "junit.xml")
        done = subprocess.run([str(python), "-m", "pytest", f"--junitxml={junit}", *arguments],
                              cwd=REPOSITORY)
        why = verdict(done.returncode, outcome(junit) if junit.exists() else Outcome(0, 0, 0))
    if why:
        print(f"tests/run.py: {why}", file=sys.stderr)
        return 1
    # stubtest must import the build, not the source tree in the cwd.
    checks = [[str(python), "-m", "mypy", "--strict", "fdpass", "tests"]]
    stubtest = sys.version_info >= (3, 10)
    if stubtest:
        # The allowlist names the Windows backend, which imports only there.
        checks.append([str(python), "-m", "mypy.stubtest", "fdpass", "--allowlist",
                       str(REPOSITORY / ".ci" / "stubtest-allowlist")])
    for check in checks:
        if subprocess.run(check, cwd=REPOSITORY, env=dict(os.environ, PYTHONSAFEPATH="1")
                          ).returncode != 0:
            print(f"tests/run.py: {' '.join(check[1:])} failed", file=sys.stderr)
            return 1
    print(f"tests/run.py: the suite passed under Python {sys.version.split()[0]}, and "
          + ("mypy --strict and stubtest are clean" if stubtest else
             "mypy --strict is clean; stubtest was not run: under 3.9 it reports where "
             "the typing module differs from typeshed's stubs, in every module that "
             "imports from it, not fdpass's own stubs (tox -e typecheck runs it)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
