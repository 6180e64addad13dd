"""Sphinx configuration of xentcy's documentation site.

Build (warnings are errors, references checked):

    python -m pip install -e ".[docs]"
    python -m sphinx -W -n --keep-going -b html docs docs/_build/html

and the examples on the pages: ``python -m sphinx -W -n -b doctest docs docs/_build/doctest``.
Nothing is fetched at build time: no intersphinx (outside names are written plainly, and
the few the docstrings' type fields name are in ``nitpick_ignore``), and MathJax is served
from the ``sphinx-mathjax-offline`` package.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

project = "xentcy"
author = "the xentcy developers"
copyright = "2026, the xentcy developers"  # noqa: A001 - Sphinx's name
release = importlib.metadata.version("xentcy")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax from the package, not a CDN
    "numpydoc",
    "myst_parser",
    "sphinx_copybutton",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path = ["_templates"]

# Markdown pages (MyST): $...$ and $$...$$ formulas, ::: fences for directives
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True  # ($$...$$ inside a paragraph, as docs/math.md writes it for GitHub)

# The API reference: numpydoc renders the docstrings; its validation hook turns a docstring
# without these sections (or with a parameter it does not document) into a warning, which -W
# makes an error (tests/test_docstrings.py checks Raises too).
autosummary_generate = False
autodoc_typehints = "none"  # (the signatures show them; numpydoc's fields say them in words)
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = {"PR01", "PR02", "PR03", "RT01", "EX01", "SA01", "GL08"}
# The classes' methods: their classes' Examples and See Also show them; tests/test_docstrings.py
# checks that their Parameters and Returns sections are there and complete.
numpydoc_validation_exclude = {r"\.(CrossEntropyLoss|Evaluator)\.[a-z_]+$"}
# xentcy.torch and xentcy.jax import their frameworks: where those are not installed (the docs
# extra leaves them out: torch is a download of several GB), autodoc documents them from mocks.
autodoc_mock_imports = [m for m in ("torch", "jax", "jaxlib") if importlib.util.find_spec(m) is None]

# -n: every reference must resolve. Names of other projects, which the docstrings' type
# fields and the pages name in words (no intersphinx inventory is fetched):
nitpick_ignore_regex = [
    ("py:class", r"(numpy|torch|jax|cupy|dask)(\..*)?"),
    ("py:class", r"(array|array-like|optional|callable|Array|Namespace)"),
]

html_theme = "pydata_sphinx_theme"
html_title = f"xentcy {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "icon_links": [],
}
html_show_sourcelink = False
# the section navigation only where a section has pages (the user guide)
html_sidebars = {page: [] for page in ("index", "getting-started", "math", "performance", "api", "changelog")}

# sphinx.ext.doctest: the examples of the pages (their doctest directives) run with these
# names. The docstrings' examples are run by the test suite instead (pytest --doctest-modules,
# in CI with torch and JAX installed), not a second time here, where torch and JAX may be mocks.
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import importlib.util

import numpy as np
import xentcy as xc

# the pages' torch, JAX and Dask examples run where those are installed (CI installs them)
has_torch, has_jax, has_dask = (importlib.util.find_spec(m) is not None for m in ("torch", "jax", "dask"))
"""
