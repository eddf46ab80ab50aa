"""Build the Cython engine.  Metadata lives in pyproject.toml."""

import os
import sys

# On Windows the backend is pure Python (fdpass/_windows.py over _winapi,
# msvcrt and socket.share): no compiler, no Cython, no extension.
WINDOWS = sys.platform == "win32"
if not WINDOWS:
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
