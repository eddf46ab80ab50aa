"""Sphinx configuration: Markdown pages through MyST, the API reference by
autodoc from the installed fdpass (its docstrings and signatures)."""

from __future__ import annotations

import os

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
html_title = f"fdpass {release}"
