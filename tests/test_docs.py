"""The README's and the docs' examples run as written: every Python block
of every page, every Perl block (each printing what the Python block after
it prints), both columns of the porting table, and every program of
docs/examples/, which the pages include from its file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fdpass
from fdpass._engine import PORTABLE
from support import DOC_PAGES, PACKAGE_ROOT, REPOSITORY, Block, doc_blocks

BLOCKS = [block for page in DOC_PAGES for block in doc_blocks(page)]
PYTHON = [block for block in BLOCKS if block.language == "python"]
# Each Perl block with the Python block that follows it on its page.
PERL_PAIRS = [(block, BLOCKS[i + 1]) for i, block in enumerate(BLOCKS)
              if block.language == "perl" and i + 1 < len(BLOCKS)
              and BLOCKS[i + 1].language == "python" and BLOCKS[i + 1].page == block.page]
# What is not a program: a command's output, a configuration file; Sphinx
# directives ("{toctree}" and the like) are not code either.  Shell blocks
# are the project's own commands (install, the suite itself, the release).
NOT_RUN = {"text", "ini", "sh"}
EXAMPLES = sorted((REPOSITORY / "docs" / "examples").glob("*.py"))
INCLUDED = re.compile(r"^```\{literalinclude\} examples/(\S+)$", re.M)
PORTING = (REPOSITORY / "docs" / "porting.md").read_text(encoding="utf-8")
TABLE_HEADER = "| IO::FDPass (Perl) | fdpass (Python) |\n|---|---|\n"
TABLE = re.findall(r"^\| `(.*)` \| `(.*)` \|$",
                   PORTING.split(TABLE_HEADER, 1)[-1].split("\n\n", 1)[0], re.M)


def block_id(block: Block) -> str:
    return f"{block.page.relative_to(REPOSITORY)}:{block.line}"


def expected_output(code: str) -> list[str]:
    """A print( line's trailing comment is what it prints."""
    return re.findall(r"^\s*print\(.*#\s*(.*)$", code, re.M)


def test_the_pages_have_examples() -> None:
    assert {block.page.name for block in PYTHON} >= {"README.md", "index.md", "porting.md"}
    assert len(PYTHON) >= 6
    assert len(PERL_PAIRS) >= 1
    assert len(TABLE) >= 6


def test_the_readme_fits_on_a_screen_or_two() -> None:
    assert len((REPOSITORY / "README.md").read_bytes()) <= 12288


def test_the_api_reference_names_every_public_name() -> None:
    api = (REPOSITORY / "docs" / "api.md").read_text(encoding="utf-8")
    assert [name for name in fdpass.__all__ if f":: fdpass.{name}\n" not in api] == []
    for module in ("fdpass.aio", "fdpass.handoff", "fdpass.systemd"):  # each by its __all__
        assert f".. automodule:: {module}\n   :members:\n" in api


@pytest.mark.parametrize("block", BLOCKS, ids=block_id)
def test_every_block_is_run_or_is_no_program(block: Block) -> None:
    """An untagged block, or one in another language, would go unrun."""
    assert block.language in {"python", "perl", *NOT_RUN} or block.language.startswith("{"), \
        f"{block_id(block)}: a block tagged {block.language!r}"


def test_every_example_is_included_in_a_page_never_copied() -> None:
    assert {path.name for path in EXAMPLES} >= {
        "parent_child.py", "prefork.py", "broker.py", "handoff_restart.py",
        "systemd_activation.py"}
    included = [name for page in DOC_PAGES for name in INCLUDED.findall(page.read_text())]
    assert sorted(included) == [path.name for path in EXAMPLES]  # each once
    for path in EXAMPLES:
        body = path.read_text(encoding="utf-8").split('"""\n', 2)[-1].strip()
        assert all(body not in block.code for block in BLOCKS), f"{path.name} is copied"


@pytest.mark.parametrize("example", [
    pytest.param(path, id=path.name, marks=[pytest.mark.skipif(
        path.name == "broker.py" and os.geteuid() != 0,
        reason="the broker example changes uid: it runs as root"), pytest.mark.skipif(
        path.name == "broker.py" and PORTABLE,
        reason="the broker example needs SO_PASSCRED, which the portable build lacks")])
    for path in EXAMPLES])
def test_example_runs(example: Path) -> None:
    """Run as a user runs it, in a process of its own; any warning fails it
    (the pre-fork ones fork: a thread of fdpass's would make Python warn)."""
    done = subprocess.run([sys.executable, "-W", "error", str(example)], capture_output=True,
                          text=True, timeout=120, cwd=PACKAGE_ROOT)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == expected_output(example.read_text(encoding="utf-8"))


def test_ci_runs_the_readme_commands() -> None:
    """Each of the README's commands is a line of .ci/run: CI runs what a
    user is told to run."""
    commands = [line for block in doc_blocks(REPOSITORY / "README.md")
                if block.language == "sh" for line in block.code.splitlines()]
    assert len(commands) == 3
    run = REPOSITORY / ".ci" / "run"
    if not run.exists():
        pytest.skip("an sdist has no .ci/")
    ci = run.read_text(encoding="utf-8").splitlines()
    assert [command for command in commands if command not in ci] == []


def marks(block: Block) -> list[pytest.MarkDecorator]:
    """A block that runs a foreign peer (the HAProxy recipe) is an interop
    test too; one that needs per-message credentials cannot run on the
    portable build, which has none (as BSD and macOS)."""
    found = [pytest.mark.interop] if "HAPROXY" in block.code else []
    if "passcred=True" in block.code:
        found.append(pytest.mark.skipif(PORTABLE, reason="the portable build has no SO_PASSCRED"))
    return found


@pytest.mark.parametrize("block", [
    pytest.param(block, id=block_id(block), marks=marks(block)) for block in PYTHON])
def test_python_block_runs(block: Block, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PACKAGE_ROOT)  # a child an example starts imports this build
    exec(block.compiled(), {"__name__": "docs"})
    assert capsys.readouterr().out.splitlines() == expected_output(block.code)


@pytest.mark.interop
@pytest.mark.parametrize(("perl", "python"), PERL_PAIRS,
                         ids=[block_id(perl) for perl, _ in PERL_PAIRS])
def test_perl_block_prints_what_python_does(perl: Block, python: Block) -> None:
    done = subprocess.run(["perl", "-e", perl.code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected_output(python.code)


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
