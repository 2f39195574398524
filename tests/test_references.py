"""The repository is self-contained: every reference it makes leads somewhere real.

* every ``docs/theory.md §N`` (or ``§N.M``, ``§N-§M``) cited in code, tests, benchmarks,
  notebooks and Markdown names a numbered heading of ``docs/theory.md``;
* no file cites the background notes that are not in the repository;
* every repository path a file names (``docs/…``, ``tutorials/…``, ``benchmarks/…``,
  ``tests/…``, ``kooplearn_prune/…``) exists;
* every ``module.name`` in the symbol table of ``docs/theory.md`` §14 imports.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
SOURCES = sorted(
    [p for pattern in ("kooplearn_prune/**/*.py", "tests/*.py", "benchmarks/*.py")
     for p in ROOT.glob(pattern)]
    + list(ROOT.glob("tutorials/*.ipynb")) + list(ROOT.glob("tutorials/*.md"))
    + list(ROOT.glob("docs/*.md")) + [ROOT / "README.md"]
    + list(ROOT.glob("kooplearn_prune/app/configs/*.toml"))
)
SECTION = re.compile(r"\d+(?:\.\d+)?")
#: "docs/theory.md §5.2", "§8-§11", "§8, §13", "docs/theory.md, sections 9 and 11"
CITED_SPAN = re.compile(r"theory\.md,?\s*((?:(?:§|sections?\s)\s*\d+(?:\.\d+)?"
                        r"(?:\s*(?:[-–,]|and)\s*)?)+)")
MISSING_NOTES = re.compile(r"\bTHEORY(?:\.md)?\s*§|\bTHEORY\.md\b|\bDESIGN\.md\b")
#: Paths that a build writes (git-ignored): named in instructions, absent from a clean checkout;
#: ``.html`` pages are the built site's (tests/test_docs_browser.py names them).
BUILD_OUTPUTS = ("docs/_build",)
BUILT_SUFFIXES = (".html",)
REPO_PATH = re.compile(
    r"(?<![\w/.])((?:docs|tutorials|benchmarks|tests|kooplearn_prune)/[\w./-]*\w)")


def _headings() -> set[str]:
    numbers = set()
    for line in THEORY.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#{2,4}\s+(\d+(?:\.\d+)?)\.?\s", line)
        if match:
            numbers.add(match.group(1))
    return numbers


def _text(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(c["source"]) for c in cells)
    return path.read_text(encoding="utf-8")


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def test_theory_has_numbered_sections():
    assert {"1", "5", "5.2", "7", "13", "14"} <= _headings()


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_every_cited_section_exists(path):
    headings = _headings()
    text = _text(path)
    bad = []
    for span in CITED_SPAN.finditer(text):
        bad += [n for n in SECTION.findall(span.group(1)) if n not in headings]
    assert not bad, (f"{path.relative_to(ROOT)} cites docs/theory.md sections {sorted(set(bad))}, "
                     f"which are not headings there (it has {sorted(headings, key=_key)})")


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_no_file_cites_notes_outside_the_repository(path):
    if path == Path(__file__).resolve():
        return  # this file names them to forbid them
    found = MISSING_NOTES.findall(_text(path))
    assert not found, (f"{path.relative_to(ROOT)} cites {sorted(set(found))}, which is not in "
                       f"the repository; cite docs/theory.md §N instead")


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_every_named_repository_path_exists(path):
    missing = sorted({p for p in REPO_PATH.findall(_text(path))
                      if "*" not in p and not p.startswith(BUILD_OUTPUTS)
                      and not p.endswith(BUILT_SUFFIXES)
                      and not (ROOT / p).exists()
                      and not any((ROOT / p).parent.glob((ROOT / p).name + "*"))})
    assert not missing, f"{path.relative_to(ROOT)} names files that do not exist: {missing}"


def test_every_symbol_in_the_theory_table_imports():
    text = THEORY.read_text(encoding="utf-8")
    table = text[text.index("## 14."):text.index("## 15.")]
    names = set(re.findall(r"`((?:[a-z_]+\.)+[A-Za-z_]+)[(`]", table))
    assert len(names) >= 15
    missing = []
    for dotted in sorted(names):
        parts = dotted.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module("kooplearn_prune." + ".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(dotted)
            break
        else:
            missing.append(dotted)
    assert not missing, f"docs/theory.md §14 names symbols that do not exist: {missing}"


def _key(number: str) -> tuple[int, ...]:
    return tuple(int(x) for x in number.split("."))
