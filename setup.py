"""Build the Cython engine.  Metadata lives in pyproject.toml."""

import sys

# Before cythonize: on Windows the build would fail later, in the compiler,
# on a missing <sys/socket.h>, which says nothing of why.
if sys.platform == "win32":
    sys.exit("fdpass cannot be built on Windows: it passes descriptors as SCM_RIGHTS "
             "messages over AF_UNIX sockets, and Windows's carry none (see "
             "\"Platforms\" in the README: socket.socket.share() and "
             "multiprocessing.reduction.DupHandle are Windows's own ways).")

from Cython.Build import cythonize
from setuptools import Extension, setup

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

MODULES = ["_engine", "_convert", "_channel", "_functional", "_benchfloor"]

extensions = [
    Extension(f"fdpass.{name}", [f"fdpass/{name}.pyx"], include_dirs=["include"])
    for name in MODULES
]

setup(ext_modules=cythonize(extensions, compiler_directives=COMPILER_DIRECTIVES))
