"""The documentation site's sources: the Sphinx config imports and names pages that exist.

The full build (executing every notebook) is ``.ci/docs``; this only checks what a cheap test can.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _conf():
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toctree(page: str) -> list[str]:
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```\{toctree\}\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith(":")]


def test_config_imports_and_copies_every_tutorial():
    conf = _conf()
    assert conf.html_theme == "pydata_sphinx_theme" and "myst_nb" in conf.extensions
    assert conf.nb_execution_mode in ("force", "off") and conf.nb_execution_raise_on_error
    tutorials = sorted(p.name for p in (DOCS.parent / "tutorials").glob("[0-9][0-9]_*.ipynb"))
    assert conf.TUTORIALS == tutorials and len(tutorials) >= 8
    assert all((DOCS / "tutorials" / name).is_file() for name in tutorials)


def test_every_page_of_the_toctree_exists():
    pages = _toctree("index.md")
    assert pages == _conf().PAGES
    assert all((DOCS / f"{page}.md").is_file() for page in pages if page != "*")
    assert _toctree("tutorials.md") == ["tutorials/*"]
    assert "../README.md" in (DOCS / "index.md").read_text()  # the landing page


def test_api_reference_lists_importable_public_modules():
    import importlib

    text = (DOCS / "api.md").read_text()
    modules = re.findall(r"^\s+(kooplearn_prune[\w.]*)\s*$", text, flags=re.M)
    assert "kooplearn_prune.koopman" in modules and "kooplearn_prune.plotting" in modules
    for name in modules:
        importlib.import_module(name)


def test_readme_gives_the_one_line_build_command():
    readme = (DOCS.parent / "README.md").read_text()
    assert "python -m sphinx -b html docs docs/_build/html" in readme


def test_ci_builds_with_warnings_as_errors_then_checks_links_and_pages_in_a_browser():
    script = (DOCS.parent / ".ci" / "docs").read_text()
    build = script.index("python -m sphinx -W --keep-going -b html docs docs/_build/html")
    check = script.index("KOOPLEARN_DOCS_REQUIRE=1 python -m pytest")
    assert build < check
    assert "tests/test_docs_links.py" in script and "tests/test_docs_browser.py" in script
    assert "chromium-driver" in script


def test_unparsed_docstring_markup_is_shown_as_text_not_as_a_dead_link():
    nodes = pytest.importorskip("docutils.nodes", reason="docutils comes with the docs extra")

    conf = _conf()
    paragraph = nodes.paragraph()
    paragraph += nodes.problematic("|", "|", ids=["id2"], refid="id1")
    paragraph += nodes.Text("λ|^t")
    doctree = nodes.document(None, None)
    doctree += paragraph
    conf._plain_text_for_markup_errors(None, doctree, "page")
    assert not list(doctree.findall(nodes.problematic))
    assert paragraph.astext() == "|λ|^t" and paragraph[0]["ids"] == ["id2"]
    assert conf.html_context["default_mode"] in ("auto", "light", "dark")
