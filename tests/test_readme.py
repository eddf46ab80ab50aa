"""The README's examples run as written: its Python blocks, its Perl blocks
(each printing what the Python block after it prints), and both columns of
the porting table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fdpass._engine import PORTABLE
from support import PACKAGE_ROOT

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")
FENCED = re.findall(r"```(python|perl)\n(.*?)```", TEXT, re.S)
PYTHON = [code for language, code in FENCED if language == "python"]
# Each Perl block with the Python block that follows it.
PERL_PAIRS = [(code, FENCED[i + 1][1]) for i, (language, code) in enumerate(FENCED)
              if language == "perl" and i + 1 < len(FENCED) and FENCED[i + 1][0] == "python"]
TABLE_HEADER = "| IO::FDPass (Perl) | fdpass (Python) |\n|---|---|\n"
TABLE = re.findall(r"^\| `(.*)` \| `(.*)` \|$",
                   TEXT.split(TABLE_HEADER, 1)[-1].split("\n\n", 1)[0], re.M)


def expected_output(code: str) -> list[str]:
    """A print( line's trailing comment is what it prints."""
    return re.findall(r"^\s*print\(.*#\s*(.*)$", code, re.M)


def test_readme_has_examples() -> None:
    assert len(PYTHON) >= 3
    assert len(PERL_PAIRS) >= 1
    assert len(TABLE) >= 6


def marks(code: str) -> list[pytest.MarkDecorator]:
    """A block that runs a foreign peer (the HAProxy recipe) is an interop
    test too; one that needs per-message credentials cannot run on the
    portable build, which has none (as BSD and macOS)."""
    found = [pytest.mark.interop] if "HAPROXY" in code else []
    if "passcred=True" in code:
        found.append(pytest.mark.skipif(PORTABLE, reason="the portable build has no SO_PASSCRED"))
    return found


@pytest.mark.parametrize("code", [
    pytest.param(code, id=f"block{i}", marks=marks(code)) for i, code in enumerate(PYTHON)])
def test_readme_example_runs(code: str, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PACKAGE_ROOT)  # a child an example starts imports this build
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.splitlines() == expected_output(code)


@pytest.mark.interop
@pytest.mark.parametrize(("perl", "python"), PERL_PAIRS,
                         ids=[f"perl{i}" for i in range(len(PERL_PAIRS))])
def test_readme_perl_prints_what_python_does(perl: str, python: str) -> None:
    done = subprocess.run(["perl", "-e", perl], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected_output(python)


PERL_SETUP = """use Socket;
socketpair my $socket, my $peer, AF_UNIX, SOCK_STREAM, 0 or die "socketpair: $!";
open my $fh, "<", $ARGV[0] or die "open: $!";
"""

PYTHON_SETUP = """import socket, sys
sock, peer = socket.socketpair()
fh = open(sys.argv[1], "rb")
"""


@pytest.mark.interop
def test_porting_table_columns_do_the_same(tmp_path: Path) -> None:
    """Each column, run top to bottom, passes the file and prints it."""
    path = tmp_path / "passed"
    path.write_text("the same in both languages\n")
    perl = PERL_SETUP + "\n".join(row[0] for row in TABLE)
    python = PYTHON_SETUP + "\n".join(row[1] for row in TABLE)
    for command in (["perl", "-e", perl], [sys.executable, "-c", python]):
        done = subprocess.run([*command, str(path)], capture_output=True, text=True,
                              timeout=60, cwd=PACKAGE_ROOT)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == "the same in both languages\n"
