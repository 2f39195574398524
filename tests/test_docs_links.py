"""Link check of the built documentation site (``docs/_build/html``, written by ``.ci/docs``).

Every internal link, image, stylesheet and script of every page must point at a file of the site,
and a link with an ``#anchor`` at an element of the target page with that id. External links
cannot be fetched here (no network), so they are only checked to be well-formed http(s) or
mailto URLs. Skipped when the site is not built, unless ``KOOPLEARN_DOCS_REQUIRE=1`` (set by
``.ci/docs``), which turns the skip into a failure.
"""

from __future__ import annotations

import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

SITE = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"
#: (tag, attribute) pairs whose value is a URL the page needs or offers.
LINKING = {("a", "href"), ("img", "src"), ("link", "href"), ("script", "src"),
           ("source", "src"), ("iframe", "src"), ("video", "src"), ("audio", "src")}
EXTERNAL_SCHEMES = {"http", "https", "mailto"}
#: Folders of the site that hold copied assets, not pages (the theme copies its own Jinja
#: templates into ``_static``).
NOT_PAGES = {"_static", "_sources", "_images"}


def require_site() -> Path:
    """The built site's folder; skips (or fails under ``KOOPLEARN_DOCS_REQUIRE=1``) without it."""
    if not (SITE / "index.html").is_file():
        reason = f"no built site at {SITE} (build it with .ci/docs)"
        if os.environ.get("KOOPLEARN_DOCS_REQUIRE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return SITE


class _Page(HTMLParser):
    """The ids a page defines and the URLs it links to, with their line numbers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[int, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            if (tag, name) in LINKING and value is not None:
                self.links.append((self.getpos()[0], tag, value.strip()))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _external_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme == "mailto":
        return None if "@" in parts.path else "mailto without an address"
    if not parts.netloc or " " in url or "." not in parts.netloc:
        return "not a well-formed http(s) URL"
    return None


def check_site(site: Path) -> tuple[int, int, list[str]]:
    """Check every page of ``site``: (pages, links checked, problems as 'page:line: message')."""
    pages = sorted(path for path in site.rglob("*.html")
                   if path.relative_to(site).parts[0] not in NOT_PAGES)
    parsed = {path: _parse(path) for path in pages}
    problems: list[str] = []
    checked = 0
    for path, page in parsed.items():
        where = path.relative_to(site)
        for line, tag, url in page.links:
            parts = urlsplit(url)
            if parts.scheme in ("javascript", "data") or url in ("", "#"):
                continue
            checked += 1
            if parts.scheme or url.startswith("//"):
                problem = (_external_problem(url) if parts.scheme in EXTERNAL_SCHEMES
                           else f"unexpected scheme {parts.scheme!r}")
                if problem:
                    problems.append(f"{where}:{line}: <{tag}> {url}: {problem}")
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if site.resolve() not in target.parents:
                problems.append(f"{where}:{line}: <{tag}> {url}: points outside the site")
            elif not target.is_file():
                problems.append(f"{where}:{line}: <{tag}> {url}: no such file")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    problems.append(f"{where}:{line}: <{tag}> {url}: no anchor "
                                    f"#{parts.fragment} in {target.relative_to(site.resolve())}")
    return len(pages), checked, problems


def test_every_internal_link_and_image_of_the_site_resolves():
    pages, checked, problems = check_site(require_site())
    print(f"link check: {pages} pages, {checked} links and images checked")
    assert pages >= 5 and checked > 0
    assert not problems, f"{len(problems)} broken links:\n" + "\n".join(problems[:50])


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_a_bad_url(tmp_path):
    (tmp_path / "index.html").write_text(
        '<h1 id="top">x</h1><a href="#top">ok</a><a href="other.html#nowhere">a</a>'
        '<img src="_images/missing.png"><a href="https://example.org/p">ok</a>'
        '<a href="http:/broken">b</a><a href="../outside.html">c</a>')
    (tmp_path / "other.html").write_text('<p id="here">y</p>')
    pages, checked, problems = check_site(tmp_path)
    assert (pages, checked) == (2, 6)
    messages = "\n".join(problems)
    assert len(problems) == 4
    assert "no anchor #nowhere" in messages and "missing.png: no such file" in messages
    assert "http:/broken: not a well-formed" in messages and "outside the site" in messages
