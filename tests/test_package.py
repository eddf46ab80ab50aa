"""The package as a whole: the compiled engine, its facts, its commands."""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import inspect
import pickle
import pydoc
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import fdpass
import fdpass.aio
from fdpass import _channel, _engine, _functional
from support import run_python

#: The checkout's, or the unpacked sdist's, top folder (tests/ is in both).
SOURCE_ROOT = Path(__file__).resolve().parent.parent


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


def test_the_constructor_shows_in_help_and_signature() -> None:
    signature = "(sock, *, closefd=True, refuse_fds=False, passcred=False)"
    assert str(inspect.signature(fdpass.FDChannel)) == signature
    assert pydoc.render_doc(fdpass.FDChannel).count("FDChannel" + signature) == 1
    assert (fdpass.FDChannel.__doc__ or "").startswith("Sends and receives open descriptors")


def test_public_types_are_named_where_users_find_them() -> None:
    for public in (fdpass.ProtocolError, fdpass.Credentials, fdpass.Sender):
        assert public.__module__ == "fdpass"
        assert getattr(fdpass, public.__name__) is public
    assert repr(fdpass.ProtocolError) == "<class 'fdpass.ProtocolError'>"
    error = fdpass.ProtocolError(74, "bad")
    assert "".join(traceback.format_exception_only(type(error), error)) \
        == "fdpass.ProtocolError: [Errno 74] bad\n"
    assert pickle.loads(pickle.dumps(error)).args == error.args


# Public by accident, without docstrings, in fdpass/handoff.py (which issue
# 18 is changing): documented or made private there, then removed from here.
def test_every_public_member_has_a_docstring() -> None:
    """The API reference is made from them: a member without one is a bare
    name there (or, from Cython, the word "None")."""
    bare = []
    for module in (fdpass, fdpass.aio, fdpass.handoff, fdpass.systemd):
        for name in module.__all__:
            public = getattr(module, name)
            if not inspect.isclass(public):
                continue
            for member in dir(public):
                found = inspect.getattr_static(public, member)
                owner = next(c for c in public.__mro__ if member in vars(c))
                if member.startswith("_") or owner.__module__ == "builtins":
                    continue
                doc = (getattr(getattr(found, "__func__", found), "__doc__", None) or "").strip()
                if doc in ("", "None"):
                    bare.append(f"{module.__name__}.{name}.{member}")
    assert bare == []


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


def test_version_is_the_installed_distributions() -> None:
    """pyproject.toml reads the version from fdpass.__version__: the wheel's
    metadata says the same as the code it holds."""
    try:
        distribution = importlib.metadata.distribution("fdpass")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fdpass is not installed as a distribution (an in-place build)")
    if distribution.read_text("WHEEL") is None:
        pytest.skip("fdpass's metadata is a source tree's egg-info, not an installed wheel's")
    installed = Path(str(distribution.locate_file("fdpass/__init__.py"))).resolve()
    if installed != Path(str(fdpass.__file__)).resolve():
        pytest.skip(f"the imported fdpass ({fdpass.__file__}) is not the installed "
                    f"distribution's ({installed}): an in-place or editable build")
    assert distribution.version == fdpass.__version__


def test_changelog_has_a_section_for_this_version() -> None:
    changelog = (SOURCE_ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {re.escape(fdpass.__version__)}\b", changelog, re.M), \
        f"CHANGELOG.md has no section for {fdpass.__version__}"


WINDOWS_IMPORT = """
import sys
sys.platform = "win32"
try:
    import fdpass
except ImportError as error:
    print(repr(error))
    print(sorted(name for name in sys.modules if name.startswith("fdpass")))
else:
    sys.exit("fdpass imported on win32 without _winapi")
"""


def test_import_on_windows_takes_the_windows_backend() -> None:
    """On win32 fdpass loads fdpass._windows (which needs _winapi, so here it
    fails, and Python drops the half-imported modules), and nothing
    compiled, nor aio, handoff or systemd."""
    result = run_python("-c", WINDOWS_IMPORT)
    assert result.returncode == 0, result.stdout + result.stderr
    message, modules = result.stdout.splitlines()
    assert "_winapi" in message, message
    assert modules == "['fdpass._credentials', 'fdpass._errors']", modules


def test_posix_only_modules_refuse_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    from fdpass._platform import require_posix

    require_posix("fdpass.aio")  # not Windows: nothing to say
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(ImportError, match="fdpass.aio is POSIX only"):
        require_posix("fdpass.aio")


SETUP_ON_WINDOWS = """
import sys, types
sys.platform = "win32"
sys.modules["Cython"] = None  # any import of Cython fails
calls = []
setuptools = types.ModuleType("setuptools")
setuptools.setup = lambda **kwargs: calls.append(kwargs)
setuptools.Extension = lambda *args, **kwargs: None
command = types.ModuleType("setuptools.command")
build_ext = types.ModuleType("setuptools.command.build_ext")
build_ext.build_ext = type("build_ext", (), {})
bdist_wheel = types.ModuleType("setuptools.command.bdist_wheel")
bdist_wheel.bdist_wheel = type("bdist_wheel", (), {})
sys.modules.update({"setuptools": setuptools, "setuptools.command": command,
                    "setuptools.command.build_ext": build_ext,
                    "setuptools.command.bdist_wheel": bdist_wheel})
exec(compile(open("setup.py").read(), "setup.py", "exec"))
[kwargs] = calls
print(sorted(kwargs), sorted(kwargs["cmdclass"]))
"""


def test_setup_py_on_windows_needs_no_cython(tmp_path: Path) -> None:
    """setup.py, alone in an empty folder, as on Windows with Cython
    unimportable (setuptools stood in for): no extension, no Cython, and
    its own bdist_wheel (the pure wheel tagged for Windows)."""
    setup_py = SOURCE_ROOT / "setup.py"
    if not setup_py.exists():
        pytest.skip(f"no setup.py beside the tests in {SOURCE_ROOT}")
    shutil.copy(setup_py, tmp_path)
    result = subprocess.run([sys.executable, "-c", SETUP_ON_WINDOWS], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "['cmdclass'] ['bdist_wheel']", result.stdout
