"""Sphinx configuration: Markdown pages through MyST, the API reference by
autodoc from the installed fdpass (its docstrings and signatures)."""

from __future__ import annotations

import ast
import inspect
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path

from sphinx.application import Sphinx

import fdpass

project = "fdpass"
author = "the fdpass authors"
copyright = "the fdpass authors; MIT licence"
release = fdpass.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Links to a page's own sections ("api.md#timeouts") resolve to its headings.
myst_heading_anchors = 3

# Debian's python3-doc has the Python docs' inventory: with it the build
# needs no network; without it, it is fetched from docs.python.org.
PYTHON_INVENTORY = "/usr/share/doc/python3/html/objects.inv"
intersphinx_mapping = {"python": ("https://docs.python.org/3", (
    PYTHON_INVENTORY if os.path.exists(PYTHON_INVENTORY) else None))}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "alabaster"
# Wide enough for the examples' lines (up to 99 characters) without scrolling.
html_theme_options = {"page_width": "1340px", "sidebar_width": "240px"}
html_title = f"fdpass {release}"

# -- signatures ---------------------------------------------------------------
# The compiled engine's signatures carry no types: its stubs have them.  And
# typeshed's aliases, which the annotations use, name nothing a reader can
# look up: each is written out as what it stands for.

STUBS = Path(fdpass.__file__).resolve().parent
ALIASES = {
    "_FileDescriptorLike": "int | HasFileno",
    "StrPath": "str | os.PathLike[str]",
    "StrOrBytesPath": "str | bytes | os.PathLike[str] | os.PathLike[bytes]",
    "_Path": "str | bytes | os.PathLike[str] | os.PathLike[bytes]",
    "Handler": "Callable[[AsyncFDChannel], Awaitable[object]]",
    "_T": "FDChannel",
    "fdpass.handoff._D": "int | socket.socket",  # Item's descriptors, a TypeVar
}
# Names that are no class to link to: "any object with fileno()", "any
# bytes-like object" (typeshed's protocols), and an enum the Python docs
# describe without an entry of its own.
nitpick_ignore = [("py:class", "HasFileno"), ("py:class", "ReadableBuffer"),
                  ("py:class", "socket.SocketKind")]


def stub_signatures() -> dict[str, ast.FunctionDef]:
    """The engine's stubbed functions by "Class.method" or "function"; of
    an overloaded one, its last and widest form."""
    found: dict[str, ast.FunctionDef] = {}
    for stub in ("_channel.pyi", "_functional.pyi", "_engine.pyi"):
        tree = ast.parse((STUBS / stub).read_text(encoding="utf-8"))
        scopes = [("", tree.body)] + [(node.name + ".", node.body) for node in tree.body
                                      if isinstance(node, ast.ClassDef)]
        for prefix, body in scopes:
            for node in body:
                if isinstance(node, ast.FunctionDef):
                    if prefix:
                        node.args.args = node.args.args[1:]  # self, cls
                    found[prefix + node.name] = node
    return found


SIGNATURES = stub_signatures()


def written_out(text: str) -> str:
    for alias, meaning in ALIASES.items():
        text = re.sub(rf"\b{alias}\b", meaning, text)
    return text


def stub_signature(node: ast.FunctionDef, obj: object) -> tuple[str, str]:
    """The stub's parameters and return type; where the stub says only
    "...", the default the compiled function has."""
    defaults: Mapping[str, inspect.Parameter] = {}
    try:
        defaults = inspect.signature(obj).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    arguments = node.args
    positional = arguments.posonlyargs + arguments.args
    pairs = [*zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults),
             *zip(arguments.kwonlyargs, arguments.kw_defaults)]
    for parameter, default in pairs:
        if isinstance(default, ast.Constant) and default.value is Ellipsis:
            found = defaults.get(parameter.arg)
            if found is not None and found.default is not inspect.Parameter.empty:
                default.value = found.default
    returns = ast.unparse(node.returns) if node.returns and node.name != "__init__" else ""
    return f"({ast.unparse(arguments)})", returns


def signature(app: Sphinx, what: str, name: str, obj: object, options: object,
              args: str | None, returns: str | None) -> tuple[str, str] | None:
    """Where the compiled engine's signature has no types, the stub's; and
    typeshed's aliases written out.  None: leave autodoc's as it is."""
    if args is None:
        return None  # nothing to rewrite (a compiled property, data)
    key = name.split(".", 1)[1] if name.startswith("fdpass.") else name
    if what == "class":
        key += ".__init__"
    python = inspect.isfunction(getattr(obj, "__func__", obj)) or inspect.isclass(obj) \
        and not key.startswith("FDChannel")
    if key in SIGNATURES and not python:
        args, returns = stub_signature(SIGNATURES[key], obj)
    rewritten = written_out(args), written_out(returns or "")
    return rewritten if rewritten != (args, returns or "") or key in SIGNATURES else None


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-signature", signature)
