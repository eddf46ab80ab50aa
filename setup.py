"""Build the Cython engine.  Metadata lives in pyproject.toml."""

import os
import sys

# On Windows the backend is pure Python (fdpass/_windows.py over _winapi,
# msvcrt and socket.share): no compiler, no Cython, no extension.
WINDOWS = sys.platform == "win32"
if not WINDOWS:
    import shutil  # not on win32, where it would import _winapi

    from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

# Every cythonize directive, in one place.
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "embedsignature": True,
    # "clinic" signatures keep the hot-path functions marked
    # @cython.binding(False) (plain C methods, CPython's cheapest calls)
    # introspectable.
    "embedsignature.format": "clinic",
    "autotestdict": False,
    "boundscheck": False,
    "wraparound": False,
    "auto_pickle": False,
}

# FDPASS_PORTABLE=1: every Linux-only facility replaced by the fallback
# that BSD and macOS take (include/fdpass_compat.h), so those paths run,
# and are tested, here.  The C macros of every extension, in one place.
PORTABLE = os.environ.get("FDPASS_PORTABLE", "")
if PORTABLE not in ("", "0", "1"):
    raise SystemExit(f"FDPASS_PORTABLE must be 1 (portable build), or 0 or unset, not {PORTABLE!r}")
DEFINE_MACROS = [("FDPASS_PORTABLE", "1")] if PORTABLE == "1" else []

MODULES = ["_engine", "_convert", "_channel", "_functional", "_benchfloor"]

extensions = [
    Extension(f"fdpass.{name}", [f"fdpass/{name}.pyx"], include_dirs=["include"],
              define_macros=DEFINE_MACROS)
    for name in MODULES
]


# What a machine that builds from source needs, by distribution: pip builds
# from the sdist wherever no fdpass wheel fits the machine.
TOOLCHAIN_HELP = """\
fdpass: building from source needs {missing}.
pip builds fdpass from source when none of its wheels fits this machine;
install a C compiler and the headers of Python {version}, then run pip again:
    Debian, Ubuntu:      apt-get install gcc python3-dev
    Fedora, RHEL, Rocky: dnf install gcc python3-devel
    Alpine:              apk add gcc musl-dev python3-dev
For a Python other than the system's python3, its own headers: python{version}-dev
on Debian and Ubuntu, python{version}-devel on Fedora and RHEL (pyenv's, conda's
and python.org's builds have them already)."""


def missing_toolchain(compiler: str, include_dirs: list) -> list:
    """What of the compiler and Python.h this machine lacks, in words."""
    missing = []
    if shutil.which(compiler) is None:
        missing.append(f"a C compiler ({compiler!r} is not installed)")
    if not any(os.path.isfile(os.path.join(d, "Python.h")) for d in include_dirs):
        missing.append("the Python headers (no Python.h in %s)" % ", ".join(include_dirs))
    return missing


class build_ext(_build_ext):
    """Recompiles every extension when the macros differ from the last
    build's into the same place: setuptools skips an extension whose .so
    is newer than its sources, whatever the macros, and cythonize's .c
    does not change with them, so switching FDPASS_PORTABLE would else
    leave the other build's .so in place (in fdpass/ with --inplace, in
    build/ for pip)."""

    def run(self) -> None:
        stamp = os.path.join("fdpass" if self.inplace else self.build_temp, ".fdpass-macros")
        wanted = repr(DEFINE_MACROS)
        try:
            with open(stamp) as f:
                last = f.read()
        except FileNotFoundError:
            last = None
        self.force = self.force or last != wanted
        super().run()
        os.makedirs(os.path.dirname(stamp), exist_ok=True)
        with open(stamp, "w") as f:
            f.write(wanted)

    def build_extensions(self) -> None:
        """Says what to install where setuptools would end on a bare
        "command 'gcc' failed" or "Python.h: No such file or directory"."""
        if self.compiler.compiler_type == "unix":
            missing = missing_toolchain(self.compiler.compiler_so[0], self.include_dirs)
            if missing:
                version = "%d.%d" % sys.version_info[:2]
                raise SystemExit(TOOLCHAIN_HELP.format(missing=" and ".join(missing),
                                                       version=version))
        super().build_extensions()


if WINDOWS:
    from setuptools.command.bdist_wheel import bdist_wheel

    class windows_wheel(bdist_wheel):
        """Pure Python, yet tagged py3-none-win_amd64 (or the build's own
        platform): a POSIX pip must never pick it and run without the engine."""

        def finalize_options(self) -> None:
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self) -> tuple[str, str, str]:
            return "py3", "none", super().get_tag()[2]

    setup(cmdclass={"bdist_wheel": windows_wheel})
else:
    setup(ext_modules=cythonize(extensions, compiler_directives=COMPILER_DIRECTIVES),
          cmdclass={"build_ext": build_ext})
