"""Sphinx configuration of the documentation site (build: ``python -m sphinx -b html docs
docs/_build/html``, or ``.ci/docs`` with warnings as errors).

Why this tool: Sphinx is what NumPy, SciPy, scikit-learn and matplotlib build their sites with;
``myst-parser`` reads the Markdown we already write (README, ``docs/theory.md``) with its math,
``myst-nb`` executes the tutorials at build time and renders their outputs and figures,
``autosummary`` turns the docstrings into the API reference, and ``pydata-sphinx-theme`` is
the community's theme, readable on a phone. ``sphinx-mathjax-offline`` ships MathJax inside the
site, so the math renders with no network.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

project = "kooplearn_prune"
author = "kooplearn_prune developers"
copyright = "kooplearn_prune developers"  # noqa: A001 (Sphinx's name)

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx-mathjax-offline",
]

#: The pages of the site, in reading order (``index.md``'s toctree lists the same names; its
#: final ``*`` adds every other page of docs/, such as scale.md, after them).
PAGES = ["theory", "tutorials", "api", "*"]
#: The notebooks, copied from ``tutorials/`` at every build so that the site executes the
#: committed files (``tutorials/*.ipynb`` stay the only copy in the repository).
TUTORIALS = sorted(p.name for p in (ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"))


def _copy_tutorials() -> None:
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    for name in TUTORIALS:
        shutil.copy2(ROOT / "tutorials" / name, target / name)
    figures = DOCS / "_readme" / "docs" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for png in (DOCS / "figures").glob("*.png"):
        shutil.copy2(png, figures / png.name)


_copy_tutorials()

# .rst first: autosummary writes its generated pages with the first suffix.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "README.md", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints",
                    "_readme"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# Execute every notebook at build time; a failing cell fails the build. KOOPLEARN_DOCS_EXECUTE=off
# renders them without outputs (a quick check of the pages and links only).
nb_execution_mode = "off" if os.environ.get("KOOPLEARN_DOCS_EXECUTE") == "off" else "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

autosummary_generate = True
# Each object is documented once, in the module that defines it (a package page lists what it
# re-exports through its summary table, not a second copy of each docstring).
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_typehints = "description"
autodoc_mock_imports = ["cupy"]
napoleon_numpy_docstring = True

# The docstrings are written as plain text with formulas such as |θ ⊙ Δθ| (read in a terminal
# with help()), not as reStructuredText: docutils' markup warnings about them are not errors.
suppress_warnings = ["docutils"]


def _plain_text_for_markup_errors(app, doctree, docname):
    """Show docutils' unparsed markup (``|λ|``, a lone ``` `` ```) as the text it is, not as a red
    link to an error message the site does not print (the link checker flags those anchors)."""
    from docutils import nodes

    for node in list(doctree.findall(nodes.problematic)):
        node.replace_self(nodes.inline(node.astext(), node.astext(), ids=node["ids"]))


def setup(app):
    app.connect("doctree-resolved", _plain_text_for_markup_errors)

html_theme = "pydata_sphinx_theme"
html_title = "kooplearn_prune"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path: list[str] = []
# The theme reads the reader's light/dark choice from localStorage and falls back to this; left
# empty, a first visit logs "Got invalid theme mode" as a console error.
html_context = {"default_mode": "auto"}
