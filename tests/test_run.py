"""tests/run.py, the test command: it stops at once, naming the one command
to run, when it may not install what the tests need; as root it installs
that with apt-get; and it fails when no test ran."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import run


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with none of the peers on it: an apt-get that notes its
    arguments and installs nothing, and no compiler, perl, ruby, go..."""
    folder = tmp_path / "bin"
    folder.mkdir()
    apt = folder / "apt-get"
    apt.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'apt.log'}\n")
    apt.chmod(apt.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(folder))
    return tmp_path


def no_venv() -> Path:
    raise AssertionError("the venv was made: the command should have stopped")


def test_without_root_it_stops_at_once_naming_the_command(
        bare_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(run, "venv", no_venv)
    assert run.main([]) == 2
    wanted = [need.package for need in run.missing()]
    assert {"gcc", "libio-fdpass-perl", "ruby", "golang-go"} <= set(wanted)
    err = capsys.readouterr().err
    assert f"\n    sudo apt-get install -y {' '.join(wanted)}\n" in err
    assert not (bare_path / "apt.log").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: it runs apt-get")
def test_as_root_it_installs_what_is_missing(
        bare_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(run, "venv", no_venv)
    wanted = [need.package for need in run.missing()]
    assert run.main([]) == 2  # this apt-get installs nothing: still missing, said so
    assert (bare_path / "apt.log").read_text().splitlines() == [
        "update -q", "install -y -q " + " ".join(wanted)]
    assert "still missing after installing: " + ", ".join(wanted) in capsys.readouterr().err


def test_every_need_is_a_debian_package_named_once() -> None:
    names = [need.package for need in run.NEEDS]
    assert len(names) == len(set(names))
    assert {"libio-fdpass-perl", "ruby", "golang-go", "haproxy", "systemd",
            "python3-systemd"} <= set(names)


def junit(tmp_path: Path, *suites: tuple[int, int, int, int]) -> Path:
    path = tmp_path / "junit.xml"
    path.write_text("<testsuites>" + "".join(
        f'<testsuite tests="{t}" skipped="{s}" failures="{f}" errors="{e}"/>'
        for t, s, f, e in suites) + "</testsuites>")
    return path


def test_it_fails_when_no_test_ran(tmp_path: Path) -> None:
    assert run.verdict(5, run.outcome(junit(tmp_path, (0, 0, 0, 0)))) \
        == "no test ran (0 collected, 0 skipped)"
    assert run.outcome(junit(tmp_path, (3, 2, 0, 0), (4, 4, 1, 1))) == run.Outcome(7, 6, 2)
    assert run.verdict(0, run.outcome(junit(tmp_path, (3, 3, 0, 0)))) \
        == "no test ran (3 collected, 3 skipped)"
    assert run.verdict(0, run.outcome(junit(tmp_path, (3, 2, 0, 0)))) is None
    assert run.verdict(1, run.outcome(junit(tmp_path, (3, 0, 1, 0)))) is not None
    assert run.verdict(0, run.Outcome(0, 0, 0)) is not None  # no report at all
