"""Building from source on a machine that cannot: setup.py names what to
install, where setuptools alone ends on "command 'gcc' failed" or
"Python.h: No such file or directory"."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import fdpass

#: The checkout's, or the unpacked sdist's, top folder (tests/ is in both).
SOURCE_ROOT = Path(__file__).resolve().parent.parent

# The advice, for each family of distributions.
ADVICE = ("apt-get install gcc python3-dev", "dnf install gcc python3-devel",
          "apk add gcc musl-dev python3-dev")

# setup.py as setuptools runs it, with the Python headers' folder that
# build_ext reads replaced by an empty one: a machine without python3-dev.
WITHOUT_HEADERS = """
import runpy, sys
from setuptools._distutils import sysconfig
empty = sys.argv.pop(1)
sysconfig.get_python_inc = lambda plat_specific=False, prefix=None: empty
runpy.run_path("setup.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What setup.py builds from, in a folder of its own: the .pyx and .pxd
    from the checkout, or from the installed package where the tests run
    beside an sdist without its fdpass/ (.ci/dist).  The first build there
    cythonizes; the C files it leaves serve the other tests."""
    pytest.importorskip("Cython", reason="the build needs Cython (the test extra has it)")
    pytest.importorskip("setuptools", reason="the build needs setuptools (the test extra has it)")
    if not (SOURCE_ROOT / "setup.py").exists() or not (SOURCE_ROOT / "include").is_dir():
        pytest.skip(f"no setup.py and include/ beside the tests in {SOURCE_ROOT}")
    tree = tmp_path_factory.mktemp("source")
    shutil.copy(SOURCE_ROOT / "setup.py", tree)
    shutil.copytree(SOURCE_ROOT / "include", tree / "include")
    package = SOURCE_ROOT / "fdpass"
    if not package.is_dir():
        package = Path(fdpass.__file__).resolve().parent
    (tree / "fdpass").mkdir()
    sources = [p for p in package.iterdir() if p.suffix in (".pyx", ".pxd")]
    assert sources, f"no .pyx or .pxd in {package}"
    for source in sources:
        shutil.copy2(source, tree / "fdpass")
    return tree


def build(tree: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """build_ext into the tree's own folders, with env over this one's;
    a value of "" takes the variable out."""
    child_env = {**os.environ, **env}
    for name in [name for name, value in env.items() if not value]:
        del child_env[name]
    return subprocess.run([sys.executable, *args, "build_ext", "--build-lib", "lib",
                           "--build-temp", "temp"],
                          capture_output=True, text=True, timeout=240, cwd=tree, env=child_env)


def assert_advice(tree: Path, result: subprocess.CompletedProcess[str], missing: str) -> None:
    """The one thing missing is named first, then the commands that install
    it; and nothing was compiled."""
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr
    first = message.splitlines()[0] if message else ""
    assert first.startswith(f"fdpass: building from source needs {missing}"), message
    assert " and " not in first, message
    for advice in ADVICE:
        assert advice in message, advice
    version = "%d.%d" % sys.version_info[:2]
    for package in (f"python{version}-dev", f"python{version}-devel"):
        assert re.search(rf"{re.escape(package)}\b", message), package
    assert not list(tree.glob("temp/**/*.o")), "it compiled something"


def test_a_compiler_that_is_not_there_gets_what_to_install(source_tree: Path) -> None:
    result = build(source_tree, "setup.py", CC=str(source_tree / "no-such-cc"))
    assert_advice(source_tree, result, f"a C compiler ('{source_tree / 'no-such-cc'}' is not installed)")


def test_no_compiler_on_the_path_gets_what_to_install(source_tree: Path, tmp_path: Path) -> None:
    """CC unset: setuptools takes the compiler Python was built with (gcc,
    x86_64-linux-gnu-gcc), looked up on a PATH without it."""
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    if os.path.isabs(compiler):
        pytest.skip(f"this Python's compiler is {compiler}, which no PATH hides")
    result = build(source_tree, "setup.py", CC="", PATH=str(tmp_path))
    assert_advice(source_tree, result, "a C compiler (")


def test_no_python_headers_gets_what_to_install(source_tree: Path, tmp_path: Path) -> None:
    """With a compiler that is there: the headers alone are missing."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler on this machine to leave the headers alone missing")
    result = build(source_tree, "-c", WITHOUT_HEADERS, str(tmp_path), CC=compiler)
    assert_advice(source_tree, result, "the Python headers (no Python.h in ")
    assert f"{tmp_path})." in result.stderr.splitlines()[0], result.stderr
