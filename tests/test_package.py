"""The package as a whole: the compiled engine, its facts, its commands."""

from __future__ import annotations

import importlib.machinery
import re
import subprocess

import fdpass
from fdpass import _channel, _engine, _functional
from support import run_python


def test_compiled_engine_is_loaded() -> None:
    assert fdpass.ENGINE == "compiled"
    for module in (_engine, _channel, _functional):
        assert module.__file__ is not None
        assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), module


def test_public_names() -> None:
    assert fdpass.FDChannel is _channel.FDChannel
    assert issubclass(fdpass.ProtocolError, OSError)
    assert fdpass.MAX_FDS == 253
    assert fdpass.CLOEXEC_METHOD == _engine.CLOEXEC_METHOD  # which: see test_portable.py
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", fdpass.__version__)
    for name in fdpass.__all__:
        assert hasattr(fdpass, name), name


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "fdpass", *args)


def test_info_command() -> None:
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert f"fdpass {fdpass.__version__}" in result.stdout
    assert "engine: compiled" in result.stdout
    assert "MAX_FDS: 253" in result.stdout
    lines = result.stdout.splitlines()
    assert ("build: portable (FDPASS_PORTABLE=1)" if _engine.PORTABLE else "build: native") in lines
    for line in (f"paths: close-on-exec: {_engine.CLOEXEC_METHOD}",
                 f"paths: no SIGPIPE: {_engine.NOSIGPIPE_METHOD}",
                 f"paths: address family: {_engine.FAMILY_METHOD}",
                 f"paths: peer credentials: {_engine.CREDENTIALS_METHOD}"):
        assert line in lines


def test_demo_command_passes_three_descriptors_to_a_child() -> None:
    result = run_cli("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "child: got fd" in out and "a regular file" in out
    assert "ok: the file now holds both lines" in out
    assert "ok: read from the pipe's other end: 'hello through the pipe from pid" in out
    assert "ok: received on the other end: 'hello over the socket from pid" in out
    assert "child exited with status 0" in out
    assert out.rstrip().endswith("all three descriptors crossed and worked")


def test_cli_without_command_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage:" in result.stderr
