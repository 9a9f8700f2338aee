"""Sphinx configuration of pvae's documentation (``make docs``).

The build needs no network: intersphinx reads the inventories cached in ``_inventories/``
(see the README there) and skips a project whose inventory is not cached; notebooks are rendered
as committed, never executed.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import pvae  # noqa: E402

project = "pvae"
author = "pvae developers"
copyright = "pvae developers, MIT licence"
release = version = pvae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "myst_nb",
    "pvae_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "_inventories", "**/.ipynb_checkpoints"]
templates_path: list[str] = []

# -- autodoc: reST field lists (":param x:") and Google-style sections ("References:") -------
autodoc_member_order = "bysource"
# Objects are not ToC entries: with them, every page's navigation tree held every method of
# every module, and computing it dominated the build time.
toc_object_entries = False
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: autodoc documents the attributes themselves

# -- intersphinx: only inventories cached in the repository, never the network ----------------
_INVENTORIES = DOCS / "_inventories"
_PROJECTS = {
    "python": "https://docs.python.org/3/",
    "torch": "https://pytorch.org/docs/stable/",
    "pyro": "https://docs.pyro.ai/en/stable/",
    "numpy": "https://numpy.org/doc/stable/",
    "arviz": "https://python.arviz.org/en/stable/",
}
intersphinx_mapping = {
    name: (url, str(_INVENTORIES / f"{name}.inv"))
    for name, url in _PROJECTS.items()
    if (_INVENTORIES / f"{name}.inv").is_file()
}
intersphinx_timeout = 1

# -- notebooks and Markdown (MyST-NB) ---------------------------------------------------------
nb_execution_mode = "off"
nb_merge_streams = True

# -- HTML -------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"pvae {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_copy_source = False
